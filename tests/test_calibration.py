"""The paired test's error rate on simulated cells, and that this check fails on broken tests.

The nulls come from tlstudy.analysis.simulation (two cells with equal population accuracy on a
Kermany-shaped test set with patients). Each check counts rejections at alpha = 0.05 over 2,000
nulls, whose binomial sd at 0.05 is 0.0049, and asks for a rate inside a two-sided band: at most
three sds over alpha (0.065), at least the issue's floor of 0.03. At K = 2 (one seed df) the test
is conservative by design where the images carry part of the variance, and the lower bound is
0.02. The regimes are the ones where the old test failed: one fragile cell against a stable one
at 2 and 3 seeds, and unequal seed counts. bench/calibration.py runs every regime at K = 2..10
(bench/RESULTS.md); `-m slow` runs more here.
"""

import sys

import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import calibration  # noqa: E402  (bench/calibration.py: the same check, at every seed count)

from tlstudy.analysis import critical, simulation, statistics, variance  # noqa: E402

NULLS = 2000
SD = np.sqrt(0.05 * 0.95 / NULLS)
# Above: three sds over alpha. Below: the floor of 0.03 (a test more conservative than
# that wastes power; between 0.03 and alpha it is valid, e.g. shared seeds at K = 3: 0.035-0.039).
BAND = (0.03, 0.05 + 3 * SD)


def band(k):
    return (0.02 if k == 2 else BAND[0], BAND[1])


def fpr(name, k, seed=1):
    return calibration.rates(simulation.REGIMES[name], k, NULLS, seed=seed, coverage=False)["fpr"]


@pytest.mark.parametrize(
    "name,k",
    [("unequal", 2), ("unequal", 3), ("unequal_k", 2), ("balanced", 3), ("collapse", 3), ("shared", 3), ("shared", 6)],
)
def test_the_false_positive_rate_is_alpha_in_every_regime(name, k):
    low, high = band(k)
    assert low <= fpr(name, k) <= high


@pytest.mark.parametrize(
    "variant,name,k", [("normal", "unequal", 2), ("se85", "balanced", 10), ("pooled", "unequal", 3)]
)
def test_the_check_fails_on_each_broken_variant(variant, name, k):
    """The check above, run on the three broken tests of issue 20: each falls outside the band."""
    low, high = band(k)
    with calibration.broken(variant):
        rate = fpr(name, k)
    assert not low <= rate <= high, f"{variant}: rate {rate:.3f} inside [{low:.3f}, {high:.3f}]"


def test_intervals_cover_the_true_difference_under_an_alternative():
    """Coverage of the 95 % interval at +3 points, over 2,000 draws (sd 0.0049 at 0.95): three sds
    below 0.95 is the least a calibrated interval reaches by chance."""
    r = calibration.rates(simulation.REGIMES["unequal"], 3, NULLS, seed=2)
    assert r["true_difference"] > 0.01
    assert r["coverage"] >= 0.95 - 3 * np.sqrt(0.95 * 0.05 / NULLS)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(simulation.REGIMES))
@pytest.mark.parametrize("k", [2, 4, 6, 10])
def test_the_false_positive_rate_at_every_seed_count(name, k):
    low, high = band(k)
    assert low <= fpr(name, k, seed=3) <= high


def test_the_critical_values_are_a_fresh_fit_of_the_quadrature():
    """The shipped table (critical_values.csv) is what `critical.fit` gives today, and its size
    by quadrature never exceeds alpha by more than 2.5 % at any true variance ratio (the
    worst in the table is 1.020 alpha, at f = 1 and alpha = 2e-4)."""
    rows = critical._table()
    for f, alpha in ((2, 0.05), (4, 0.005)):
        q0, b = critical.fit(f, alpha)
        row = rows[f][np.isclose(rows[f][:, 0], alpha)][0]
        assert row[1:] == pytest.approx([q0, b], rel=1e-3)
    for f in (1, 2, 3, 5, 9):
        for alpha, q0, b in rows[f]:
            assert critical.size(f, alpha, q0, b).max() <= 1.025 * alpha


def test_a_patient_clustered_test_set_widens_the_interval():
    """The same images, with their patients or treated as independent: when a patient's images
    share their errors, the clustered image variance is larger."""
    regime = simulation.Regime("patients", quality=(0.05, 0.05), threshold=(0.02, 0.02), images_per_patient=4.0)
    rng = np.random.default_rng(5)
    ca, cb, label, patient = simulation.draw(regime, 5, 200, rng)
    u = statistics.image_weights(label, "acc")
    clustered = variance.image_term([ca, cb], [1, -1], label, u, patient)[0]
    independent = variance.image_term([ca, cb], [1, -1], label, u)[0]
    assert np.median(clustered / independent) > 1.3
    r_c = statistics.compare(ca, cb, label, groups=patient)
    r_i = statistics.compare(ca, cb, label)
    assert np.median((r_c["high"] - r_c["low"]) / (r_i["high"] - r_i["low"])) > 1.03


sys.path.insert(0, str(ROOT / "bench"))
import sequential as sequential_bench  # noqa: E402  (bench/sequential.py)

from tlstudy.analysis import sequential  # noqa: E402
from tlstudy.settings import seed_plan  # noqa: E402


def test_the_error_rate_holds_across_the_looks_of_seeds_auto(monkeypatch):
    """Looks at 3, 5, 7, 8 seeds, each at its share of alpha: a false verdict at any look stays
    under alpha (the union bound makes it conservative). Testing at alpha at every look, the
    scheme the spending replaces, breaks the same bound."""
    looks = [3, 5, 7, 8]
    assert sum(sequential.levels(looks, 0.05)) == pytest.approx(0.05)
    rate = sequential_bench.run(simulation.REGIMES["unequal"], looks, NULLS, delta=0.0, seed=7)["rate"]
    assert rate <= BAND[1]
    monkeypatch.setattr(sequential, "levels", lambda looks, alpha, rho=2.0: [alpha] * len(looks))
    naive = sequential_bench.run(simulation.REGIMES["unequal"], looks, NULLS, delta=0.0, seed=7)["rate"]
    assert naive > BAND[1]


def test_looks_and_levels_are_planned_before_any_data():
    assert seed_plan(3, 8) == [3, 5, 7, 8]
    assert seed_plan(5, 10) == [5, 7, 9, 10]
    assert seed_plan(3, 3) == [3]
    levels = sequential.levels([3, 5, 7, 8], 0.05)
    assert levels[0] == pytest.approx(0.05 * (3 / 8) ** 2) and min(levels) > 0
    assert sequential.current(None, 0.05) == (0.05, {}, 0)
    first = {"look": 1, "alpha": 0.007, "verdicts": {"6": "supported", "5a": "inconclusive"}}
    second = {"look": 2, "alpha": 0.0125, "verdicts": {"6": "supported", "5a": "contradicted"}}
    rounds = {"looks": [first, second]}
    assert sequential.current(rounds, 0.05) == (0.0125, {"6": ("supported", 1), "5a": ("contradicted", 2)}, 2)
