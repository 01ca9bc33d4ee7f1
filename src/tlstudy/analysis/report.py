"""The analysis of stored studies: REPORT.md and its CSV files under results/<space>/.

`write_report(studies, space, out_dir)` reads the Optuna studies (and each trial's per-image
predictions), builds the tables (tlstudy.analysis.tables), judges the report's claims
(tlstudy.analysis.claims, on reference/claims.csv) and writes one page that says what the
design can and cannot show: the seeds, the budget per cell, the pruning rule, the margin and
alpha, the data and whether the weights were real.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from tlstudy import spaces
from tlstudy.analysis import claims as tlclaims
from tlstudy.analysis import export, kept, plots, reference, sequential, tables
from tlstudy.analysis.page import Page
from tlstudy.analysis.tables import markdown
from tlstudy.errors import UserError
from tlstudy.names import (
    BASE_CONFIG,
    DATA,
    DESIGN,
    PHASE,
    RANDOM_FALLBACK,
    ROUNDS,
    SPACE,
    THROUGHPUT,
    TRAIN_SEED,
    WEIGHTS_SOURCE,
)
from tlstudy.settings import StudySettings
from tlstudy.study import keep
from tlstudy.study.storage import display_url, open_storage

REPORT_TASKS = ("taskA", "taskB", "taskC", "taskE")


def study_frames(study, space=None, artifact_dir=None):
    """(space, per-trial frame, per-epoch frame, predictions) of one stored study."""
    # A study run from a space file path stores only its name: the caller passes the loaded space.
    space = space or spaces.load(study.user_attrs.get(SPACE, study.study_name))
    trials = export.trials_frame(study, space.fixed)
    epochs = export.epochs_frame(study)
    planned = study.user_attrs.get(BASE_CONFIG, {}).get("epochs")
    per_trial = tables.trial_figures(trials, epochs, planned) if len(trials) else trials
    preds = export.predictions_frame(study, artifact_dir) if artifact_dir and Path(artifact_dir).is_dir() else None
    return space, per_trial, epochs, preds


def study_meta(study):
    """What makes two studies comparable, for the claims' void rules."""
    data, design = study.user_attrs.get(DATA, {}), study.user_attrs.get(DESIGN, {})
    return dict(
        data_fingerprint=data.get("data_fingerprint"),
        data_source=data.get("data_source", ""),
        image_size=data.get("image_size"),
        epochs=study.user_attrs.get(BASE_CONFIG, {}).get("epochs"),
        profile=json.dumps(design.get("profile", {}), sort_keys=True),
    )


def claim_inputs(storage: Any, current: dict, results: Path) -> dict:
    """tlclaims.evaluate's data (trials, predictions, studies, throughput, groups) from the report's
    tasks stored beside the current studies; groups: each task's test images' patients (splits.csv)."""
    trials, preds, meta, speed, groups = [], [], {}, [], {}
    names = set(optuna.get_all_study_names(storage))
    for task in REPORT_TASKS:
        if task in current:
            study, (_, per_trial, _, p) = current[task]
        elif task in names:
            study = optuna.load_study(study_name=task, storage=storage)
            _, per_trial, _, p = study_frames(study, artifact_dir=results / "artifacts")
        else:
            continue
        meta[task] = study_meta(study)
        speed += study.user_attrs.get(THROUGHPUT, [])
        if len(per_trial):
            trials.append(per_trial.assign(study=task))
        if p is not None and len(p):
            preds.append(p.assign(study=task))
        groups[task] = patients(results / task / "splits.csv")
    frame = lambda fs, cols: pd.concat(fs, ignore_index=True) if fs else pd.DataFrame(columns=cols)  # noqa: E731
    return dict(
        trials=frame(trials, ["study", "number", "state", PHASE, TRAIN_SEED, WEIGHTS_SOURCE]),
        predictions=frame(preds, export.PREDICTION_COLUMNS),
        studies=meta,
        throughput=pd.DataFrame(speed) if speed else None,
        groups=groups,
    )


def patients(manifest: Path) -> dict | None:
    """Test image id -> patient, from a study's split manifest (None without one)."""
    if not manifest.is_file():
        return None
    m = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    test = m[m.split == "test"]
    return dict(zip(test.id, test.group))


def judge(storage: Any, current: dict, results: Path, margin: float, alpha: float, rounds: dict | None = None):
    """The claims judged on the stored studies: at `alpha`, or, for a study run with --seeds auto,
    at its latest look's level, with the claims earlier looks decided kept as decided."""
    level, decided, look = sequential.current(rounds, alpha)
    inputs = claim_inputs(storage, current, results)
    return tlclaims.evaluate(tlclaims.load(), **inputs, margin=margin, alpha=level, decided=decided, look=look)


def importances(study):
    """Optuna's fANOVA importances of the parameters over the completed trials."""
    try:
        imp = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
        )
    except (ValueError, RuntimeError) as e:
        return pd.DataFrame(), f"not computed: {e}"
    return pd.DataFrame({"parameter": list(imp), "importance": [round(v, 3) for v in imp.values()]}), ""


