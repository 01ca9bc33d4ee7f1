"""Simulated cells: per-image correctness of replicate models, for calibrating the statistics.

A regime describes two cells tested on one test set shaped like Kermany's (624 images, 234
NORMAL / 390 PNEUMONIA, about 1.6 images per patient). Model c's logit of a correct answer on
image j, for training seed k, is
    sharpness_c * (mu_c + difficulty_j + own_cj) + quality_ck + threshold_ck * (+1 PNEUMONIA, -1 NORMAL),
and the answer is a Bernoulli draw from it (the seed x image noise). Every part is a source of
variance a real study has:
- difficulty_j, shared by both cells, with a patient part, and a few images nearly every model
  gets wrong (IMPOSSIBLE of them, at logit -6);
- own_cj, each cell's own per-image effect, also with a patient part;
- quality_ck and threshold_ck, the training seed's overall skill and its trade of sensitivity
  for specificity;
- sharpness: how deterministic a cell is per image (a stable cell's seeds agree image by image);
- collapse: the chance that a seed predicts one class for every image (a diverged fine-tune);
- shared: the first seeds of both cells are the same training seeds, their quality and noise
  correlated by `rho` (the study runs seeds 1..K in every cell).
Under the null (`delta=0`) the cells' population accuracies, over converged seeds and over the
image population, are equal (the comparison sets collapsed seeds apart, as
tlstudy.analysis.statistics does): mu_b is solved for by Gauss-Hermite quadrature.
`true_difference` gives the population difference under an alternative, for coverage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize, special

N_NORMAL, N_PNEUMONIA = 234, 390
IMPOSSIBLE = 0.04  # the share of test images nearly every model gets wrong
CLASS_SHIFT = {0: -0.5, 1: 1.0}  # NORMAL is the harder class
DIFFICULTY = (1.0, 1.5)  # sd of the shared difficulty: patient part, image part
OWN = (0.4, 0.6)  # sd of a cell's own per-image effect: patient part, image part


@dataclass(frozen=True)
class Regime:
    """Two cells, a and b. Per-cell pairs are (a, b)."""

    name: str
    quality: tuple[float, float] = (0.2, 0.2)  # sd of a seed's logit shift
    threshold: tuple[float, float] = (0.1, 0.1)  # sd of a seed's threshold shift
    sharpness: tuple[float, float] = (1.0, 1.0)
    collapse: tuple[float, float] = (0.0, 0.0)
    shared: float = 0.0  # the share of seeds the cells have in common
    rho: float = 0.7
    seeds_b: float = 1.0  # cell b's seeds as a multiple of cell a's
    mu_a: float = 1.6
    images_per_patient: float = 1.6


REGIMES = {
    r.name: r
    for r in (
        Regime("balanced"),
        # about 7 points of seed sd against 0.5: a fragile cell against a stable one
        Regime("unequal", quality=(0.9, 0.0), threshold=(0.5, 0.0), sharpness=(1.0, 4.0)),
        Regime("collapse", collapse=(0.2, 0.0)),
        Regime("shared", shared=0.6, rho=0.8),
        Regime("unequal_k", quality=(0.9, 0.0), threshold=(0.5, 0.0), sharpness=(1.0, 4.0), seeds_b=2.0),
    )
}


def test_set(rng: np.random.Generator, images_per_patient: float = 1.6) -> tuple[np.ndarray, np.ndarray]:
    """(label, patient) of a Kermany-shaped test set; a patient's images share its class."""
    label = np.r_[np.zeros(N_NORMAL, int), np.ones(N_PNEUMONIA, int)]
    sizes = rng.geometric(1 / images_per_patient, len(label))
    patient = np.repeat(np.arange(len(label)), sizes)[: len(label)]
    return label, patient + np.where(label == 1, len(label), 0)  # no patient spans both classes


