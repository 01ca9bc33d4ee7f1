"""--seeds auto on simulated cells: the error rate across looks, and seeds spent against a fixed design.

    python bench/sequential.py                       # 2,000 comparisons per row
    python bench/sequential.py --first 3 --max-seeds 8 --regimes balanced unequal

One claim, a against b, judged as the study judges it (tlstudy.analysis.statistics.compare, the
looks and levels of tlstudy.analysis.sequential). Each simulated comparison draws max-seeds seeds
per cell once and looks at the first 3, 5, 7, 8: it stops at the first look whose test rejects at
that look's level, or at the last. Under the null (equal population accuracy) the rate of any
rejection is the false-positive rate across looks. Under an alternative (cell a better by a logit
shift) the table gives the power and the mean seeds per cell spent, beside the fixed design: the
smallest K whose power at alpha = 0.05 is at least the sequential design's, from the same draws.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from tlstudy.analysis import sequential, simulation, statistics
from tlstudy.settings import seed_plan

ALPHA, CHUNK = 0.05, 250


def run(regime: simulation.Regime, looks: list[int], n: int, delta: float, seed: int = 0) -> dict:
    """The sequential design's rejections and seeds spent, and the fixed designs' power, on n draws."""
    rng = np.random.default_rng(seed)
    test = simulation.test_set(rng, regime.images_per_patient)
    levels = sequential.levels(looks, ALPHA)
    rejected, spent, fixed = 0, 0.0, dict.fromkeys(range(2, looks[-1] + 1), 0)
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        ca, cb, label, patient = simulation.draw(regime, looks[-1], m, rng, delta, test)
        kb = cb.shape[1] / ca.shape[1]
        open_ = np.ones(m, dtype=bool)
        seeds = np.full(m, float(looks[-1]))
        for k, level in zip(looks, levels):
            r = statistics.compare(ca[:, :k], cb[:, : int(round(k * kb))], label, "acc", 0.95, patient)
            hit = open_ & (r["p"] < level)
            seeds[hit] = k
            open_ &= ~hit
        rejected += int((~open_).sum())
        spent += float(seeds.sum())
        for k in fixed:
            r = statistics.compare(ca[:, :k], cb[:, : int(round(k * kb))], label, "acc", 0.95, patient)
            fixed[k] += int((r["p"] < ALPHA).sum())
    power = rejected / n
    equal = next((k for k, hits in fixed.items() if hits / n >= power), None)
    return dict(rate=power, mean_seeds=spent / n, fixed_power={k: v / n for k, v in fixed.items()}, fixed_equal=equal)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--first", type=int, default=3)
    ap.add_argument("--max-seeds", type=int, default=8)
    ap.add_argument("--regimes", nargs="+", default=["balanced", "unequal", "shared"], choices=list(simulation.REGIMES))
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--deltas", nargs="+", type=float, default=[0.25, 0.5])
    args = ap.parse_args(argv)
    looks = seed_plan(args.first, args.max_seeds)
    levels = sequential.levels(looks, ALPHA)
    t0 = time.time()
    print(f"looks at {looks} seeds per cell; levels {', '.join(f'{a:.4f}' for a in levels)} (sum {sum(levels):.3f})\n")
    print(
        "| regime | logit shift | true difference (points) | rejections [95 % CI] | mean seeds per cell "
        "| fixed design of equal power: K (its power) |"
    )
    print("|---|---|---|---|---|---|")
    for name in args.regimes:
        regime = simulation.REGIMES[name]
        label = simulation.test_set(np.random.default_rng(0), regime.images_per_patient)[0]
        for delta in [0.0, *args.deltas]:
            r = run(regime, looks, args.n, delta)
            lo, hi = statistics.wilson(round(r["rate"] * args.n), args.n)
            k = r["fixed_equal"]
            fixed = "-" if delta == 0 else (f"{k} ({r['fixed_power'][k]:.3f})" if k else f"> {looks[-1]}")
            print(
                f"| {name} | {delta:g} | {100 * simulation.true_difference(regime, label, delta):+.1f} | "
                f"{r['rate']:.3f} [{lo:.3f}, {hi:.3f}] | {r['mean_seeds']:.2f} | {fixed} |",
                flush=True,
            )
    print(f"\n{time.time() - t0:.0f} s; command: python bench/sequential.py {' '.join(sys.argv[1:])}".rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
