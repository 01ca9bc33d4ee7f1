"""The two variance terms of a paired difference of test metrics: the training seeds and the test images.

A metric is linear in a cell's K x n correct matrix C (metric = C @ u, tlstudy.analysis.statistics),
so each term is a quadratic form of it (Bouthillier et al. 2021: the sources are crossed):
- the seed term, by Scheffe's (1943) pairing: seeds are paired in order (the same training seed
  in both cells first), and with k <= n seeds the k values d_i = x_i - sqrt(k/n) y_i +
  sum_{j<=k} y_j / sqrt(k n) - mean(y) are i.i.d. with mean D and variance k Var(D_seed), for ANY
  ratio of the cells' seed variances. So S = var(d) / k has exactly k - 1 df. Welch-Satterthwaite's
  df, estimated from the same few seeds, is what made the old test liberal (0.09-0.14 at 2-3
  seeds, fragile against stable cells);
- the image term, the variance over test images of the per-image difference of the cells' mean
  correctness, within each class (the class mix is fixed by design), less the seed x image noise
  that the seed term already holds (a two-way ANOVA residual). When the test images carry
  patients (splits.csv), it is taken over patients: a cluster-robust variance of the linearised
  class means (Cameron & Miller 2015), with df the number of patients less one per class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Parts:
    """A difference (or one cell's metric) over a batch of comparisons, with its variance terms."""

    estimate: np.ndarray
    seed_var: np.ndarray
    seed_df: float
    image_var: np.ndarray
    image_df: int

    @property
    def se(self) -> np.ndarray:
        return np.sqrt(self.seed_var + self.image_var)

    @property
    def ratio(self) -> np.ndarray:
        """The observed image-to-seed variance ratio that picks the critical value."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.seed_var > 0, self.image_var / self.seed_var, np.inf)


def seed_term(xa, xb=None):
    """(variance, df) of the seed part of mean(xa) - mean(xb), from per-seed metrics (batch x k,
    rows in pairing order): Scheffe's paired combination, exact for any variance ratio."""
    if xb is None:
        return xa.var(1, ddof=1) / xa.shape[1], xa.shape[1] - 1
    small, big = (xa, xb) if xa.shape[1] <= xb.shape[1] else (xb, xa)
    k, n = small.shape[1], big.shape[1]
    head = big[:, :k]
    d = small - np.sqrt(k / n) * head + head.sum(1, keepdims=True) / np.sqrt(k * n) - big.mean(1, keepdims=True)
    return d.var(1, ddof=1) / k, k - 1


def _noise_parts(mats, signs):
    """The matrices whose seed x image residuals make up the noise in the per-image difference:
    with as many seeds in both cells, the paired difference itself (a seed both cells ran gives
    them correlated errors, which cancel in the difference: counting each cell's noise apart
    would subtract too much and make the test liberal, 0.065 at 6-10 seeds with 60 % of the seeds
    shared); otherwise each cell's own, independent of the other's."""
    if len(mats) == 2 and mats[0].shape == mats[1].shape:
        return [signs[0] * mats[0].astype(float) + signs[1] * mats[1].astype(float)]
    return [m.astype(float) for m in mats]


def _noise(x):
    """The variance of the mean over seeds of a seed x image residual (two-way ANOVA), per batch element."""
    resid = x - x.mean(2, keepdims=True) - x.mean(1, keepdims=True) + x.mean((1, 2), keepdims=True)
    return (resid**2).sum((1, 2)) / ((x.shape[1] - 1) * (x.shape[2] - 1)) / x.shape[1]


def image_term(mats, signs, label, u, groups=None):
    """(variance, df) of the test images' part: within each class, the cluster-robust variance of
    the per-image difference over patients (`groups`; each image its own without), less the seed x
    image noise that the seed term holds already."""
    d = sum(s * m.mean(1) for m, s in zip(mats, signs))
    groups = np.arange(len(label)) if groups is None else np.asarray(groups)
    var, df = np.zeros(len(d)), 0
    for h in np.unique(label[u > 0]):
        m = (label == h) & (u > 0)
        codes = np.unique(groups[m], return_inverse=True)[1]
        g = codes.max() + 1
        if g < 2:
            continue
        noise = sum(_noise(x[:, :, m]) for x in _noise_parts(mats, signs))
        dev = (d[:, m] - d[:, m].mean(1, keepdims=True)) * u[m]
        totals = dev @ np.eye(g)[codes]  # each patient's summed deviation
        v = g / (g - 1) * (totals**2).sum(1) - m.sum() * u[m][0] ** 2 * noise
        var, df = var + np.maximum(0.0, v), df + g - 1
    return var, df


def parts(mats, signs, label, u, groups=None) -> Parts:
    """The estimate and variance terms of sum_c sign_c * metric(cell c), over a batch: each matrix
    batch x K x n, rows of two cells in pairing order."""
    if min(m.shape[1] for m in mats) < 2:
        raise ValueError("a cell needs at least 2 replicate models (seeds) for its seed variance")
    x = [m @ u for m in mats]
    est = sum(s * xi.mean(1) for xi, s in zip(x, signs))
    seed_var, seed_df = seed_term(*x)
    image_var, image_df = image_term(mats, signs, label, u, groups)
    return Parts(est, seed_var, seed_df, image_var, image_df)
