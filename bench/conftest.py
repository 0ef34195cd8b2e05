import os
import sys

# Benchmarks import the implementations from the package and the shared results writer.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _timed_only(request):
    """Every benchmark here records the median it timed; --benchmark-disable times nothing."""
    if request.config.getoption("benchmark_disable", False):
        pytest.skip("--benchmark-disable: these benchmarks exist to time and record medians "
                    "(run them with --benchmark-only)")


def pytest_terminal_summary(terminalreporter):
    """Say where the medians went: every run merges them into a tracked file."""
    import _results
    for path in sorted(_results.WRITTEN):
        terminalreporter.write_line(f"medians recorded in {os.path.relpath(path)} (each entry "
                                    f"with its commit, versions, date and load average)")
    if _results.RATIOS:   # the ratios: the figures a run is for, not in the timing table
        # the two kinds read in opposite directions: each line says which one it is
        kinds = "; ".join(f"{kind} {form} = {how}"
                          for kind, (form, how) in _results.RATIO_KINDS.items())
        terminalreporter.write_line(f"ratios recorded by this run, keys as in the file ({kinds}):")
        for (section, name, key), value in _results.RATIOS.items():
            terminalreporter.write_line(f"  {section} {name}: {key} = {value:.3g} "
                                        f"({_results.ratio_kind(key)})")
