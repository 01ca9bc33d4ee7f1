"""Paired inference on per-image test predictions: one cell against another on the same images.

A cell is K replicate models (training seeds) scored on the same n test images. A metric
(acc, balanced_acc, sensitivity, specificity) is linear in the K x n correct matrix C:
metric = C @ u with fixed per-image weights u, so its variance is an exact quadratic form.
Predictions are argmax over ALL outputs, so a prediction >= 2 (no class) is simply wrong.

Two sources of variance, crossed: the training seed (init, batch order, augmentation) and the
test images; tlstudy.analysis.variance computes each term (Scheffe's pairing for the seeds, exact
k - 1 df at any ratio of the cells' seed variances; patients as clusters for the images).
T = D / sqrt(S + V_i) is referred to critical values calibrated on the observed ratio V_i / S
(tlstudy.analysis.critical): exact at t_{k-1} when the seeds dominate, normal when the images do,
and with size within a few per cent of alpha between, at every true ratio. bench/calibration.py
and tests/test_calibration.py check this on simulated cells (tlstudy.analysis.simulation).

Beside the p-value each comparison reports P(A > B) over seed pairs (Bouthillier et al. 2021) and
the smallest difference it could detect at 80 % power, (c_alpha + c_0.4) SE.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from tlstudy.analysis import critical, variance

METRICS = ("acc", "balanced_acc", "sensitivity", "specificity")


# ---------------------------------------------------------------- single proportions and metrics


def wilson(correct, total, level=0.95):
    """Wilson score interval of correct/total (behaves at 0 and total, unlike the normal one)."""
    ci = stats.binomtest(int(correct), int(total)).proportion_ci(confidence_level=level, method="wilson")
    return (float(ci.low), float(ci.high))


def image_weights(label, metric):
    """Per-image weights u with metric = correct @ u; u sums to 1."""
    label = np.asarray(label)
    n0, n1 = int((label == 0).sum()), int((label == 1).sum())
    need = {"acc": len(label), "balanced_acc": min(n0, n1), "sensitivity": n1, "specificity": n0}
    if metric not in need:
        raise ValueError(f"unknown metric {metric!r}; one of {METRICS}")
    if not need[metric]:
        raise ValueError(f"{metric} needs test images of {'both classes' if metric == 'balanced_acc' else 'its class'}")
    if metric == "acc":
        return np.full(len(label), 1 / len(label))
    if metric == "balanced_acc":
        return np.where(label == 1, 0.5 / n1, 0.5 / n0)
    if metric == "sensitivity":
        return np.where(label == 1, 1 / n1, 0.0)
    return np.where(label == 0, 1 / n0, 0.0)


def metric_of(pred, label, metric="acc"):
    """The metric of predictions `pred` (one model: n; K models: K x n) against `label` (n)."""
    return (np.asarray(pred) == np.asarray(label)) @ image_weights(label, metric)


# ---------------------------------------------------------------- from the long predictions frame


def correct_matrix(preds):
    """(C, label, image_ids, seeds): the K x n boolean correct matrix of one cell's predictions,
    rows the trials in order of train_seed (of (study, number) without that column), columns the
    image ids sorted. Refuses a frame with several checkpoints, duplicate rows, a trial that lacks
    an image, or inconsistent labels."""
    if "checkpoint" in preds and preds.checkpoint.nunique() > 1:
        raise ValueError(f"predictions of several checkpoints {sorted(preds.checkpoint.unique())}: pick one")
    key = ["study", "number", "image_id"]
    if preds.duplicated(key).any():
        raise ValueError("predictions list an image twice for one trial")
    wide = preds.pivot(index=key[:2], columns="image_id", values="pred")
    if wide.isna().any(axis=None):
        short = wide.index[wide.isna().any(axis=1)].tolist()
        raise ValueError(f"trials {short} lack predictions for some of the cell's test images")
    labels = preds.groupby("image_id").label.agg(["min", "max"]).reindex(wide.columns)
    if (labels["min"] != labels["max"]).any():
        raise ValueError("an image has different labels in different trials")
    seeds = (
        preds.groupby(key[:2]).train_seed.first().reindex(wide.index).to_numpy(float)
        if "train_seed" in preds
        else np.arange(len(wide), dtype=float)
    )
    order = np.argsort(seeds, kind="stable")
    label = labels["min"].to_numpy(int)
    return (wide.to_numpy(int) == label)[order], label, wide.columns.to_numpy(), seeds[order]


def align(preds_a, preds_b):
    """(C_a, C_b, label, image_ids, (seeds_a, seeds_b)), rows in Scheffe pairing order (see
    `pairing`); refuses two cells whose images differ."""
    ca, la, ia, sa = correct_matrix(preds_a)
    cb, lb, ib, sb = correct_matrix(preds_b)
    if len(ia) != len(ib) or (ia != ib).any():
        only_a, only_b = np.setdiff1d(ia, ib), np.setdiff1d(ib, ia)
        raise ValueError(
            f"the two cells were tested on different images ({len(only_a)} only in a, e.g. "
            f"{list(only_a[:3])}; {len(only_b)} only in b, e.g. {list(only_b[:3])}): "
            "not a paired comparison"
        )
    if (la != lb).any():
        raise ValueError("the two cells give the same image different labels")
    oa, ob = pairing(sa, sb)
    return ca[oa], cb[ob], la, ia, (sa[oa], sb[ob])


def pairing(seeds_a, seeds_b):
    """Row orders that pair the cells' seeds: the training seeds both cells ran first (in seed
    order), then each cell's others in seed order. Fixed by the design, never by the outcomes."""
    both = set(seeds_a) & set(seeds_b)
    order = lambda s: sorted(range(len(s)), key=lambda i: (s[i] not in both, s[i]))  # noqa: E731
    return order(list(seeds_a)), order(list(seeds_b))


