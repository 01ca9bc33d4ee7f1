"""Paired inference on per-image test predictions: one cell against another on the same images.

A cell is K replicate models (training seeds) scored on the same n test images. A metric
(acc, balanced_acc, sensitivity, specificity) is linear in the K x n correct matrix C:
metric = C @ u with fixed per-image weights u (1/n for accuracy, 1/(2 n_class) for balanced
accuracy, ...), so both the variance and the bootstrap below are exact bilinear forms.
Predictions are argmax over ALL outputs, so a prediction >= 2 (no class) is simply wrong.

Two sources of variance, crossed, not nested: the training seed (init, batch order,
augmentation) and the test images (Bouthillier et al. 2021). Test images are resampled
within class, since the test split's class mix (Kermany: 234 NORMAL / 390 PNEUMONIA) is fixed
by design.

The p-value (and the interval that goes with it): a two-level t-test. The difference
D = mean_a - mean_b gets the unbiased variance of the crossed design,
    Var(D) = s_a^2/K_a + s_b^2/K_b + sum_h n_h u_h^2 max(0, S_h^2(d) - r_a,h/K_a - r_b,h/K_b),
where s^2 is the sample variance of the per-seed metric (it holds the seed effect and the
seed x image noise), S_h^2(d) the variance over the images of class h of the per-image
difference of the cells' mean correctness, and r the seed x image residual mean square of each
cell (two-way ANOVA), subtracted because S_h^2 holds that noise a second time. D / SE is referred
to a t distribution with Welch-Satterthwaite degrees of freedom, which K_a - 1 and K_b - 1
dominate. Why this and not the alternatives the issue names:
- exact McNemar per seed pair, combined: McNemar conditions on the two trained models, so the
  seed-to-seed variance (1-2 points of accuracy) is not in it at all, and the K_a x K_b pairs
  share the test images, so combining them as independent tests is anti-conservative twice over;
- permuting seed labels between the cells: exact, but with 3 + 3 seeds there are 20 splits and the
  smallest two-sided p is 0.1: it can never reject; it also conditions on the test images;
- inverting the naive two-level percentile bootstrap: its error depends on the mix of variances.
  Resampling seeds and images independently counts the seed x image noise about three times
  (Owen 2007, "The pigeonhole bootstrap"; no bootstrap is exact for crossed designs, McCullagh
  2000), while its seed level has the plug-in variance (K-1)/K s^2/K and normal-like tails where
  t with about K-1 df is due (t_4 = 2.78 against 1.96). On the simulator of tests/test_inference.py
  (624 images, 1000 null comparisons each; MC SE 0.007) its false-positive rate at 95 % was 0.012
  (3 seeds, seed sd 1 point) and 0.004 (5 seeds, 1 point): blunt; 0.061 (3 seeds, 2 points):
  anti-conservative. This t-test: 0.057, 0.047, 0.048.
The naive percentile interval is still computed, vectorised as the issue asks (multinomial
weights: metric* = (w_seeds^T C / K) (v_images * u)), and returned as boot_low / boot_high for
display; low / high are the t interval, which agrees with p (0 outside it iff p < 1 - level).
"""

import numpy as np
from scipy import stats

METRICS = ("acc", "balanced_acc", "sensitivity", "specificity")
N_BOOT = 2000


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
    """(C, label, image_ids): the K x n boolean correct matrix of one cell's predictions, rows
    the trials (study, number) in order, columns the image ids sorted. Refuses a frame with
    several checkpoints, duplicate rows, a trial that lacks an image, or inconsistent labels."""
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
    label = labels["min"].to_numpy(int)
    return wide.to_numpy(int) == label, label, wide.columns.to_numpy()


def align(preds_a, preds_b):
    """(C_a, C_b, label) on the same test images; refuses two cells whose images differ."""
    ca, la, ia = correct_matrix(preds_a)
    cb, lb, ib = correct_matrix(preds_b)
    if len(ia) != len(ib) or (ia != ib).any():
        only_a, only_b = np.setdiff1d(ia, ib), np.setdiff1d(ib, ia)
        raise ValueError(
            f"the two cells were tested on different images ({len(only_a)} only in a, e.g. "
            f"{list(only_a[:3])}; {len(only_b)} only in b, e.g. {list(only_b[:3])}): "
            "not a paired comparison"
        )
    if (la != lb).any():
        raise ValueError("the two cells give the same image different labels")
    return ca, cb, la


# ---------------------------------------------------------------- the two-level machinery


def _t_parts(mats, signs, label, u):
    """(estimate, se, df) of sum_c sign_c * metric(cell c): the crossed seeds x images variance."""
    if min(len(c) for c in mats) < 2:
        raise ValueError("a cell needs at least 2 replicate models (seeds) for its seed variance")
    est = sum(s * (c @ u).mean() for c, s in zip(mats, signs))
    seed = [(c @ u).var(ddof=1) / len(c) for c in mats]
    d = sum(s * c.mean(0) for c, s in zip(mats, signs))
    image, image_df = 0.0, 0
    for h in np.unique(label[u > 0]):
        m = (label == h) & (u > 0)
        if m.sum() < 2:
            continue
        noise = 0.0
        for c in mats:
            x = c[:, m].astype(float)
            resid = x - x.mean(0) - x.mean(1, keepdims=True) + x.mean()
            noise += (resid**2).sum() / ((len(x) - 1) * (m.sum() - 1)) / len(x)
        # The seed x image noise is already in the seed term: count only the cells' own image effect.
        image += u[m][0] ** 2 * m.sum() * max(0.0, d[m].var(ddof=1) - noise)
        image_df += m.sum() - 1
    var = sum(seed) + image
    parts = sum(v**2 / (len(c) - 1) for v, c in zip(seed, mats)) + (image**2 / image_df if image_df else 0)
    df = var**2 / parts if parts > 0 else np.inf
    return float(est), float(np.sqrt(var)), float(df)


