"""tlstudy.analysis.statistics on simulated per-image predictions, with numpy and scipy for real.

The simulator gives each test image a difficulty shared by every model (so errors are
correlated across models, as real ones are), each cell its own per-image effect (two
architectures do not fail on exactly the same images), each training seed a model quality,
and each seed x image its Bernoulli noise. Every RNG is seeded.
"""

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, special, stats

from tlstudy.analysis import statistics, variance

N_IMAGES, N_POS = 624, 390  # Kermany's test split: 234 NORMAL, 390 PNEUMONIA


def draw_images(rng, n=N_IMAGES, n_pos=N_POS, difficulty=4.0, class_shift=1.0):
    """(label, ease): labels, and a logit ease per image shared by every model (NORMAL is harder)."""
    label = np.r_[np.zeros(n - n_pos, int), np.ones(n_pos, int)]
    return label, rng.normal(np.where(label == 1, class_shift, -class_shift), difficulty)


def simulate(rng, images, n_seeds, acc, seed_sd=0.015, cell_sd=0.7, difficulty=4.0, class_shift=1.0):
    """K x n correct matrix of one cell whose population accuracy is `acc` and whose per-seed
    accuracy has sd about `seed_sd` (seed quality plus the seed x image noise)."""
    label, ease = images
    own = rng.normal(0, cell_sd, len(label))
    x, w = np.polynomial.hermite_e.hermegauss(60)  # the population of images, by quadrature
    sd, pos = np.hypot(difficulty, cell_sd), label.mean()
    offset = np.r_[class_shift + sd * x, -class_shift + sd * x]
    weight = np.r_[pos * w, (1 - pos) * w] / w.sum()
    theta = optimize.brentq(lambda t: weight @ special.expit(t + offset) - acc, -30, 30)
    s = special.expit(theta + offset)
    slope = weight @ (s * (1 - s))  # d accuracy / d logit shift; also the mean Bernoulli variance
    quality = np.sqrt(max(0.0, seed_sd**2 - slope / len(label)))  # what the noise leaves to the seed
    q = rng.normal(0, quality / slope, (n_seeds, 1))
    return rng.random((n_seeds, len(label))) < special.expit(theta + q + ease + own)


def frame_of(correct, label, study="sim", cell="a", start=0, checkpoint="best_loss"):
    """The study's long predictions frame for a K x n correct matrix (a wrong answer is the other class)."""
    k, n = correct.shape
    pred = np.where(correct, label, 1 - label).ravel()
    return pd.DataFrame(
        {
            "study": study,
            "number": np.repeat(np.arange(start, start + k), n),
            "cell": cell,
            "phase": "replicate",
            "train_seed": np.repeat(np.arange(k), n),
            "checkpoint": checkpoint,
            "image_id": np.tile([f"img{i:04d}" for i in range(n)], k),
            "label": np.tile(label, k),
            "pred": pred,
            "score": np.where(pred == 1, 0.9, 0.1),
        }
    )


def pair(rng, n_seeds, acc_a, acc_b, seed_sd=0.015, cell_sd=0.7, **kw):
    """Prediction frames of two cells tested on the same images."""
    images = draw_images(rng, **kw)
    a = simulate(rng, images, n_seeds, acc_a, seed_sd, cell_sd, **kw)
    b = simulate(rng, images, n_seeds, acc_b, seed_sd, cell_sd, **kw)
    return frame_of(a, images[0], cell="a"), frame_of(b, images[0], cell="b", start=n_seeds)


def mc_bound(rate, n):
    """rate + 3 binomial standard errors of a rate measured over n simulations."""
    return rate + 3 * np.sqrt(rate * (1 - rate) / n)


# ---------------------------------------------------------------- proportions, metrics, frames


@pytest.mark.parametrize("k,n", [(0, 624), (624, 624), (487, 624), (3, 10)])
def test_wilson_matches_the_closed_form_and_scipy(k, n):
    z = stats.norm.ppf(0.975)
    p = k / n
    centre, half = (p + z * z / (2 * n)), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    expected = ((centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n))
    low, high = statistics.wilson(k, n)
    assert (low, high) == pytest.approx(expected, abs=1e-9)
    ci = stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
    assert (low, high) == pytest.approx((ci.low, ci.high))
    assert 0 <= low <= p <= high <= 1 and high - low > 0.001  # not collapsed at 0 % or 100 %


