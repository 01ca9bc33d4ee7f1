"""The report's claims as data (reference/claims.csv), judged on a study's replicates.

claims.csv has one row per comparison "a against b": claim (id), group (the report's claim
number), sentence_zh (quoted from the report), gloss_en, study_a, cell_a, study_b, cell_b (a cell
is `key=value` pairs joined by `;`, matched as strings against the trials' parameters),
metric (acc, balanced_acc, sensitivity, specificity; or s_per_step, judged on the throughput
frame), direction (greater: a > b is claimed; less; equivalent: "no effect"), about (`transfer`
for claims about ImageNet weights or features), report_a and report_b (the report's numbers).
Nothing here knows the report's claims: a new row of claims.csv is judged like the others.

Each comparison uses the COMPLETE replicate-phase trials of its two cells at one checkpoint and
gets a verdict (see `evaluate`): supported, contradicted, inconclusive, or void with its reason.
Holm's correction runs over the non-void comparisons still undecided at one look, the family a
report draws its conclusions from (a study run with --seeds auto looks several times, each at its
own share of alpha: tlstudy.analysis.sequential). Each verdict carries what it rests on: the data
source, the seeds per cell and the failed replicates left out, the smallest difference it could
detect at 80 % power, and P(A > B) over seed pairs.
"""

from typing import Any

import numpy as np
import pandas as pd

from tlstudy.analysis import statistics, timing
from tlstudy.analysis.timing import select, void
from tlstudy.names import PHASE, RANDOM_FALLBACK, REPLICATE, WEIGHTS_SOURCE
from tlstudy.spaces import Cell, reference_dir

CLAIMS = reference_dir() / "claims.csv"
COLUMNS = [
    "claim",
    "cells",
    "metric",
    "estimate",
    "low",
    "high",
    "p",
    "p_holm",
    "level",
    "margin",
    "verdict",
    "look",
    "data_source",
    "n_a",
    "n_b",
    "failed_a",
    "failed_b",
    "collapsed_a",
    "collapsed_b",
    "mde",
    "p_better",
    "reason",
]
EXTRA = [
    "group",
    "direction",
    "about",
    "mean_a",
    "mean_b",
    "tost_low",
    "tost_high",
    "report_a",
    "report_b",
    "sentence_zh",
    "gloss_en",
]
DIRECTIONS = ("greater", "less", "equivalent")
COMPARABLE = ("data_fingerprint", "image_size", "profile", "epochs")
PHANTOM = "ImageNet features say nothing about X-ray transfer on synthetic phantoms"
NO_SOURCE = "the trials record no weights_source: pretrained and random-init weights cannot be told apart"


def load(path=CLAIMS):
    """claims.csv as text columns (empty cells stay empty strings)."""
    claims = pd.read_csv(path, dtype=str, keep_default_na=False)
    bad = claims[~claims.direction.isin(DIRECTIONS)]
    if len(bad):
        raise ValueError(
            f"{path}: claim {bad.claim.iloc[0]}: direction {bad.direction.iloc[0]!r} is not one of {DIRECTIONS}"
        )
    return claims


