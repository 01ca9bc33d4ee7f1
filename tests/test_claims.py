"""tlstudy.analysis.claims: the report's claims, as rows of claims.csv, judged on simulated replicates."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tlstudy.analysis import claims, statistics
from tlstudy.spaces import Cell

from test_statistics import draw_images, frame_of, mc_bound, simulate

REPORT = Path(__file__).resolve().parents[2] / "shared" / "seed" / "homework4_report.md"
DEFAULTS = dict(
    arch="resnet18",
    weights="IMAGENET1K_V1",
    mode="finetune",
    out_features=2,
    train_repeat="1,3,1,1",
    eval_repeat="1,3,1,1",
)
STUDY = dict(data_fingerprint="f00d", data_source="/data/chest_xray", image_size=224, profile="report", epochs=30)


def world(rng, cells, n_seeds=3, seed_sd=0.01):
    """(trials, predictions, studies) of replicate cells [(study, params, accuracy)] on one test set,
    plus in every cell a search-phase trial and a failed one, which the claims must not use."""
    images = draw_images(rng)
    trials, preds, count = [], [], {}
    for study, params, acc in cells:
        start = count.get(study, 0)
        k = params.pop("n_seeds", n_seeds)
        correct = simulate(rng, images, k + 2, acc, seed_sd)
        correct[k] = True  # the search trial is perfect: it would show if it leaked in
        preds.append(frame_of(correct, images[0], study=study, start=start))
        source = params.get("weights", DEFAULTS["weights"]) if params.get("weights") != "none" else "none"
        for i in range(k + 2):
            trials.append(
                dict(
                    study=study,
                    number=start + i,
                    state="FAIL" if i == k + 1 else "COMPLETE",
                    phase="search" if i == k else "replicate",
                    train_seed=i,
                    weights_source=source,
                    **{**DEFAULTS, **params},
                )
            )
        count[study] = start + k + 2
    return pd.DataFrame(trials), pd.concat(preds, ignore_index=True), {s: dict(STUDY) for s in count}


def report_cells(table, acc=None):
    """Every cell the claims name, as (study, params, accuracy); accuracy 0.8 unless `acc` says."""
    seen = {}
    for r in table.to_dict("records"):
        if r["metric"] == "s_per_step":
            continue
        for side in ("a", "b"):
            key = (r[f"study_{side}"], r[f"cell_{side}"])
            seen[key] = (key[0], Cell.parse(key[1]).as_dict(), (acc or {}).get(key[0], 0.8))
    return list(seen.values())


@pytest.fixture(scope="module")
def report():
    """The report's claims, 4 seeds a cell, on a world where the frozen cells (taskC) are 8 points better
    (the report: 86.18% and 83.1% against 76.68% and 78.8%)."""
    table = claims.load()
    trials, preds, studies = world(np.random.default_rng(1), report_cells(table, {"taskC": 0.88}), n_seeds=4)
    return table, trials, preds, studies


def by_claim(out):
    return out.set_index("claim")


def test_every_report_claim_is_judged(report):
    table, trials, preds, studies = report
    out = claims.evaluate(table, trials, preds, studies)
    assert list(out.columns[: len(claims.COLUMNS)]) == claims.COLUMNS
    assert list(out.claim) == list(table.claim)
    assert list(table.claim) == ["1", "2a", "2b", "3a", "3b", "4a", "4b", "4c", "4d", "5a", "5b", "6"]
    assert set(out.verdict) <= {"supported", "contradicted", "inconclusive", "void"}
    o = by_claim(out)
    assert (o.loc[["4a", "4b", "4c", "4d"], "verdict"] == "supported").all()
    assert (o.loc[["4a", "4b", "4c", "4d"], "estimate"].between(0.05, 0.11)).all()
    assert (o.drop(["1"]).n_a == 4).all()  # only the COMPLETE replicates: no search, no failed trial
    assert o.loc["1", "verdict"] == "void" and "no throughput" in o.loc["1", "reason"]
    assert o.loc[["5a", "5b"], "margin"].eq(0.02).all() and o.loc[["2a", "6"], "margin"].isna().all()
    judged = out[out.verdict != "void"]
    assert judged.p_holm.to_numpy() == pytest.approx(statistics.holm(judged.p.to_numpy()))
    assert out[out.verdict == "void"][["p", "p_holm"]].isna().all(axis=None)
    assert (judged.p_holm >= judged.p).all()


def test_direction_decides_between_supported_and_contradicted():
    rng = np.random.default_rng(2)
    e = lambda o: dict(out_features=o)
    trials, preds, studies = world(rng, [("taskE", e(2), 0.80), ("taskE", e(6), 0.72)], n_seeds=4)
    rows = pd.DataFrame(
        [
            dict(
                claim=c,
                group="9",
                study_a="taskE",
                cell_a="out_features=6",
                study_b="taskE",
                cell_b="out_features=2",
                metric="acc",
                direction=d,
                about="",
            )
            for c, d in (("up", "greater"), ("down", "less"), ("same", "equivalent"))
        ]
    )
    o = by_claim(claims.evaluate(rows, trials, preds, studies))
    assert o.verdict.to_dict() == {"up": "contradicted", "down": "supported", "same": "contradicted"}


def test_throughput_claim_uses_one_common_setting():
    table = claims.load()
    rng = np.random.default_rng(3)

    def run(arch, mean, n, device="cuda"):
        return pd.DataFrame(
            dict(
                arch=arch,
                device=device,
                batch_size=32,
                image_size=224,
                repeat="1,3,1,1",
                run=range(n),
                s_per_step=rng.normal(mean, 0.003, n),
            )
        )

    # Two replicates of each architecture, the four trials two at a time.
    t0 = pd.Timestamp("2026-12-01 10:00")
    at = lambda m: t0 + pd.Timedelta(minutes=m)  # noqa: E731
    replicates = pd.DataFrame(
        dict(
            study="taskA",
            number=range(4),
            state="COMPLETE",
            phase="replicate",
            arch=["resnet101", "resnext50_32x4d"] * 2,
            weights="none",
            mode="finetune",
            wall_s=[600.0, 500.0, 620.0, 480.0],
            device="cuda:0",
            datetime_start=[at(0), at(0), at(11), at(11)],
            datetime_complete=[at(10), at(9), at(21), at(19)],
        )
    )

    timed = pd.concat(
        [
            run("resnet101", 0.120, 5),
            run("resnext50_32x4d", 0.100, 5),
            run("resnet101", 1.0, 1, "cpu"),
            run("resnext50_32x4d", 2.0, 3, "cpu"),
        ]
    )
    out = by_claim(
        claims.evaluate(
            table[table.claim == "1"],
            replicates,
            pd.DataFrame(columns=["study", "number", "checkpoint"]),
            {"taskA": dict(STUDY)},
            throughput=timed,
        )
    )
    assert out.loc["1", "verdict"] == "supported" and "device=cuda" in out.loc["1", "reason"]
    assert out.loc["1", "estimate"] == pytest.approx(0.02, abs=0.006)
    assert "5 rounds of interleaved timed runs, paired" in out.loc["1", "reason"]
    assert "median 610.0 s over 2 replicates on cuda:0, 2 trial(s) at once" in out.loc["1", "reason"]
    only_one = timed[(timed.arch != "resnet101") | (timed.index == 0)]
    out = by_claim(
        claims.evaluate(
            table[table.claim == "1"],
            pd.DataFrame(columns=["study"]),
            pd.DataFrame(columns=["study", "number", "checkpoint"]),
            {"taskA": dict(STUDY)},
            throughput=only_one,
        )
    )
    assert out.loc["1", "verdict"] == "void" and "at least 2 rounds of timed runs" in out.loc["1", "reason"]


def _fallback(trials, preds, studies):
    source = np.where(trials.study == "taskC", "random-fallback", trials.weights_source)
    return trials.assign(weights_source=source), preds, studies


def _phantom(trials, preds, studies):
    return trials, preds, {s: {**v, "data_source": "phantom(seed=0)"} for s, v in studies.items()}


def _size(trials, preds, studies):
    return trials, preds, {**studies, "taskC": {**studies["taskC"], "image_size": 64}}


def _one_seed(trials, preds, studies):
    keep = (trials.study != "taskA") | ~trials.train_seed.isin([1, 2, 3])
    return trials[keep], preds, studies  # taskA's cells keep one replicate (seed 0) and their search trial


def _not_run(trials, preds, studies):
    return (
        trials[trials.study != "taskA"],
        preds[preds.study != "taskA"],
        {k: v for k, v in studies.items() if k != "taskA"},
    )


@pytest.mark.parametrize(
    "change,void,kept,why",
    [
        (_fallback, ["4a", "4b", "4c", "4d"], ["2a", "3a", "6"], "random-fallback"),
        (_phantom, ["2a", "2b", "3a", "3b", "4a", "4d"], ["5a", "5b", "6"], claims.PHANTOM),
        (_size, ["4a", "4b", "4c", "4d"], ["2a", "3b", "6"], "differ in image_size (64 vs 224)"),
        (_one_seed, ["2a", "2b"], ["3a", "4a", "6"], "1 complete replicate(s)"),
        (_not_run, ["2a", "2b"], ["3a", "4a", "6"], "study taskA not run"),
    ],
)
def test_void_rules(report, change, void, kept, why):
    table, *data = report
    o = by_claim(claims.evaluate(table, *change(*data)))
    for c in void:
        assert o.loc[c, "verdict"] == "void" and why in o.loc[c, "reason"], (c, o.loc[c, "reason"])
        assert np.isnan(o.loc[c, "p"]) and np.isnan(o.loc[c, "p_holm"])
    assert (o.loc[kept, "verdict"] != "void").all(), o.loc[kept, "reason"]


def test_a_new_row_of_claims_csv_is_judged_without_code(report, tmp_path):
    table, trials, preds, studies = report
    extra = dict(
        claim="7",
        group="7",
        sentence_zh="",
        gloss_en="out_features 10 beats 6 in balanced accuracy",
        study_a="taskE",
        cell_a="out_features=10;train_repeat=1,3,1,1;eval_repeat=1,3,1,1",
        study_b="taskE",
        cell_b="out_features=6;train_repeat=1,3,1,1;eval_repeat=1,3,1,1",
        metric="balanced_acc",
        direction="greater",
        about="",
        report_a="",
        report_b="",
    )
    path = tmp_path / "claims.csv"
    pd.concat([table, pd.DataFrame([extra])]).to_csv(path, index=False)
    o = by_claim(claims.evaluate(claims.load(path), trials, preds, studies))
    assert len(o) == len(table) + 1
    assert o.loc["7", "verdict"] in ("supported", "contradicted", "inconclusive")
    assert o.loc["7", "metric"] == "balanced_acc" and o.loc["7", "n_a"] == 4 and np.isfinite(o.loc["7", "p_holm"])


def test_verdict_false_positive_rate_under_the_null():
    """200 evaluations of one directional claim between cells of equal accuracy (3-5 seeds, seed sd 1-2 points)."""
    rng = np.random.default_rng(4)
    row = pd.DataFrame(
        [
            dict(
                claim="x",
                study_a="taskE",
                cell_a="out_features=6",
                study_b="taskE",
                cell_b="out_features=2",
                metric="acc",
                direction="greater",
                about="",
            )
        ]
    )
    verdicts = []
    for i in range(200):
        cells = [("taskE", dict(out_features=2), 0.8), ("taskE", dict(out_features=6), 0.8)]
        trials, preds, studies = world(rng, cells, n_seeds=3 + i % 3, seed_sd=(0.01, 0.02)[i % 2])
        verdicts.append(claims.evaluate(row, trials, preds, studies).verdict.iloc[0])
    rate = np.mean([v in ("supported", "contradicted") for v in verdicts])
    print(f"\nverdict false-positive rate over 200 null claims: {rate:.3f} +- {np.sqrt(0.05 * 0.95 / 200):.3f}")
    assert rate <= mc_bound(0.05, 200) and "void" not in verdicts


@pytest.mark.skipif(not REPORT.is_file(), reason="the course report is not beside the repository")
def test_sentences_are_quoted_from_the_report():
    text = REPORT.read_text(encoding="utf-8").replace("\\_", "_")  # the report's Markdown escapes
    for r in claims.load().to_dict("records"):
        assert r["sentence_zh"] in text, r["claim"]


def test_transfer_claims_are_void_without_a_weights_source(report):
    """Trials that do not record their weights cannot tell pretrained from random-init ones."""
    table, trials, preds, studies = report
    o = by_claim(claims.evaluate(table, trials.drop(columns="weights_source"), preds, studies))
    transfer = table[table.about == "transfer"].claim
    assert len(transfer) and (o.loc[transfer, "verdict"] == "void").all()
    assert o.loc[transfer, "reason"].str.contains(claims.NO_SOURCE, regex=False).all()
    assert (o.loc[table[table.about != "transfer"].claim.drop(0, errors="ignore"), "verdict"] != "void").any()


def test_each_verdict_states_what_it_rests_on(report):
    table, trials, preds, studies = report
    o = by_claim(claims.evaluate(table, *_phantom(trials, preds, studies)))
    kept = o[o.verdict != "void"].drop(index="1", errors="ignore")
    assert len(kept) and kept.reason.str.contains("on the synthetic phantom, not X-rays", regex=False).all()
    assert kept.data_source.str.startswith("phantom").all()
    assert kept.p_better.between(0, 1).all() and (kept.mde > 0).all()
    assert (kept.n_a == 4).all() and (kept.failed_a == 1).all() and kept.reason.str.contains("1 failed in a").all()


def test_a_replicate_that_collapsed_to_one_class_is_set_apart_and_counted(report):
    table, trials, preds, studies = report
    row = table[table.claim == "6"]
    study, cell = row.study_a.iloc[0], Cell.parse(row.cell_a.iloc[0]).as_dict()
    numbers = claims.select(trials[(trials.study == study) & (trials.phase == "replicate")], cell)[0].number
    first = (preds.study == study) & (preds.number == numbers.min())
    o = by_claim(claims.evaluate(row, trials, preds.assign(pred=preds.pred.where(~first, 1)), studies))
    assert o.loc["6", "collapsed_a"] == 1 and o.loc["6", "n_a"] == 3 and o.loc["6", "collapsed_b"] == 0
    assert "1 collapsed to one class in a" in o.loc["6", "reason"]


def test_equivalence_is_judged_at_the_adjusted_level_like_the_others():
    """An equivalence claim is contradicted only when its Holm-adjusted p is below alpha: an
    unadjusted p_outside of 0.01 in a family whose adjustment lifts it to 0.08 decides nothing."""
    r = dict(void=False, direction="equivalent", p_tost=0.6, p_outside=0.01, p_holm=0.08, estimate=0.04)
    assert claims._verdict(r, 0.05) == "inconclusive"
    assert claims._verdict({**r, "p_holm": 0.03}, 0.05) == "contradicted"
    assert claims._verdict({**r, "p_tost": 0.001, "p_outside": 0.9, "p_holm": 0.003}, 0.05) == "supported"


def test_a_claim_an_earlier_look_decided_keeps_its_verdict_and_leaves_the_family(report):
    table, trials, preds, studies = report
    o = by_claim(claims.evaluate(table, trials, preds, studies, decided={"6": ("contradicted", 3)}, look=4))
    assert o.loc["6", "verdict"] == "contradicted" and o.loc["6", "look"] == 3
    assert "decided at look 3" in o.loc["6", "reason"] and np.isnan(o.loc["6", "p_holm"])
    rest = o.drop(index="6")
    assert rest.verdict.isin(["supported", "contradicted", "inconclusive", "void"]).all(), rest.verdict.to_dict()
    assert (rest[rest.verdict != "void"].look == 4).all()