def test_metrics_count_a_non_class_prediction_as_wrong():
    label = np.array([0, 0, 0, 1, 1])
    pred = np.array([0, 2, 1, 1, 7])  # 2 and 7: out_features > 2 heads predicting no class
    assert statistics.metric_of(pred, label, "acc") == pytest.approx(2 / 5)
    assert statistics.metric_of(pred, label, "specificity") == pytest.approx(1 / 3)
    assert statistics.metric_of(pred, label, "sensitivity") == pytest.approx(1 / 2)
    assert statistics.metric_of(pred, label, "balanced_acc") == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert statistics.metric_of(np.vstack([pred, label]), label, "acc") == pytest.approx([0.4, 1.0])
    with pytest.raises(ValueError, match="unknown metric"):
        statistics.metric_of(pred, label, "auc")


def test_cells_on_different_images_are_refused():
    rng = np.random.default_rng(1)
    a, b = pair(rng, 3, 0.8, 0.8)
    c, label, ids, seeds = statistics.correct_matrix(a)
    assert c.shape == (3, N_IMAGES) and len(ids) == N_IMAGES and label.sum() == N_POS
    assert list(seeds) == [0, 1, 2]
    with pytest.raises(ValueError, match="different images"):
        statistics.paired(a, b.assign(image_id=b.image_id.str.replace("img0", "other0")))
    with pytest.raises(ValueError, match="lack predictions"):
        statistics.correct_matrix(a.iloc[1:])
    with pytest.raises(ValueError, match="several checkpoints"):
        statistics.correct_matrix(pd.concat([a, a.assign(checkpoint="final")]))


def test_seeds_pair_by_training_seed_shared_seeds_first():
    oa, ob = statistics.pairing([5, 1, 2, 9], [2, 3, 1])
    assert [[5, 1, 2, 9][i] for i in oa] == [1, 2, 5, 9]
    assert [[2, 3, 1][i] for i in ob] == [1, 2, 3]


@pytest.mark.parametrize("k,n", [(3, 3), (2, 5), (4, 7)])
def test_scheffe_seed_term_is_unbiased_for_any_variance_ratio(k, n):
    """Var(mean x - mean y) = sd_x^2 / k + sd_y^2 / n, whatever the ratio; the estimate has k - 1 df."""
    rng = np.random.default_rng(k * 10 + n)
    sd_x, sd_y = 0.07, 0.005
    x, y = rng.normal(0, sd_x, (20000, k)), rng.normal(0, sd_y, (20000, n))
    var, df = variance.seed_term(x, y)
    assert df == min(k, n) - 1
    truth = sd_x**2 / k + sd_y**2 / n
    assert var.mean() == pytest.approx(truth, rel=0.03)
    assert (var * df / truth).var() == pytest.approx(2 * df, rel=0.08)  # a scaled chi^2 with k - 1 df
    if k == n:
        assert var == pytest.approx((x - y).var(1, ddof=1) / k)  # plain paired differences


def test_the_image_term_is_needed_when_the_cells_fail_on_different_images():
    """Where the cells' own per-image effects dominate (cell_sd 2.5, seed sd 1 point), a Welch test
    on the per-seed accuracies alone, which conditions on these 624 images, rejected 28 % of 300
    null comparisons: the image term of the variance is needed."""
    rng = np.random.default_rng(11)
    p = [statistics.paired(*pair(rng, 5, 0.8, 0.8, 0.01, cell_sd=2.5))["p"] for _ in range(150)]
    assert np.mean(np.array(p) < 0.05) <= mc_bound(0.05, len(p))


@pytest.mark.parametrize("k,least", [(5, 0.8), (3, 0.5)])
def test_power_for_a_5_point_difference(k, least):
    rng = np.random.default_rng(20 + k)
    hits = 0
    for _ in range(100):
        r = statistics.paired(*pair(rng, k, 0.80, 0.75, seed_sd=0.015))
        hits += r["p"] < 0.05 and r["estimate"] > 0
    print(f"\npower, 5-point difference, 624 images x {k} seeds (seed sd 1.5 points): {hits / 100:.2f} over 100")
    assert hits / 100 >= least


def test_tost_accepts_equal_cells_and_rejects_a_5_point_gap():
    rng = np.random.default_rng(30)
    # Equivalence within +-2 points needs a tight difference: 8 seeds, seed sd 1 point.
    same = [statistics.paired(*pair(rng, 8, 0.8, 0.8, seed_sd=0.01, cell_sd=0.0), margin=0.02) for _ in range(40)]
    assert np.mean([t["p_tost"] < 0.05 for t in same]) >= 0.85
    assert all(t["p_outside"] > 0.5 for t in same)
    gap = [statistics.paired(*pair(rng, 8, 0.8, 0.75, seed_sd=0.01, cell_sd=0.0), margin=0.02) for _ in range(40)]
    assert all(t["p_tost"] >= 0.05 and t["p_outside"] < 0.05 for t in gap)
    assert all(t["high"] < -0.02 or t["low"] > 0.02 for t in gap)  # the 95 % interval wholly outside the margin
    # At a true gap of exactly the margin, TOST may accept only alpha of the time.
    edge = [statistics.paired(*pair(rng, 5, 0.8, 0.78, seed_sd=0.01), margin=0.02)["p_tost"] < 0.05 for _ in range(150)]
    assert np.mean(edge) <= mc_bound(0.05, len(edge))