def _accuracy_row(c, cells, trials, predictions, studies, margin, alpha, checkpoint, groups):
    """One comparison of a test metric: its figures, or why it is void."""
    reasons, picked = [], {}
    for side in ("a", "b"):
        study = c[f"study_{side}"]
        if study not in studies or not (trials.study == study).any():
            reasons.append(f"study {study} not run")
    if reasons:
        return void(sorted(set(reasons)))
    sa, sb = studies[c["study_a"]], studies[c["study_b"]]
    for key in COMPARABLE:
        if sa.get(key) != sb.get(key):
            reasons.append(f"{c['study_a']} and {c['study_b']} differ in {key} ({sa.get(key)} vs {sb.get(key)})")
    transfer = c.get("about") == "transfer"
    if transfer and any(str(s.get("data_source", "")).startswith("phantom") for s in (sa, sb)):
        reasons.append(PHANTOM)
    out: dict[str, Any] = dict(data_source=str(sa.get("data_source", "")))
    for side in ("a", "b"):
        study, cell = c[f"study_{side}"], cells[side]
        mine = trials[(trials.study == study) & (trials[PHASE] == REPLICATE)]
        mine, missing = select(mine, cell)
        if missing:
            reasons.append(f"{study}'s trials have no parameter {', '.join(missing)}")
        done = mine[mine.state == "COMPLETE"]
        out[f"failed_{side}"] = int((mine.state == "FAIL").sum())
        p = predictions[(predictions.study == study) & predictions.number.isin(done.number)]
        k = p.number.nunique()
        if k < 2:
            reasons.append(
                f"{study} {c[f'cell_{side}']}: {k} complete replicate(s) with {checkpoint} predictions "
                "(needs 2: run the cell's replicate phase)"
            )
        if transfer and WEIGHTS_SOURCE not in done:
            reasons.append(NO_SOURCE)
        fallback = int((done.get(WEIGHTS_SOURCE, pd.Series(dtype=str)) == RANDOM_FALLBACK).sum())
        if transfer and fallback:
            reasons.append(
                f"{fallback} {study} trial(s) of {c[f'cell_{side}']} trained from a random init "
                "(weights_source=random-fallback): no pretrained weights to compare"
            )
        picked[side] = p
    if reasons:
        return dict(out, **void(list(dict.fromkeys(reasons))))
    equivalent = c["direction"] == "equivalent"
    try:
        r = statistics.paired(
            picked["a"],
            picked["b"],
            c["metric"],
            level=0.95,
            groups=(groups or {}).get(c["study_a"]),
            margin=margin if equivalent else None,
        )
    except ValueError as e:  # e.g. the two cells were tested on different images
        return dict(out, **void([str(e)]))
    if np.isnan(r["estimate"]):
        return dict(out, **void([
            f"fewer than 2 converged seeds in a cell ({r['collapsed_a']:.0f} of a's and {r['collapsed_b']:.0f} "
            "of b's replicates predict one class for every test image)"
        ]))  # fmt: skip
    out.update({k: r[k] for k in ("estimate", "low", "high", "mean_a", "mean_b", "p_better", "se", "df")})
    out["variance_ratio"] = r["ratio"]
    out.update(n_a=r["n_a"], n_b=r["n_b"], collapsed_a=r["collapsed_a"], collapsed_b=r["collapsed_b"])
    out.update(n_clusters=r["n_clusters"], n_images=r["n_images"])
    out.update(p=r["p"], void=False, reason="")
    if equivalent:  # one p for the claim: the equivalence test, or the test that it lies outside
        out.update(margin=margin, p_tost=r["p_tost"], p_outside=r["p_outside"], p=min(r["p_tost"], r["p_outside"]))
    return out


def _decided(r):
    """Whether an earlier look decided this claim (the column is NaN for the others, and NaN is truthy)."""
    return isinstance(r.get("decided"), str)


def _verdict(r, alpha):
    if r["void"]:
        return "void"
    if _decided(r):
        return r["decided"]
    if not r["p_holm"] < alpha:
        return "inconclusive"
    if r["direction"] == "equivalent":
        return "supported" if r["p_tost"] <= r["p_outside"] else "contradicted"
    claimed = 1 if r["direction"] == "greater" else -1
    return "supported" if claimed * r["estimate"] > 0 else "contradicted"


def _mde(r, level):
    """The smallest |a - b| detectable at 80 % power at this claim's level (its Bonferroni share)."""
    if r["void"] or r["metric"] == "s_per_step" or pd.isna(r.get("se")):
        return np.nan
    q = np.array([r["variance_ratio"]])
    return float(
        (statistics.reference_quantile(level, r["df"], q) + statistics.reference_quantile(0.4, r["df"], q))[0] * r["se"]
    )


def _why(r, alpha):
    """The verdict in words, with the numbers it rests on."""
    if r["void"]:
        return r["reason"]
    seconds = r["metric"] == "s_per_step"
    f = (lambda v: f"{v:+.4g} s") if seconds else (lambda v: f"{100 * v:+.1f} points")
    text = f"a - b {f(r['estimate'])}, 95 % interval [{f(r['low'])}, {f(r['high'])}]; "
    if seconds:
        text += (
            f"{r['n_a']:.0f} rounds of interleaved timed runs, paired; ratio {r['ratio']:.3g} "
            f"[{r['ratio_low']:.3g}, {r['ratio_high']:.3g}] at {r['setting']}"
        )
        if r.get("wall"):
            text += f"; {r['wall']}"
    else:
        left = [f"{r[f'failed_{s}']:.0f} failed in {s}" for s in "ab" if r.get(f"failed_{s}", 0)]
        left += [f"{r[f'collapsed_{s}']:.0f} collapsed to one class in {s}" for s in "ab" if r.get(f"collapsed_{s}", 0)]
        text += f"{r['n_a']:.0f} vs {r['n_b']:.0f} seeds" + (f" ({', '.join(left)}, left out)" if left else "")
        text += f" on {r['n_images']:.0f} test images"
        if r.get("n_clusters", r["n_images"]) < r["n_images"]:
            text += f" of {r['n_clusters']:.0f} patients"
        text += f"; P(a > b) over seed pairs {r['p_better']:.2f}"
        if str(r.get("data_source", "")).startswith("phantom"):
            text += "; on the synthetic phantom, not X-rays"
    if r["direction"] == "equivalent" and not seconds:
        text += f"; TOST at ±{100 * r['margin']:.1f} points: p {r['p_tost']:.3g}"
        text += f", outside the margin: p {r['p_outside']:.3g}"
    if _decided(r):
        return text + f"; p {r['p']:.3g} now; decided at look {r['look']:.0f}, which kept its verdict"
    text += f"; p {r['p']:.3g}, Holm-adjusted {r['p_holm']:.3g} ({'<' if r['p_holm'] < alpha else '>='} {alpha:.3g})"
    if r["verdict"] == "inconclusive" and not pd.isna(r.get("mde")):
        text += f"; it could detect {100 * r['mde']:.1f} points at 80 % power"
    return text