def _population(r: Regime, cell: int, mu: float, label: np.ndarray) -> float:
    """The cell's expected accuracy over its converged seeds and the image population (by quadrature)."""
    x, w = np.polynomial.hermite_e.hermegauss(80)
    w = w / w.sum()
    k = r.sharpness[cell]
    seed_var = r.quality[cell] ** 2 + r.threshold[cell] ** 2
    total = 0.0
    for h, share in ((0, (label == 0).mean()), (1, (label == 1).mean())):
        own = sum(s**2 for s in OWN)
        regular = np.sqrt(k**2 * (sum(s**2 for s in DIFFICULTY) + own) + seed_var)
        hard = np.sqrt(k**2 * own + seed_var)
        p = (1 - IMPOSSIBLE) * w @ special.expit(k * (mu + CLASS_SHIFT[h]) + regular * x)
        p += IMPOSSIBLE * w @ special.expit(k * (mu - 6) + hard * x)
        total += share * p
    return total


def intercepts(r: Regime, label: np.ndarray, delta: float = 0.0) -> tuple[float, float]:
    """(mu_a, mu_b): cell b's population accuracy equals a's; with delta != 0, a's is shifted
    by delta on the logit scale (the alternative)."""
    target = _population(r, 0, r.mu_a, label)
    mu_b = optimize.brentq(lambda m: _population(r, 1, m, label) - target, -20, 20, xtol=1e-12)
    return r.mu_a + delta, mu_b


def true_difference(r: Regime, label: np.ndarray, delta: float) -> float:
    mu_a, mu_b = intercepts(r, label, delta)
    return _population(r, 0, mu_a, label) - _population(r, 1, mu_b, label)


def draw(
    r: Regime, k: int, n: int, rng: np.random.Generator, delta: float = 0.0, test: tuple | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(correct_a, correct_b, label, patient): n simulated comparisons, correct_a n x k x images and
    correct_b n x k_b x images (bool), on one test set (drawn from rng unless given)."""
    label, patient = test if test is not None else test_set(rng, r.images_per_patient)
    k_b = int(round(k * r.seeds_b))
    _, first = np.unique(patient, return_inverse=True)
    n_pat = first.max() + 1
    mus = intercepts(r, label, delta)
    shift = np.vectorize(CLASS_SHIFT.get)(label)

    def effect(sd):  # a patient part plus an image part
        return rng.normal(0, sd[0], (n, n_pat))[:, first] + rng.normal(0, sd[1], (n, len(label)))

    difficulty = np.where(rng.random((n, len(label))) < IMPOSSIBLE, -6.0 - shift, effect(DIFFICULTY))
    shared = int(round(r.shared * min(k, k_b)))
    z_quality, z_threshold = rng.standard_normal((2, n, max(k, k_b)))
    noise = rng.random((n, max(k, k_b), len(label)))
    out = []
    for cell, seeds in ((0, k), (1, k_b)):
        zq, zt, u = z_quality[:, :seeds].copy(), z_threshold[:, :seeds].copy(), noise[:, :seeds].copy()
        if cell == 1:  # seeds beyond the shared ones are the cell's own
            fresh = rng.standard_normal((2, n, seeds))
            zq[:, :shared] = r.rho * zq[:, :shared] + np.sqrt(1 - r.rho**2) * fresh[0, :, :shared]
            zt[:, :shared] = r.rho * zt[:, :shared] + np.sqrt(1 - r.rho**2) * fresh[1, :, :shared]
            zq[:, shared:], zt[:, shared:] = fresh[0, :, shared:], fresh[1, :, shared:]
            u[:, shared:] = rng.random((n, seeds - shared, len(label)))
        base = r.sharpness[cell] * (mus[cell] + shift + difficulty + effect(OWN))
        logit = (
            base[:, None, :] + (r.quality[cell] * zq)[..., None] + (r.threshold[cell] * zt)[..., None] * (2 * label - 1)
        )
        correct = u < special.expit(logit)
        collapsed = rng.random((n, seeds)) < r.collapse[cell]
        one_class = rng.integers(0, 2, (n, seeds))[..., None] == label  # what a one-class model gets right
        out.append(np.where(collapsed[..., None], one_class, correct))
    return out[0], out[1], label, patient
