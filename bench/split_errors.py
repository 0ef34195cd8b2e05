"""How far the bf16x3 split (`precision="bf16x3"`) is from float64, over random inputs across
the fused contract, next to `ieee` on the same inputs.

    PYTHONPATH=. python bench/split_errors.py                      # CPU, interpreter, 20 min
    python bench/split_errors.py --seed 2 --budget-s 600 --out errors.jsonl
    python bench/split_errors.py --device cuda --budget-s 60       # the GPU's own products

Each case draws k (1 weighted double: the hardest), the two hidden widths, activation, scheme,
batch, frames and dt, a random MLP (check.random_mlp) and initial state, and prints the largest
of compare_to_reference's relative errors (trajectory, dHdq, every gradient) for both
precisions, one JSON line per case. Batches this small (3 to 37 rows, for the interpreter's
sake) would go to the latency layout, which computes in fp32 whatever the precision:
LATENCY_MAX_ROWS is set to 0 so that bf16x3 runs the throughput layout where it fits and the
tile layouts elsewhere, as it would for large batches.

On a CPU the kernels run through Triton's interpreter (set here), whose bf16 dots are wrong,
so the split runs emulated: the bf16 parts rounded as the GPU rounds them (ops._bf16_rne) and
their products in fp32, exact. On a GPU the products are wgmma's, accumulation included.
"""
import argparse
import json
import os
import random
import sys
import time


def cases(seed):
    """Endless random cases within the fused contract (widths 16..128, k <= 32)."""
    rng = random.Random(seed)
    widths = (16, 32, 64, 100, 128)
    while True:
        yield dict(k=rng.choice((1, 1, 2, 3, 5, 10, 16, 32)),
                   widths=(rng.choice(widths), rng.choice(widths)),
                   activation=rng.choice(("tanh", "softplus")),
                   scheme=rng.choice(("order2", "official")),
                   B=rng.choice((3, 5, 37)), frames=rng.choice((4, 8, 16)),
                   dt=rng.choice((0.05, 0.1, -0.05, 0.2)), seed=rng.randrange(10 ** 6))


def measure(case, device):
    """{precision: largest relative error against float64} of one case."""
    import torch
    from hgan.kernels.leapfrog.check import compare_to_reference, random_mlp
    gen = torch.Generator().manual_seed(case["seed"])
    weights, biases = random_mlp(case["k"], case["widths"], generator=gen)
    q0 = torch.randn(case["B"], case["k"], generator=gen)
    p0 = torch.randn(case["B"], case["k"], generator=gen)
    weights, biases = [w.to(device) for w in weights], [b.to(device) for b in biases]
    return {prec: max(compare_to_reference(q0.to(device), p0.to(device), weights, biases,
                                           case["dt"], case["frames"], case["activation"],
                                           "fused", scheme=case["scheme"],
                                           precision=prec).values())
            for prec in ("ieee", "bf16x3")}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=1, help="seed of the case draw")
    p.add_argument("--budget-s", type=float, default=1200,
                   help="stop drawing cases after this many seconds")
    p.add_argument("--max-cases", type=int, default=0, help="stop after N cases (0: none)")
    p.add_argument("--device", default="cpu", help="cpu (the interpreter) or cuda")
    p.add_argument("--out", default="", help="also append the JSON lines to this file")
    a = p.parse_args(argv)
    if a.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"     # before triton is imported
    import torch
    from hgan.kernels.leapfrog import fused
    torch.set_num_threads(1)
    fused.LATENCY_MAX_ROWS = 0
    end, worst, n = time.monotonic() + a.budget_s, {}, 0
    out = open(a.out, "a") if a.out else None
    try:
        for case in cases(a.seed):
            if time.monotonic() >= end or (a.max_cases and n >= a.max_cases):
                break
            errs = measure(case, a.device)
            line = json.dumps(dict(case, widths=list(case["widths"]),
                                   layout=str(fused._layout(case["B"], case["frames"],
                                                            *case["widths"], "bf16x3")),
                                   **errs))
            print(line, flush=True)
            if out:
                out.write(line + "\n")
            n += 1
            for prec, e in errs.items():
                worst[prec] = max(worst.get(prec, 0.0), e)
    finally:
        if out:
            out.close()
    print(f"{n} cases; worst: " + ", ".join(f"{p} {e:.2e}" for p, e in worst.items()),
          file=sys.stderr)
    return worst


if __name__ == "__main__":
    main()