def _t_test(est, se, df, level):
    """(low, high, two-sided p) from the t reference."""
    if se == 0:
        return est, est, float(est == 0)
    half = stats.t.ppf(0.5 + level / 2, df) * se
    return est - half, est + half, float(2 * stats.t.sf(abs(est) / se, df))


def _boot(mats, signs, label, u, n_boot, rng):
    """Naive two-level bootstrap draws: seeds resampled in each cell, one shared image draw."""
    v = np.zeros((n_boot, len(label)))
    for h in np.unique(label):
        idx = np.flatnonzero(label == h)
        v[:, idx] = rng.multinomial(len(idx), np.full(len(idx), 1 / len(idx)), size=n_boot)
    draws = np.zeros(n_boot)
    for c, s in zip(mats, signs):
        w = rng.multinomial(len(c), np.full(len(c), 1 / len(c)), size=n_boot) / len(c)
        draws += s * ((w @ c) * v) @ u
    return draws


def _percentile(draws, level):
    return tuple(float(q) for q in np.quantile(draws, [0.5 - level / 2, 0.5 + level / 2]))


# ---------------------------------------------------------------- one cell, two cells


def cell_interval(preds, metric="acc", level=0.95, n_boot=N_BOOT, seed=0, method="t"):
    """(estimate, low, high) of one cell's metric over its replicates (seeds) and test images.
    method="t": the crossed-variance t interval (see the module docstring); "percentile": the
    naive two-level percentile bootstrap, miscalibrated with 3-5 seeds (see the module docstring)."""
    c, label, _ = correct_matrix(preds)
    u = image_weights(label, metric)
    if method == "percentile":
        est = float((c @ u).mean())
        return (est, *_percentile(_boot([c], [1], label, u, n_boot, np.random.default_rng(seed)), level))
    est, se, df = _t_parts([c], [1], label, u)
    return (est, *_t_test(est, se, df, level)[:2])


def paired(preds_a, preds_b, metric="acc", level=0.95, n_boot=N_BOOT, seed=0):
    """The difference a - b of a metric on the same test images: estimate, the t interval
    (low, high) and two-sided p of "no difference", se, df, and the naive two-level percentile
    bootstrap interval (boot_low, boot_high; skipped when n_boot=0)."""
    ca, cb, label = align(preds_a, preds_b)
    u = image_weights(label, metric)
    est, se, df = _t_parts([ca, cb], [1, -1], label, u)
    low, high, p = _t_test(est, se, df, level)
    boot = (
        _percentile(_boot([ca, cb], [1, -1], label, u, n_boot, np.random.default_rng(seed)), level)
        if n_boot
        else (np.nan, np.nan)
    )
    return dict(
        estimate=est,
        low=low,
        high=high,
        p=p,
        se=se,
        df=df,
        level=level,
        metric=metric,
        n_seeds_a=len(ca),
        n_seeds_b=len(cb),
        n_images=len(label),
        mean_a=float((ca @ u).mean()),
        mean_b=float((cb @ u).mean()),
        boot_low=boot[0],
        boot_high=boot[1],
    )


def tost(preds_a, preds_b, metric="acc", margin=0.02, alpha=0.05):
    """Equivalence of a and b within +-margin by two one-sided t-tests (Schuirmann 1987), on the
    same crossed variance as `paired`. p = max of the one-sided p-values; the (1 - 2 alpha)
    interval lies inside +-margin iff p < alpha."""
    ca, cb, label = align(preds_a, preds_b)
    est, se, df = _t_parts([ca, cb], [1, -1], label, image_weights(label, metric))
    if se == 0:
        p_lower = p_upper = float(abs(est) >= margin)
    else:
        p_lower = float(stats.t.sf((est + margin) / se, df))  # H0: a - b <= -margin
        p_upper = float(stats.t.cdf((est - margin) / se, df))  # H0: a - b >= +margin
    low, high, _ = _t_test(est, se, df, 1 - 2 * alpha)
    return dict(
        estimate=est,
        low=low,
        high=high,
        level=1 - 2 * alpha,
        p=max(p_lower, p_upper),
        p_lower=p_lower,
        p_upper=p_upper,
        margin=margin,
        equivalent=bool(-margin < low and high < margin),
        se=se,
        df=df,
        n_seeds_a=len(ca),
        n_seeds_b=len(cb),
        n_images=len(label),
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
    """Seconds per step of a against b (repeated timed runs of each): the difference of means
    with Welch's t-test and interval, and the ratio of geometric means with Welch's interval
    on the log scale (timings are skewed and multiplicative)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if min(len(a), len(b)) < 2:
        raise ValueError("a throughput comparison needs at least 2 timed runs of each")
    res = stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(level)
    ratio = stats.ttest_ind(np.log(a), np.log(b), equal_var=False).confidence_interval(level)
    return dict(
        estimate=float(a.mean() - b.mean()),
        low=float(ci.low),
        high=float(ci.high),
        p=float(res.pvalue),
        df=float(res.df),
        ratio=float(np.exp(np.log(a).mean() - np.log(b).mean())),
        ratio_low=float(np.exp(ratio.low)),
        ratio_high=float(np.exp(ratio.high)),
        mean_a=float(a.mean()),
        mean_b=float(b.mean()),
        n_a=len(a),
        n_b=len(b),
    )
