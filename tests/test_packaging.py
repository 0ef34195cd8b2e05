"""pyproject.toml builds with setuptools releases to come (no deprecated table forms)."""
import os

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pyproject():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def test_license_is_an_spdx_string_and_the_build_takes_it():
    # setuptools deprecated `license = { text = ... }` with a removal date (2027-02-18); the
    # SPDX string form needs setuptools >= 77, which the build system must then ask for
    p = _pyproject()
    assert isinstance(p["project"]["license"], str), p["project"]["license"]
    req = [r for r in p["build-system"]["requires"] if r.startswith("setuptools")]
    assert req and req[0].replace(" ", "").startswith("setuptools>="), req
    assert tuple(int(x) for x in req[0].split(">=")[1].split(".")[:1]) >= (77,), req