# The reference distribution, a function of its own so that tests can swap in broken ones.
def reference_p(t, df, ratio):
    return critical.p_value(t, df, ratio)


def reference_quantile(alpha, df, ratio):
    return critical.quantile(alpha, df, ratio)


def one_sided(t, df, ratio):
    """P(T >= t) under the calibrated reference (symmetric)."""
    half = reference_p(t, df, ratio) / 2
    return np.where(np.asarray(t) > 0, half, 1 - half)


COLLAPSED = 0.99  # a model that gives one class to this share of the test images has collapsed
RESULTS = ("estimate", "low", "high", "p", "se", "df", "image_df", "ratio", "mde", "p_better", "mean_a", "mean_b")


def collapsed(c, label):
    """batch x K: which models predict one class for (nearly) every test image, told from the
    correct matrix alone (right on one class's images and wrong on the other's, or wrong on all).
    It is a property of the model's outputs, not of its accuracy: no selection by test score."""
    shares = [(c == (label == h)).mean(2) for h in (0, 1)] + [1 - c.mean(2)]
    return np.max(shares, axis=0) >= COLLAPSED


def compare(ca, cb, label, metric="acc", level=0.95, groups=None, margin=None, seeds=None):
    """The paired test of a - b for a batch of comparisons (ca: batch x K_a x n, cb: batch x K_b x
    n, rows in pairing order of `seeds`, (seeds_a, seeds_b)): a dict of arrays. With `margin`,
    also TOST within +-margin (Schuirmann 1987): p_tost, and p_outside, the test that the
    difference lies outside +-margin.

    Collapsed models (`collapsed`) are set apart: their metric is one class's share, a second
    mode no test of a mean on a few seeds can see (a cell whose seeds collapse one time in five
    shows no collapse in 3 seeds half the time; Bahadur & Savage 1956: no test of a mean is valid
    over such mixtures). So the comparison is of the converged seeds, re-paired by seed, and the
    collapses are counted (collapsed_a, collapsed_b) for the verdict to state beside it. A batch
    element with fewer than 2 converged seeds in a cell gets NaN."""
    seeds = seeds or (np.arange(ca.shape[1]), np.arange(cb.shape[1]))
    gone = np.hstack([collapsed(ca, label), collapsed(cb, label)])
    ka = ca.shape[1]
    if not gone.any():
        out = _compare(ca, cb, label, metric, level, groups, margin)
    else:
        out = {}
        patterns, which = np.unique(gone, axis=0, return_inverse=True)
        for i, pattern in enumerate(patterns):
            rows = np.flatnonzero(which.ravel() == i)
            keep_a, keep_b = np.flatnonzero(~pattern[:ka]), np.flatnonzero(~pattern[ka:])
            if min(len(keep_a), len(keep_b)) < 2:
                continue  # too few converged seeds to compare: NaN
            oa, ob = pairing(seeds[0][keep_a], seeds[1][keep_b])
            sub_a, sub_b = ca[rows][:, keep_a[oa]], cb[rows][:, keep_b[ob]]
            for k, v in _compare(sub_a, sub_b, label, metric, level, groups, margin).items():
                out.setdefault(k, np.full(len(ca), np.nan))[rows] = v
        keys = RESULTS + (("p_tost", "p_outside") if margin is not None else ())
        out = {k: out.get(k, np.full(len(ca), np.nan)) for k in keys}
    out["collapsed_a"], out["collapsed_b"] = gone[:, :ka].sum(1), gone[:, ka:].sum(1)
    out["n_a"], out["n_b"] = ca.shape[1] - out["collapsed_a"], cb.shape[1] - out["collapsed_b"]
    return out


