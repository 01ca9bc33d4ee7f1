"""Critical values of the paired statistic, calibrated on the observed share of image variance.

The difference D of two cells has two independent variance terms (tlstudy.analysis.statistics):
the seed term S, estimated from f + 1 paired seeds, so that f S / V_s ~ chi^2_f exactly
(Scheffe's pairing), and the image term V_i, estimated from hundreds of test images or patients
and treated here as known. T = D / sqrt(S + V_i) is then a scale mixture of normals whose law
depends on the unknown ratio r = V_i / V_s: t_f at r = 0, normal as r grows. Neither reference
alone is right: t_f is blunt when the images dominate (at f = 2 its size is < 0.005 at r = 1), and a
Welch-Satterthwaite df, estimated from the same few seeds, jumps when they happen to agree, which
is when T is large: its size at f = 1 and r = 0.1 is 0.13 (see bench/RESULTS.md, issue 20).

So the critical value is a function of the OBSERVED ratio q = V_i / S,
    c_alpha(q) = z_alpha + (t_{f,alpha} - z_alpha) / (1 + (q / q0)^b),
with (q0, b) chosen for each (f, alpha) so that the size
    P_r(|T| > c_alpha(V_i / S)) = E_W[ 2 Phi-bar( c_alpha(r / W) sqrt((W + r) / (1 + r)) ) ],
    W ~ chi^2_f / f,
is as close to alpha as it can be at EVERY true r in 1e-5..1e5, erring low: the approach of
Welch (1947) and Aspin (1948) to the Behrens-Fisher problem, solved by quadrature instead of
a series. The fit is exact to a few per cent at f >= 2 and alpha >= 0.01; at f = 1 (two seeds),
and for alpha well below 0.01 at f = 2, no member of the family is flat, and the fit holds the
size below alpha at the price of a size below alpha/2 for some r: at two seeds the verdicts are
conservative. `TABLE` holds the fitted (q0, b); `python -m tlstudy.analysis.critical` rebuilds it,
and tests/test_statistics.py checks it against a fresh fit.

Where it stops holding: the seeds' metric far from normal (a cell whose seeds collapse to one
class now and then), and an image term with few degrees of freedom (a test set of a few dozen
patients). Both are simulated in bench/calibration.py.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy import optimize, stats

TABLE = Path(__file__).with_name("critical_values.csv")
MAX_DF = 30  # beyond, t_f - z is so small that the f = 30 shape serves
# The fitted two-sided levels: the interval's 0.05, TOST's 0.1, the power quantile's 0.4, and the
# small levels that Holm's correction and the sequential looks test at.
ALPHAS = np.array([2e-4, 5e-4, 1e-3, 2e-3, 3e-3, 5e-3, 7e-3, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05,
                   0.07, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7])  # fmt: skip
_RATIOS = np.geomspace(1e-5, 1e5, 81)[:, None]  # the true r at which the size is checked
OVER = 100.0  # a size above alpha weighs this much more than one below


def _nodes(f: int, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Quadrature for W ~ chi^2_f / f: nodes evenly spaced in log W, weighted by the density."""
    lo, hi = stats.chi2.ppf([1e-14, 1 - 1e-14], f) / f
    w = np.geomspace(lo, hi, n)
    weight = stats.chi2.pdf(w * f, f) * f * w
    return w, weight / weight.sum()


def _shape(q: np.ndarray, q0: Any, b: Any) -> np.ndarray:
    """1 at q = 0 (use t_f), falling to 0 as q grows (use z)."""
    with np.errstate(over="ignore", divide="ignore"):
        return 1 / (1 + np.exp(b * (np.log(q) - np.log(q0))))


def size(f: int, alpha: float, q0: float, b: float, ratios: np.ndarray = _RATIOS) -> np.ndarray:
    """The test's size at each true ratio r (by quadrature)."""
    w, weight = _nodes(f)
    t, z = stats.t.ppf(1 - alpha / 2, f), stats.norm.ppf(1 - alpha / 2)
    c = z + (t - z) * _shape(ratios / w, q0, b)
    return (2 * stats.norm.sf(c * np.sqrt((w + ratios) / (1 + ratios))) * weight).sum(1)


