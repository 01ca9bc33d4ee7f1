"""The paired test's error rate and coverage on simulated cells: regime x seeds, >= 1,000 nulls a row.

    python bench/calibration.py                     # every regime, K = 2..10, 2,000 nulls a row
    python bench/calibration.py --regimes unequal --k 2 3 --nulls 4000
    python bench/calibration.py --broken            # the three broken variants, for comparison

Each row draws `nulls` comparisons of two cells whose population accuracies are equal
(tlstudy.analysis.simulation) and counts how often the 95 % test rejects (the false-positive rate,
with its binomial 95 % interval); then as many comparisons with cell a better by a logit shift of
0.3, and counts how often the 95 % interval covers the true population difference. The seed sd is
the median over comparisons of each cell's sd of per-seed accuracy, in points; "image share" is the
median share of the image term in the variance of the difference. "void" is the share of null
comparisons with fewer than 2 converged (not collapsed) seeds in a cell: no test, so no verdict
(counted as no rejection in the false-positive rate); coverage is over the comparisons made.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

import numpy as np

from tlstudy.analysis import simulation, statistics, variance

ALPHA, DELTA, CHUNK = 0.05, 0.3, 250


@contextlib.contextmanager
def broken(variant: str | None):
    """Swap in one of the three broken variants of the issue (None: the real test)."""
    saved = variance.seed_term, statistics.reference_p, statistics.reference_quantile
    real_seed, real_p, real_q = saved
    if variant == "normal":  # a normal reference in place of the calibrated t
        statistics.reference_p = lambda t, df, q: real_p(t, np.inf, q)
        statistics.reference_quantile = lambda a, df, q: real_q(a, np.inf, q)
    elif variant == "se85":  # a standard error 15 % too small
        statistics.reference_p = lambda t, df, q: real_p(np.asarray(t) / 0.85, df, q)
        statistics.reference_quantile = lambda a, df, q: 0.85 * real_q(a, df, q)
    elif variant == "pooled":  # a pooled df (K_a + K_b - 2) in place of Scheffe's k - 1

        def pooled(xa, xb=None):
            var, df = real_seed(xa, xb)
            return var, (df if xb is None else xa.shape[1] + xb.shape[1] - 2)

        variance.seed_term = pooled
    try:
        yield
    finally:
        variance.seed_term, statistics.reference_p, statistics.reference_quantile = saved


def rates(regime: simulation.Regime, k: int, nulls: int, seed: int = 0, coverage: bool = True) -> dict:
    """The false-positive rate (and coverage under an alternative) of the 95 % test."""
    rng = np.random.default_rng(seed)
    test = simulation.test_set(rng, regime.images_per_patient)
    truth = simulation.true_difference(regime, test[0], DELTA)
    hits, covered, judged, void, sd_a, sd_b, share = 0, 0, 0, 0, [], [], []
    for delta in (0.0, DELTA) if coverage else (0.0,):
        for start in range(0, nulls, CHUNK):
            ca, cb, label, patient = simulation.draw(regime, k, min(CHUNK, nulls - start), rng, delta, test)
            r = statistics.compare(ca, cb, label, "acc", 1 - ALPHA, patient)
            if delta == 0:
                hits += int((r["p"] < ALPHA).sum())
                void += int(np.isnan(r["p"]).sum())
                xa, xb = ca.mean(2), cb.mean(2)
                sd_a += list(100 * xa.std(1, ddof=1))
                sd_b += list(100 * xb.std(1, ddof=1))
                with np.errstate(divide="ignore"):
                    share += list(1 / (1 + 1 / np.where(np.isfinite(r["ratio"]), r["ratio"], 1e12)))
            else:
                covered += int(((r["low"] <= truth) & (truth <= r["high"])).sum())
                judged += int(np.isfinite(r["low"]).sum())
    lo, hi = _binomial(hits, nulls)
    return dict(
        regime=regime.name,
        k_a=k,
        k_b=int(round(k * regime.seeds_b)),
        seed_sd_a=float(np.median(sd_a)),
        seed_sd_b=float(np.median(sd_b)),
        image_share=float(np.median(share)),
        nulls=nulls,
        fpr=hits / nulls,
        fpr_low=lo,
        fpr_high=hi,
        coverage=covered / judged if coverage and judged else float("nan"),
        void=void / nulls,
        true_difference=truth,
    )


def _binomial(k: int, n: int) -> tuple[float, float]:
    return statistics.wilson(k, n)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--regimes", nargs="+", default=list(simulation.REGIMES), choices=list(simulation.REGIMES))
    ap.add_argument("--k", nargs="+", type=int, default=[2, 3, 4, 5, 6, 8, 10])
    ap.add_argument("--nulls", type=int, default=2000)
    ap.add_argument("--broken", action="store_true", help="also the three broken variants (no coverage)")
    args = ap.parse_args(argv)
    t0 = time.time()
    print(
        "| regime | K a / b | seed sd a / b (points) | image share | nulls | false-positive rate [95 % CI] "
        "| coverage at +3 points | void |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in args.regimes:
        for k in args.k:
            r = rates(simulation.REGIMES[name], k, args.nulls)
            print(
                f"| {name} | {r['k_a']} / {r['k_b']} | {r['seed_sd_a']:.1f} / {r['seed_sd_b']:.1f} | "
                f"{r['image_share']:.2f} | {r['nulls']} | {r['fpr']:.3f} [{r['fpr_low']:.3f}, {r['fpr_high']:.3f}] "
                f"| {r['coverage']:.3f} (true difference {100 * r['true_difference']:+.1f}) | {r['void']:.3f} |",
                flush=True,
            )
    if args.broken:
        print("\n| broken variant | regime | K a / b | false-positive rate [95 % CI] |\n|---|---|---|---|")
        for variant in ("normal", "se85", "pooled"):
            for name, k in (("unequal", 2), ("unequal", 3), ("balanced", 3), ("balanced", 10)):
                with broken(variant):
                    r = rates(simulation.REGIMES[name], k, args.nulls, coverage=False)
                print(
                    f"| {variant} | {name} | {r['k_a']} / {r['k_b']} | "
                    f"{r['fpr']:.3f} [{r['fpr_low']:.3f}, {r['fpr_high']:.3f}] |",
                    flush=True,
                )
    print(f"\n{time.time() - t0:.0f} s; command: python bench/calibration.py {' '.join(sys.argv[1:])}".rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
