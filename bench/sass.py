"""Where a kernel's spills sit, from its SASS (nvdisasm output): bench/ptxas_report.py --sass.

Text only, no Triton: the tests run it on a hand-written listing.
"""
import re

SASS_OPS = ("LDL", "STL", "HGMMA", "HMMA", "FFMA", "SHFL", "BAR")


def sass_loops(sass: str) -> dict:
    """Local-memory traffic where it costs: per kind of instruction (SASS_OPS), how many sit in
    the deepest loop of `nvdisasm` output (in these kernels the leapfrog step loop, run once
    per step and row block) and how many in the whole kernel. ptxas -v gives spill bytes, not
    where they are: a spill outside the step loop is paid once per program, one inside it
    every step. Loops are found from backward branches (a BRA whose target label lies at or
    before it); an instruction's depth is the number of such ranges that hold it."""
    labels, pending, ins = {}, [], []
    for line in sass.splitlines():
        m = re.match(r"\s*(\.L_x_\d+):", line)
        if m:
            pending.append(m.group(1))
            continue
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
        if m:
            addr = int(m.group(1), 16)
            labels.update((name, addr) for name in pending)
            pending = []
            ins.append((addr, re.sub(r"^@!?U?P[T\d]+\s+", "", m.group(2))))
    loops = []
    for addr, text in ins:
        m = re.match(r"BRA\b.*`\((\.L_x_\d+)\)", text)
        if m and m.group(1) in labels and labels[m.group(1)] <= addr:
            loops.append((labels[m.group(1)], addr))
    depth = [sum(lo <= addr <= hi for lo, hi in loops) for addr, _ in ins]
    deepest = max(depth, default=0)
    row = {"sass_loop_depth": deepest, "sass_loop_instrs": depth.count(deepest) if deepest else 0}
    # bytes of local memory the step loop touches per thread (distinct [R1+offset] slots):
    # times the threads of a program, that is what must stay in L1 for the spills to be cheap
    slots = {}
    for (_, text), d in zip(ins, depth):
        m = re.match(r"(?:LDL|STL)(\S*)\s.*\[R1(?:\+(0x[0-9a-f]+))?\]", text)
        if m and deepest and d == deepest:
            width = 16 if ".128" in m.group(1) else 8 if ".64" in m.group(1) else 4
            slots[int(m.group(2) or "0", 16)] = width
    row["sass_loop_local_bytes"] = sum(slots.values())
    for op in SASS_OPS:
        hits = [d for (_, text), d in zip(ins, depth) if text.split(".")[0].split()[0] == op]
        row[f"sass_{op.lower()}"] = len(hits)
        row[f"sass_loop_{op.lower()}"] = hits.count(deepest) if deepest else 0
    return row