def test_paired_test_resolves_what_two_separate_intervals_do_not():
    rng = np.random.default_rng(40)
    paired_hits = overlap_hits = 0
    for _ in range(30):
        a, b = pair(rng, 5, 0.80, 0.77, seed_sd=0.01)
        paired_hits += statistics.paired(a, b)["p"] < 0.05
        (_, lo_a, _), (_, _, hi_b) = statistics.cell_interval(a), statistics.cell_interval(b)
        overlap_hits += lo_a > hi_b
    assert paired_hits >= 22 and overlap_hits <= 3


def test_paired_result_is_consistent():
    rng = np.random.default_rng(50)
    a, b = pair(rng, 4, 0.82, 0.78)
    r = statistics.paired(a, b, "balanced_acc")
    assert (r["n_seeds_a"], r["n_seeds_b"], r["n_images"]) == (4, 4, N_IMAGES)
    assert r["estimate"] == pytest.approx(r["mean_a"] - r["mean_b"])
    assert r["low"] < r["estimate"] < r["high"] and 0 <= r["p_better"] <= 1 and r["mde"] > 0
    swapped = statistics.paired(b, a, "balanced_acc")
    assert swapped["estimate"] == pytest.approx(-r["estimate"]) and swapped["p"] == pytest.approx(r["p"])
    assert swapped["p_better"] == pytest.approx(1 - r["p_better"])
    with pytest.raises(ValueError, match="at least 2"):
        statistics.paired(a[a.number == 0], b)


@pytest.mark.parametrize("level", [0.95, 0.99, 0.9])
def test_the_p_value_and_the_interval_agree(level):
    """p < 1 - level exactly when the interval at `level` leaves out 0, at every variance ratio:
    the p-value inverts the same calibrated critical values the interval uses."""
    rng = np.random.default_rng(51)
    label = np.r_[np.zeros(40, int), np.ones(60, int)]
    for k in (2, 3, 6):
        ca = rng.random((400, k, 100)) < rng.uniform(0.6, 0.95, (400, k, 1))
        cb = rng.random((400, k, 100)) < rng.uniform(0.6, 0.95, (400, k, 1))
        r = statistics.compare(ca, cb, label, level=level)
        outside = (r["low"] > 0) | (r["high"] < 0)
        near = np.abs(r["p"] - (1 - level)) < 1e-6
        assert ((r["p"] < 1 - level) == outside)[~near].all()


# ---------------------------------------------------------------- Holm and timings


def test_holm_step_down():
    adjusted = statistics.holm([0.01, 0.04, 0.03, np.nan, 0.005])
    assert adjusted[:3] == pytest.approx([0.03, 0.06, 0.06]) and adjusted[4] == pytest.approx(0.02)
    assert np.isnan(adjusted[3])
    assert statistics.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_throughput_pairs_the_runs_of_a_round():
    """A drift shared by the two runs of each round cancels in the paired log ratio: the 20 %
    slowdown of a is resolved although the drift (40 % over the rounds) dwarfs it unpaired."""
    rng = np.random.default_rng(60)
    drift = np.linspace(1.0, 1.4, 6)
    slow, fast = 0.120 * drift * rng.lognormal(0, 0.01, 6), 0.100 * drift * rng.lognormal(0, 0.01, 6)
    r = statistics.throughput(slow, fast)
    logs = np.log(slow) - np.log(fast)
    assert r["p"] == pytest.approx(stats.ttest_1samp(logs, 0).pvalue) and r["p"] < 0.001
    half = stats.t.ppf(0.975, 5) * logs.std(ddof=1) / np.sqrt(6)
    assert (np.log(r["ratio_low"]), np.log(r["ratio_high"])) == pytest.approx((logs.mean() - half, logs.mean() + half))
    assert r["ratio"] == pytest.approx(1.2, abs=0.02) and r["ratio_low"] > 1.15
    assert stats.ttest_ind(np.log(slow), np.log(fast)).pvalue > 0.01  # unpaired, the drift hides it
    with pytest.raises(ValueError, match="pairs the runs"):
        statistics.throughput(slow[:4], fast)
    with pytest.raises(ValueError, match="at least 2"):
        statistics.throughput(slow[:1], fast[:1])