def write_report(
    studies: list, space: spaces.Space, out_dir: str | Path, margin: float = 0.02, alpha: float = 0.05
) -> dict:
    """Write the analysis of `studies` (one study, or taskD's compared studies) under out_dir.
    Returns {name: path} of what was written, and the cell table's Markdown under "table"."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write the analysis to {out}: {e.strerror}") from None
    artifacts = out.parent / "artifacts"
    storage = studies[0]._storage  # Optuna has no public getter for a loaded study's storage
    current = {}
    for st in studies:
        frames = study_frames(st, None if space.compare else space, artifacts)
        current[frames[0].name] = (st, frames)
    tasks = list(current)
    per_trial = pd.concat([f[1].assign(task=name) for name, (_, f) in current.items()], ignore_index=True)
    epochs = pd.concat([f[2].assign(task=name) for name, (_, f) in current.items()], ignore_index=True)
    found = [f[3] for _, f in current.values() if f[3] is not None]
    preds = pd.concat(found, ignore_index=True) if found else None
    if per_trial.empty:
        raise UserError(f"study {studies[0].study_name!r} has no trials yet: run tlstudy run --space {space.name}")
    axes = [a for a in (["arch", "weights", "task"] if space.compare else space.axes) if a in per_trial]
    rows = tables.cell_rows(per_trial, axes, preds)
    shown = tables.format_cells(rows, axes)
    ref = reference.reference()
    rebuilt = reference.report_tables(rows, ref, tasks, axes) if len(ref) else {}
    beside = reference.side_by_side(rows, ref, tasks, axes) if len(ref) else pd.DataFrame()
    work = tables.show_your_work(per_trial, axes)
    rounds = next((st.user_attrs[ROUNDS] for st in studies if st.user_attrs.get(ROUNDS)), None)
    judged = judge(storage, current, out.parent, margin, alpha, rounds)
    image_size = studies[0].user_attrs.get(DATA, {}).get("image_size") or 224
    arch_table = reference.architecture_table(per_trial, image_size)
    imp, imp_note = (pd.DataFrame(), "not computed for a comparison") if space.compare else importances(studies[0])

    paths = {
        k: out / v
        for k, v in dict(
            cells="cells.csv",
            cells_md="cells.md",
            architectures="architectures.csv",
            claims="claims.csv",
            report_vs_study="report_vs_study.csv",
            importances="importances.csv",
            show_your_work="show_your_work.csv",
            curves="learning_curves.png",
            test_acc="test_accuracy.png",
            val_vs_test="val_vs_test.png",
            expected_best="show_your_work.png",
            forest="claims_forest.png",
            report="REPORT.md",
        ).items()
    }
    try:
        rows.to_csv(paths["cells"], index=False)
        paths["cells_md"].write_text(markdown(shown) + "\n")
        arch_table.to_csv(paths["architectures"], index=False)
        judged[tlclaims.COLUMNS].to_csv(paths["claims"], index=False)
        beside.to_csv(paths["report_vs_study"], index=False)
        imp.to_csv(paths["importances"], index=False)
        work.to_csv(paths["show_your_work"], index=False)
        for n, (_, mine) in rebuilt.items():
            paths[f"table{n}"] = out / f"table{n}.csv"
            mine.to_csv(paths[f"table{n}"], index=False)
        plots.learning_curves(per_trial, epochs, axes, paths["curves"])
        plots.test_accuracy(rows.assign(cell=shown.cell), paths["test_acc"])
        plots.val_vs_test(per_trial, paths["val_vs_test"])
        plots.show_your_work(work, paths["expected_best"])
        plots.forest(judged, paths["forest"])
        page = Page(studies, space, tasks, per_trial, margin, alpha)
        if not space.compare:  # the kept models, their commands and the best one's Grad-CAM panel
            page.kept = kept.section(studies[0], space.name, out, artifacts)
        paths["report"].write_text(page.render(shown, rows, arch_table, rebuilt, beside, work, judged, imp, imp_note))
    except OSError as e:
        raise UserError(f"cannot write the analysis to {out}: {e.strerror}") from None
    paths["table"] = markdown(shown)
    return paths


def report_run(study: Any, space: spaces.Space, settings: StudySettings, trials: pd.DataFrame, paths: dict) -> None:
    """After a run, with its exports written (trials, paths: tlstudy.analysis.export.write): REPORT.md,
    and what they say, on the console."""
    results = Path(settings.results)
    states = trials.state.value_counts().to_dict() if len(trials) else {}
    print(f"\n{study.study_name}: {len(trials)} trials: " + ", ".join(f"{v} {k}" for k, v in states.items()))
    fallback = int((trials.get(WEIGHTS_SOURCE) == RANDOM_FALLBACK).sum()) if len(trials) else 0
    if fallback:
        print(
            f"WARNING: {fallback} trials trained from a RANDOM init: their pretrained weights were missing "
            f"(weights_source={RANDOM_FALLBACK}). Transfer and V1/V2 claims are void."
        )
    if len(trials):
        written = write_report(
            [study], space, results / settings.study_name, margin=settings.margin, alpha=settings.alpha
        )
        print(f"\n{space.name}: each cell's best trial (test accuracy at its best-val checkpoint)")
        print(written["table"])
        print(f"report: {written['report']}")
    print("exports: " + ", ".join(str(p) for p in paths.values()))
    models = keep.links(study)
    if models:
        files = ", ".join(f"{results / 'artifacts' / m['artifact_id']} (trial {n})" for n, m in sorted(models.items()))
        print(f"kept models: {files}; use one: tlstudy predict FILE IMAGES (tlstudy export-model copies one out)")
    print(f"browse: optuna-dashboard {display_url(settings.storage)} --artifact-dir {results / 'artifacts'}")


def report_compared(space: spaces.Space, settings: StudySettings) -> int:
    """Task D: the report on the compared studies, as they are stored (tlstudy analyze does the same)."""
    store = open_storage(settings.storage)
    studies = [optuna.load_study(study_name=name, storage=store) for name in space.compare]
    paths = write_report(studies, space, Path(settings.results) / space.name, settings.margin, settings.alpha)
    print(f"\n{space.name}: {paths.pop('table')}\nreport: {paths['report']}")
    return 0