def fit(f: int, alpha: float) -> tuple[float, float]:
    """(q0, b) for f seed degrees of freedom at level alpha."""

    def loss(p: np.ndarray) -> np.ndarray:
        e = np.log(size(f, alpha, np.exp(p[0]), p[1]) / alpha)
        return np.where(e > 0, OVER * e, e)

    fits = [
        optimize.least_squares(loss, [np.log(q0), 2.0], bounds=([-8, 0.2], [12, 30]))
        for q0 in (0.5, 3.0, 30.0)  # the loss has local minima; a few starts find the best
    ]
    best = min(fits, key=lambda r: r.cost)
    return float(np.exp(best.x[0])), float(best.x[1])


@functools.cache
def _table() -> dict[int, np.ndarray]:
    """f -> rows (alpha, q0, b), alpha ascending."""
    rows = np.loadtxt(TABLE, delimiter=",", skiprows=1, ndmin=2)
    return {int(f): rows[rows[:, 0] == f][:, 1:] for f in np.unique(rows[:, 0])}


def critical(f: float, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(alphas, c): c[i, j] = c_alpha_j(q_i), the critical values of |T| at the fitted two-sided
    levels, each row never less strict at a smaller alpha. f = inf (no seed term) gives z."""
    q = np.atleast_1d(np.asarray(q, dtype=float))
    if not np.isfinite(f):
        return ALPHAS, np.broadcast_to(stats.norm.ppf(1 - ALPHAS / 2), (len(q), len(ALPHAS)))
    rows = _table()[min(int(f), MAX_DF)]
    alpha = rows[:, 0]
    z, t = stats.norm.ppf(1 - alpha / 2), stats.t.ppf(1 - alpha / 2, f)
    g = np.where(q[:, None] > 0, _shape(np.maximum(q, 1e-300)[:, None], rows[:, 1], rows[:, 2]), 1.0)
    c = z + (t - z) * g
    return alpha, np.maximum.accumulate(c[:, ::-1], axis=1)[:, ::-1]


def quantile(alpha: float, f: float, q: np.ndarray) -> np.ndarray:
    """c_alpha(q) at one two-sided level (linear in log alpha between the fitted levels)."""
    levels, c = critical(f, q)
    i = int(np.clip(np.searchsorted(levels, alpha) - 1, 0, len(levels) - 2))
    w = (np.log(alpha) - np.log(levels[i])) / (np.log(levels[i + 1]) - np.log(levels[i]))
    return c[:, i] + w * (c[:, i + 1] - c[:, i])


def p_value(t: np.ndarray, f: float, q: np.ndarray) -> np.ndarray:
    """Two-sided p of |T| = t: the level at which t is the critical value. Below the smallest
    fitted level the t_f tail stands in; it bounds the tail of every law in the family."""
    t = np.abs(np.atleast_1d(np.asarray(t, dtype=float)))
    if not np.isfinite(f):
        return 2 * stats.norm.sf(t)
    levels, c = critical(f, q)
    # c falls along each row; k: how many fitted levels t exceeds the critical value of
    k = (c >= t[:, None]).sum(1)
    inner = np.clip(k, 1, len(levels) - 1)
    rows = np.arange(len(t))
    c0, c1 = c[rows, inner - 1], c[rows, inner]
    w = np.where(c0 > c1, (c0 - t) / np.where(c0 > c1, c0 - c1, 1), 0.0)
    p = np.exp(np.log(levels[inner - 1]) + w * (np.log(levels[inner]) - np.log(levels[inner - 1])))
    p = np.where(k == 0, np.minimum(levels[0], 2 * stats.t.sf(t, f)), p)
    last = c[:, -1]  # beyond the largest fitted level: straight to p = 1 at t = 0
    return np.where(k == len(levels), 1 - (1 - levels[-1]) * t / np.where(last > 0, last, 1), p)


def build(path: Path = TABLE) -> None:
    """Fit every (f, alpha) and write the table (a few minutes on one core)."""
    lines = ["df,alpha,q0,b"]
    for f in range(1, MAX_DF + 1):
        for a in ALPHAS:
            q0, b = fit(f, a)
            lines.append(f"{f},{a:.6g},{q0:.6g},{b:.6g}")
            print(lines[-1], file=sys.stderr)
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    build()