def evaluate(
    claims,
    trials,
    predictions,
    studies,
    throughput=None,
    margin=0.02,
    alpha=0.05,
    checkpoint="best_loss",
    groups=None,
    decided=None,
    look=0,
):
    """Judge every row of `claims` (see `load`) on this evaluation's data.

    trials: one row per trial (study, number, state, phase, train_seed, weights_source and the cell
    parameters); predictions: the long per-image frame (study, number, checkpoint, image_id, label,
    pred, train_seed, ...); studies: study name -> dict(data_fingerprint, data_source, image_size,
    profile, epochs); throughput: a frame (arch, device, batch_size, image_size, repeat, s_per_step)
    or None; groups: study -> {test image id: patient}; decided: claim -> (verdict, look) of the
    claims an earlier look decided, which keep their verdict and leave the family; alpha: this
    look's level. Returns COLUMNS, then EXTRA. Directional claims: supported when the Holm-adjusted
    p < alpha with the claimed sign, contradicted with the other sign. Equivalence claims (within
    +-margin): supported when the Holm-adjusted TOST p < alpha, contradicted when the test that the
    difference lies outside +-margin rejects at the same level. Otherwise inconclusive. Void rows
    have no p."""
    preds = predictions[predictions.checkpoint == checkpoint]
    decided = decided or {}
    rows = []
    for c in claims.to_dict("records"):
        cells = {"a": Cell.parse(c["cell_a"]).as_dict(), "b": Cell.parse(c["cell_b"]).as_dict()}
        base = dict(
            claim=c["claim"],
            cells=f"{c['study_a']}: {c['cell_a']} vs {c['study_b']}: {c['cell_b']}",
            metric=c["metric"],
            estimate=np.nan,
            low=np.nan,
            high=np.nan,
            p=np.nan,
            margin=np.nan,
            look=look,
            **{k: c.get(k, "") for k in EXTRA if k in claims},
        )
        if c["metric"] == "s_per_step" and c["direction"] == "equivalent":
            base.update(void(["an equivalence claim on s_per_step has no margin in seconds: not judged"]))
        elif c["metric"] == "s_per_step":
            base.update(timing.speed_row(c, cells, throughput, studies, alpha, trials))
        else:
            base.update(_accuracy_row(c, cells, trials, preds, studies, margin, alpha, checkpoint, groups))
        if not base["void"] and c["claim"] in decided:
            base.update(decided=decided[c["claim"]][0], look=decided[c["claim"]][1])
        rows.append(base)
    out = pd.DataFrame(rows)
    if out.empty:
        return pd.DataFrame(columns=COLUMNS + EXTRA)
    if "decided" not in out:
        out["decided"] = None
    family = ~out.void.astype(bool) & out.decided.isna()
    out["p_holm"] = statistics.holm(out.p.where(family))
    out["level"] = np.where(family, alpha, np.nan)
    out["verdict"] = [_verdict(r, alpha) for r in out.to_dict("records")]
    m = max(1, int(family.sum()))
    out["mde"] = [_mde(r, alpha / m) for r in out.to_dict("records")]
    out["reason"] = [_why(r, alpha) for r in out.to_dict("records")]
    for k in ("n_a", "n_b", "failed_a", "failed_b", "collapsed_a", "collapsed_b"):
        out[k] = out.reindex(columns=[k])[k].astype("Int64")
    return out.reindex(columns=COLUMNS + EXTRA)