def _compare(ca, cb, label, metric, level, groups, margin):
    u = image_weights(label, metric)
    r = variance.parts([ca, cb], [1, -1], label, u, groups)
    se, q, f = r.se, r.ratio, r.seed_df
    safe = np.where(se > 0, se, 1.0)
    p = np.where(se > 0, reference_p(r.estimate / safe, f, q), (r.estimate == 0).astype(float))
    half = reference_quantile(1 - level, f, q) * se
    xa, xb = ca @ u, cb @ u
    out = dict(
        estimate=r.estimate,
        low=r.estimate - half,
        high=r.estimate + half,
        p=p,
        se=se,
        df=np.full(len(se), float(f)),
        image_df=np.full(len(se), float(r.image_df)),
        ratio=q,
        mde=(reference_quantile(1 - level, f, q) + reference_quantile(0.4, f, q)) * se,
        p_better=((xa[:, :, None] > xb[:, None, :]) + 0.5 * (xa[:, :, None] == xb[:, None, :])).mean((1, 2)),
        mean_a=xa.mean(1),
        mean_b=xb.mean(1),
    )
    if margin is not None:
        lower = one_sided((r.estimate + margin) / safe, f, q)  # H0: a - b <= -margin
        upper = one_sided((margin - r.estimate) / safe, f, q)  # H0: a - b >= +margin
        beyond = np.minimum(
            one_sided((r.estimate - margin) / safe, f, q), one_sided((-margin - r.estimate) / safe, f, q)
        )
        out.update(p_tost=np.maximum(lower, upper), p_outside=np.minimum(1.0, 2 * beyond))
    return out


# ---------------------------------------------------------------- one cell, two cells


def _groups_of(ids, groups):
    return None if groups is None else np.array([groups.get(i, i) for i in ids])


def cell_interval(preds, metric="acc", level=0.95, groups=None):
    """(estimate, low, high) of one cell's metric over its replicates (seeds) and test images."""
    c, label, ids, _ = correct_matrix(preds)
    u = image_weights(label, metric)
    r = variance.parts([c[None]], [1], label, u, _groups_of(ids, groups))
    half = float(reference_quantile(1 - level, r.seed_df, r.ratio)[0] * r.se[0])
    est = float(r.estimate[0])
    return est, est - half, est + half


def paired(preds_a, preds_b, metric="acc", level=0.95, groups=None, margin=None):
    """The difference a - b of a metric on the same test images, as `compare` (one comparison;
    groups: image id -> patient), with the seeds and images it rests on: n_a, n_b the converged
    seeds compared, collapsed_a, collapsed_b those set apart."""
    ca, cb, label, ids, seeds = align(preds_a, preds_b)
    g = _groups_of(ids, groups)
    out = {k: float(v[0]) for k, v in compare(ca[None], cb[None], label, metric, level, g, margin, seeds).items()}
    return dict(
        out,
        level=level,
        metric=metric,
        n_seeds_a=len(ca),
        n_seeds_b=len(cb),
        n_images=len(label),
        n_clusters=len(label) if g is None else len(np.unique(g)),
    )


# ---------------------------------------------------------------- many tests; timings


def holm(pvalues):
    """Holm's (1979) step-down adjusted p-values; NaN stays NaN and is not counted."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    m = int(ok.sum())
    order = np.argsort(p[ok])
    adjusted = np.minimum(1, np.maximum.accumulate((m - np.arange(m)) * p[ok][order]))
    out[np.flatnonzero(ok)[order]] = adjusted
    return out


def throughput(a, b, level=0.95):
    """Seconds per step of a against b, paired by round (a[i] and b[i] ran in round i, one after
    the other: tlstudy.training.throughput.interleaved). The ratio of geometric means with the t
    interval of the per-round log ratios (timings are skewed and multiplicative, and the machine's
    drift is shared within a round), its p-value, and the difference of means in seconds with the
    paired t interval."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) != len(b):
        raise ValueError("a throughput comparison pairs the runs of a round: as many runs of a as of b")
    if len(a) < 2:
        raise ValueError("a throughput comparison needs at least 2 timed runs of each")
    logs = stats.ttest_rel(np.log(a), np.log(b))
    ratio = logs.confidence_interval(level)
    seconds = stats.ttest_rel(a, b).confidence_interval(level)
    return dict(
        estimate=float(a.mean() - b.mean()),
        low=float(seconds.low),
        high=float(seconds.high),
        p=float(logs.pvalue),
        df=float(logs.df),
        ratio=float(np.exp(np.log(a).mean() - np.log(b).mean())),
        ratio_low=float(np.exp(ratio.low)),
        ratio_high=float(np.exp(ratio.high)),
        mean_a=float(a.mean()),
        mean_b=float(b.mean()),
        n_a=len(a),
        n_b=len(b),
    )
