"""The report's tables, statistics, claims and plots, rebuilt from a stored study.

`analyze(study, space, out_dir)` reads the Optuna study and its per-epoch export and
writes under out_dir (results/<space>/): the architecture table (the report's Table 1),
the cell table with the report's columns, the report's own tables rebuilt (Tables 8 and 9
for taskE), the report's numbers beside this study's (results/reference/homework4.csv),
the report's claims checked, parameter importances, three plots, and REPORT.md.

A cell's row is its best COMPLETE trial by val loss (the trial's value). Pruned trials
are drawn in the learning curves but are a cell's row only when no trial of the cell
completed; they have no test figures. Test accuracy always comes from the best-val
checkpoint (test_best_*), with a 95 % bootstrap interval from its correct/total counts.
"""
import json
import shlex
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from tlstudy import export, plots, resources, spaces
from tlstudy.errors import UserError

REFERENCE = resources.reference_dir() / "homework4.csv"
REPORT_TASKS = ("taskA", "taskB", "taskC", "taskE")
CELL_KEYS = ("task", "arch", "weights", "mode", "out_features", "train_repeat", "eval_repeat")
COLUMNS = ("Final Train Loss", "Best Train acc", "Final Val Loss", "Best Val acc", "Best Val Loss (epoch)",
           "Test acc, best-val ckpt [95% CI]", "Time")
N_BOOT = 10_000
ROW_FIELDS = ["n", "complete", "pruned", "failed", "trial", "trial_state", "final_train_loss", "best_train_acc",
              "final_val_loss", "best_val_acc", "best_val_loss", "best_epoch", "epochs", "val_acc_at_best", "time_s",
              "mean_epoch_s", "test_acc", "test_ci_low", "test_ci_high", "test_n", "val_test_gap", "n_mean",
              "test_acc_mean", "test_acc_sd", "best_val_loss_mean", "best_val_loss_sd"]


# ---------------------------------------------------------------- per trial and per cell

def trial_figures(trials, epochs, planned_epochs):
    """One row per trial: the report's figures from its per-epoch history (so pruned trials
    have them too), joined to its state, parameters and test counts."""
    if epochs.empty:  # no trial got through an epoch: the figures are all missing
        epochs = pd.DataFrame(columns=["number", "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "epoch_s"],
                              dtype=float)
    ep = epochs.sort_values(["number", "epoch"])
    g = ep.groupby("number")
    finite = ep[np.isfinite(ep.val_loss)]
    best = finite.loc[finite.groupby("number").val_loss.idxmin()].set_index("number")
    figs = pd.DataFrame({
        "final_train_loss": g.train_loss.last(), "best_train_acc": g.train_acc.max(),
        "final_val_loss": g.val_loss.last(), "best_val_acc": g.val_acc.max(),
        "best_val_loss": best.val_loss, "best_epoch": best.epoch, "val_acc_at_best": best.val_acc,
        "epochs_run": g.epoch.max(), "train_s": g.epoch_s.sum(), "mean_epoch_s": g.epoch_s.mean(),
    })
    trials = trials.drop(columns=[c for c in figs.columns if c in trials.columns])
    out = trials.merge(figs, left_on="number", right_index=True, how="left")
    out["planned_epochs"] = planned_epochs
    # A finished trial's wall time includes start-up and testing; a pruned one has only its epochs.
    out["time_s"] = out["wall_s"] if "wall_s" in out else np.nan
    out["time_s"] = out.time_s.fillna(out.train_s)
    return out


def bootstrap_ci(correct, total, level=0.95, n_boot=N_BOOT, seed=0):
    """Percentile bootstrap interval of an accuracy of correct/total. Resampling `total`
    per-image outcomes with replacement makes the resampled count Binomial(total, correct/total),
    so the bootstrap distribution is drawn directly from it."""
    if not total or not np.isfinite(total):
        return (np.nan, np.nan)
    draws = np.random.default_rng(seed).binomial(int(total), correct / total, n_boot) / total
    tail = (1 - level) / 2 * 100
    return tuple(float(v) for v in np.percentile(draws, [tail, 100 - tail]))


def mean_ci(values, level=0.95, n_boot=N_BOOT, seed=0):
    """A mean and its percentile bootstrap interval."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return (np.nan, np.nan, np.nan)
    means = np.random.default_rng(seed).choice(v, (n_boot, len(v))).mean(1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return (float(v.mean()), float(lo), float(hi))


def cell_rows(per_trial, axes):
    """One row per cell: counts, the cell's best trial's figures with a test interval,
    the val-test gap, and mean +- sd over the cell's completed trials."""
    rows = []
    axes = [a for a in axes if a in per_trial]
    groups = per_trial.groupby(axes, sort=True, dropna=False) if axes else [((), per_trial)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        done = g[g.state == "COMPLETE"]
        pool = done if len(done) else g[g.state == "PRUNED"]
        pool = pool[pool.best_val_loss.notna()]
        row = {**dict(zip(axes, key)), "n": len(g), "complete": len(done),
               "pruned": int((g.state == "PRUNED").sum()), "failed": int((g.state == "FAIL").sum())}
        if len(pool):
            b = pool.loc[pool.best_val_loss.idxmin()]
            row.update(trial=int(b.number), trial_state=b.state,
                       **{k: b[k] for k in ("final_train_loss", "best_train_acc", "final_val_loss", "best_val_acc",
                                            "best_val_loss", "val_acc_at_best", "time_s", "mean_epoch_s")},
                       best_epoch=int(b.best_epoch), epochs=int(b.planned_epochs))
            if b.state == "COMPLETE":
                correct, total = b.get("test_best_correct"), b.get("test_best_total")
                lo, hi = bootstrap_ci(correct, total)
                row.update(test_acc=b.test_best_acc, test_ci_low=lo, test_ci_high=hi, test_n=total,
                           val_test_gap=b.val_acc_at_best - b.test_best_acc)
        if len(done) >= 2:
            row.update(n_mean=len(done), test_acc_mean=done.test_best_acc.mean(), test_acc_sd=done.test_best_acc.std(),
                       best_val_loss_mean=done.best_val_loss.mean(), best_val_loss_sd=done.best_val_loss.std())
        rows.append(row)
    return pd.DataFrame(rows, columns=axes + ROW_FIELDS)


# ---------------------------------------------------------------- formatting

def label(row, axes):
    return ", ".join(f"{k}={row[k]}" for k in axes)


def _pct(v):
    return "" if pd.isna(v) else f"{v:.2%}"


def _num(v):
    return "" if pd.isna(v) else f"{v:.4g}"


def _clock(s):
    return "" if pd.isna(s) else f"{int(s // 60)}:{int(round(s % 60)):02d}"


def report_columns(r):
    """The report's columns for one row (of this study or of the reference), as text."""
    test = _pct(r.get("test_acc"))
    if test and not pd.isna(r.get("test_ci_low", np.nan)):
        test += f" [{r['test_ci_low']:.1%}, {r['test_ci_high']:.1%}]"
    epoch = "" if pd.isna(r.get("best_epoch")) else f"Epoch {int(r['best_epoch'])}/{int(r['epochs'])} ({_num(r['best_val_loss'])})"
    return dict(zip(COLUMNS, (_num(r.get("final_train_loss")), _pct(r.get("best_train_acc")),
                              _num(r.get("final_val_loss")), _pct(r.get("best_val_acc")), epoch, test,
                              _clock(r.get("time_s", np.nan)))))


def format_cells(rows, axes):
    """The cell table as shown: the report's columns plus trial, counts and mean +- sd."""
    out = []
    for r in rows.to_dict("records"):  # not iterrows: it would turn the integers into floats
        row = {"cell": label(r, axes), **report_columns(r)}
        if not pd.isna(r.get("trial", np.nan)):
            row["trial"] = f"#{int(r['trial'])}" + (" (pruned: no test)" if r["trial_state"] == "PRUNED" else "")
        else:
            row["trial"] = "none finished"
        row["val-test gap"] = "" if pd.isna(r.get("val_test_gap", np.nan)) else f"{r['val_test_gap']:+.1%}"
        row["trials (done/pruned/failed)"] = f"{r['complete']}/{r['pruned']}/{r['failed']}"
        if not pd.isna(r.get("test_acc_mean", np.nan)):
            row["Test acc mean ± sd (n)"] = f"{r['test_acc_mean']:.2%} ± {r['test_acc_sd']:.2%} (n={int(r['n_mean'])})"
        out.append(row)
    return pd.DataFrame(out)


def markdown(df):
    return df.to_markdown(index=False) if len(df) else "(no rows)"


# ---------------------------------------------------------------- the architecture table

def architecture_table(per_trial, image_size):
    """Table 1 from the model objects: stages, blocks per stage, convolutions per block,
    parameters and forward GFLOPs at the study's input size (torch's FLOP counter, 2 per
    multiply-add; built on the meta device, so nothing is computed), with the measured
    mean seconds per epoch over all of the study's epochs of that architecture."""
    rows = []
    for arch in sorted(per_trial.arch.dropna().unique()):
        with torch.device("meta"):
            model = torchvision.models.get_model(arch, num_classes=2).eval()
        stages = [getattr(model, f"layer{i}") for i in range(1, 5) if hasattr(model, f"layer{i}")]
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, image_size, image_size, device="meta"))
        times = per_trial.loc[per_trial.arch == arch, "mean_epoch_s"].dropna()
        rows.append({
            "arch": arch, "stages": len(stages),
            "blocks per stage": "=>".join(str(len(s)) for s in stages),
            "convs per block": sum(isinstance(c, torch.nn.Conv2d) for c in stages[0][0].children()) if stages else None,
            "parameters (M)": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            f"GFLOPs at {image_size} px": round(counter.get_total_flops() / 1e9, 3),
            "s/epoch (mean over trials)": round(times.mean(), 2) if len(times) else None,
            "trials": len(times),
        })
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- the report's claims

def _interval(r):
    return (r["test_acc"], r["test_ci_low"], r["test_ci_high"])


def _txt(name, iv):
    return f"{name} {iv[0]:.1%} [{iv[1]:.1%}, {iv[2]:.1%}]"


def compare(a, b):
    """Verdict on "a is higher than b" for two (point, low, high) intervals."""
    if a[1] > b[2]:
        return "supported"
    if a[2] < b[1]:
        return "contradicted"
    return "not resolved"


def combine(verdicts):
    if not verdicts:
        return "no data"
    if all(v == "supported" for v in verdicts):
        return "supported"
    return "contradicted" if "contradicted" in verdicts else "not resolved"


def find_cell(cells, task, **values):
    """The row of `task`'s cell with these values, if it has test figures."""
    t = cells.get(task)
    if t is None or t.empty:
        return None
    mask = pd.Series(True, index=t.index)
    for k, v in values.items():
        if k not in t:
            return None
        mask &= t[k].astype(str) == str(v)
    hit = t[mask]
    hit = hit[hit.test_acc.notna()] if "test_acc" in hit else hit.iloc[0:0]
    return hit.iloc[0] if len(hit) else None


def check_claims(cells, epoch_times):
    """The report's six claims, each with this study's verdict and the numbers behind it.
    cells: task -> cell rows; epoch_times: task -> per-epoch frame (arch, epoch_s).
    Interval rule: supported when the intervals do not overlap in the claimed direction,
    contradicted when they do not overlap the other way, not resolved when they overlap."""
    archs = ("resnext50_32x4d", "resnet101")
    out = []

    def add(claim, needs, parts):
        verdicts = [v for v, _ in parts]
        evidence = "; ".join(e for _, e in parts) or (f"no completed trial in a cell this needs (not run, or pruned): "
                                                      f"run {needs}, with --samples-per-cell 2 or --pruner none")
        out.append({"claim": claim, "verdict": combine(verdicts), "evidence": evidence})

    # 1. Time per epoch, within one task so that mode and data are the same.
    parts = []
    for task, t in epoch_times.items():
        if set(archs) <= set(t.arch):
            ivs = {a: mean_ci(t.loc[t.arch == a, "epoch_s"]) for a in archs}
            n = {a: int((t.arch == a).sum()) for a in archs}
            parts = [(compare(ivs["resnet101"], ivs["resnext50_32x4d"]),
                      f"{task}, {n['resnet101']} and {n['resnext50_32x4d']} epochs: s/epoch resnet101 {ivs['resnet101'][0]:.2f} [{ivs['resnet101'][1]:.2f}, "
                      f"{ivs['resnet101'][2]:.2f}] vs resnext50_32x4d {ivs['resnext50_32x4d'][0]:.2f} "
                      f"[{ivs['resnext50_32x4d'][1]:.2f}, {ivs['resnext50_32x4d'][2]:.2f}]")]
            break
    add("1. resnet101 takes longer per epoch than resnext50_32x4d (report: 17 vs 15 min).", "taskA", parts)

    def pairs(spec):
        """spec: (name, (task, cell values, label) claimed higher, (task, cell values, label) claimed lower)."""
        parts = []
        for name, (task_a, cell_a, name_a), (task_b, cell_b, name_b) in spec:
            a, b = find_cell(cells, task_a, **cell_a), find_cell(cells, task_b, **cell_b)
            if a is not None and b is not None:
                parts.append((compare(_interval(a), _interval(b)),
                              f"{name}: {_txt(name_a, _interval(a))} vs {_txt(name_b, _interval(b))}"))
        return parts

    add("2. Transfer learning raises test accuracy over training from scratch (B with V1 against A; "
        "report: +3.1 and +6.4 points).", "taskA and taskB",
        pairs([(a, ("taskB", dict(arch=a, weights="IMAGENET1K_V1"), "B"), ("taskA", dict(arch=a), "A"))
               for a in archs]))
    p = pairs([("resnext50_32x4d", ("taskB", dict(arch="resnext50_32x4d", weights="IMAGENET1K_V2"), "V2"),
                ("taskB", dict(arch="resnext50_32x4d", weights="IMAGENET1K_V1"), "V1")),
               ("resnet101", ("taskB", dict(arch="resnet101", weights="IMAGENET1K_V1"), "V1"),
                ("taskB", dict(arch="resnet101", weights="IMAGENET1K_V2"), "V2"))])
    add("3. V2 weights help resnext50_32x4d (report: 76.68% -> 80.68%) and hurt resnet101 (78.8% -> 76.4%) (B).",
        "taskB", p)
    add("4. The frozen feature extractor beats fine-tuning on test (C against B; report: 86.18% vs 76.68%, "
        "83.1% vs 78.8%).", "taskB and taskC",
        pairs([(f"{a} {w}", ("taskC", dict(arch=a, weights=w), "C"), ("taskB", dict(arch=a, weights=w), "B"))
               for a in archs for w in ("IMAGENET1K_V1", "IMAGENET1K_V2")]))
    same = dict(train_repeat="1,3,1,1", eval_repeat="1,3,1,1")
    # "Does not help" can only be supported by a significant loss; overlap leaves it unresolved.
    p = pairs([(f"out_features {o}", ("taskE", dict(out_features=2, **same), "2"),
                ("taskE", dict(out_features=o, **same), str(o))) for o in (6, 10)])
    add("5. Changing out_features (6 or 10 instead of 2) does not help (E; report: 75.75% and 76.5% vs 77.25%).",
        "taskE", p)
    add("6. Tiling only the training input, (1,3,3,1) for train and (1,3,1,1) for val, raises test accuracy "
        "(E; report: 80.5% vs 77.25%).", "taskE",
        pairs([("out_features 2", ("taskE", dict(out_features=2, train_repeat="1,3,3,1", eval_repeat="1,3,1,1"),
                                   "train-only tiling"), ("taskE", dict(out_features=2, **same), "no tiling"))]))
    return pd.DataFrame(out)


# ---------------------------------------------------------------- the report's numbers

def reference():
    if not REFERENCE.is_file():
        return pd.DataFrame()
    return pd.read_csv(REFERENCE, comment="#", dtype={"train_repeat": str, "eval_repeat": str})


def _match(rows, ref_row, keys):
    mask = pd.Series(True, index=rows.index)
    for k in keys:
        if k in rows and not pd.isna(ref_row.get(k)):
            mask &= rows[k].astype(str) == str(ref_row[k])
    return rows[mask]


def report_tables(rows, ref, tasks, axes):
    """The report's tables whose rows all come from `tasks`, rebuilt from this study's cells:
    {table number: (the report's rows as text, this study's rows as text)}."""
    out = {}
    for table, r in ref.groupby("table", sort=True):
        if set(r.task) != set(tasks):
            continue
        mine, theirs = [], []
        for _, ref_row in r.iterrows():
            hit = _match(rows, ref_row, [k for k in CELL_KEYS if k in axes])
            name = label(ref_row, axes)
            theirs.append({"cell": name, **report_columns(ref_row)})
            mine.append({"cell": name, **(report_columns(hit.iloc[0]) if len(hit) else {})})
        out[int(table)] = (pd.DataFrame(theirs), pd.DataFrame(mine))
    return out


def side_by_side(rows, ref, tasks, axes):
    """For each cell the report has: its row, then this study's row."""
    out, seen = [], set()
    for _, ref_row in ref[ref.task.isin(tasks)].iterrows():
        name = label(ref_row, axes)
        if name in seen:
            continue
        seen.add(name)
        hit = _match(rows, ref_row, [k for k in CELL_KEYS if k in axes])
        out.append({"cell": name, "source": "report", **report_columns(ref_row)})
        out.append({"cell": name, "source": "this study", **(report_columns(hit.iloc[0]) if len(hit) else {})})
    return pd.DataFrame(out)


# ---------------------------------------------------------------- the whole analysis

def study_frames(study, space=None):
    """(space, per-trial frame, per-epoch frame) of one stored study; trial rows carry the space's fixed settings."""
    # A study run from a space file path stores only its name: the caller passes the loaded space.
    space = space or spaces.load(study.user_attrs.get("space", study.study_name))
    trials = export.trials_frame(study, space.fixed)
    epochs = export.epochs_frame(study)
    planned = study.user_attrs.get("base_config", {}).get("epochs")
    return space, trial_figures(trials, epochs, planned) if len(trials) else trials, epochs


def related_cells(storage, current):
    """Cell rows of the report's tasks stored beside the current study, for the claims."""
    cells, times = {}, {}
    names = set(optuna.get_all_study_names(storage))
    for task in REPORT_TASKS:
        if task in current:
            space, per_trial, epochs = current[task]
        elif task in names:
            space, per_trial, epochs = study_frames(optuna.load_study(study_name=task, storage=storage))
        else:
            continue
        if len(per_trial):
            cells[task] = cell_rows(per_trial.assign(task=task), space.axes)
            if "arch" in per_trial and len(epochs):
                times[task] = epochs.merge(per_trial[["number", "arch"]], on="number")
    return cells, times


def importances(study):
    """Optuna's fANOVA importances of the searched parameters over completed trials."""
    try:
        imp = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (ValueError, RuntimeError) as e:
        return pd.DataFrame(), f"not computed: {e}"
    return pd.DataFrame({"parameter": list(imp), "importance": [round(v, 3) for v in imp.values()]}), ""


def analyze(studies, space, out_dir):
    """Write the analysis of `studies` (one study, or taskD's compared studies) under out_dir.
    Returns {name: path} of what was written, and the cell table's Markdown under "table"."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write the analysis to {out}: {e.strerror}") from None
    storage = studies[0]._storage
    current = {}
    for st in studies:
        sp, per_trial, epochs = study_frames(st, None if space.compare else space)
        current[sp.name] = (sp, per_trial.assign(task=sp.name), epochs.assign(task=sp.name))
    tasks = list(current)
    per_trial = pd.concat([c[1] for c in current.values()], ignore_index=True)
    epochs = pd.concat([c[2] for c in current.values()], ignore_index=True)
    compared = bool(space.compare)
    if per_trial.empty:
        raise UserError(f"study {studies[0].study_name!r} has no trials yet: run study/run.py --space {space.name}")
    axes = [a for a in (["arch", "weights", "task"] if compared else space.axes) if a in per_trial]  # as trials have them
    rows = cell_rows(per_trial, axes)
    shown = format_cells(rows, axes)
    ref = reference()
    rebuilt = report_tables(rows, ref, tasks, axes) if len(ref) else {}
    beside = side_by_side(rows, ref, tasks, axes) if len(ref) else pd.DataFrame()
    cells, times = related_cells(storage, current)
    claims = check_claims(cells, times)
    image_size = studies[0].user_attrs.get("data", {}).get("image_size") or 224
    arch_table = architecture_table(per_trial, image_size)
    imp, imp_note = (pd.DataFrame(), "not computed for a comparison") if compared else importances(studies[0])

    paths = {"cells": out / "cells.csv", "cells_md": out / "cells.md", "architectures": out / "architectures.csv",
             "claims": out / "claims.csv", "report_vs_study": out / "report_vs_study.csv",
             "importances": out / "importances.csv", "curves": out / "learning_curves.png",
             "test_acc": out / "test_accuracy.png", "val_vs_test": out / "val_vs_test.png",
             "report": out / "REPORT.md"}
    try:
        rows.to_csv(paths["cells"], index=False)
        paths["cells_md"].write_text(markdown(shown) + "\n")
        arch_table.to_csv(paths["architectures"], index=False)
        claims.to_csv(paths["claims"], index=False)
        beside.to_csv(paths["report_vs_study"], index=False)
        imp.to_csv(paths["importances"], index=False)
        for n, (theirs, mine) in rebuilt.items():
            paths[f"table{n}"] = out / f"table{n}.csv"
            mine.to_csv(paths[f"table{n}"], index=False)
        plots.learning_curves(per_trial, epochs, axes, paths["curves"])
        plots.test_accuracy(rows.assign(cell=shown.cell), paths["test_acc"])
        plots.val_vs_test(per_trial, paths["val_vs_test"])
        paths["report"].write_text(render(studies, space, tasks, shown, arch_table, rebuilt, beside, claims, imp,
                                          imp_note, per_trial, rows))
    except OSError as e:
        raise UserError(f"cannot write the analysis to {out}: {e.strerror}") from None
    paths["table"] = markdown(shown)
    return paths


def render(studies, space, tasks, shown, arch_table, rebuilt, beside, claims, imp, imp_note, per_trial, rows):
    """REPORT.md: everything on one page, for GitHub."""
    first = studies[0]
    data = first.user_attrs.get("data", {})
    source = data.get("data_source", "?")
    devices = ", ".join(sorted(per_trial.device.dropna().astype(str).unique())) if "device" in per_trial else "?"
    fallback = int((per_trial.get("weights_source") == "random-fallback").sum()) if "weights_source" in per_trial else 0
    phantom = str(source).startswith("phantom")
    lines = [f"# {space.name}: {space.description}", ""]
    lines += [("> **Data: the synthetic phantom** (`tlstudy.phantom`), not the Kermany chest X-rays. It cannot "
               "reproduce the report's numbers, only the shape of its findings; run with `--data "
               "path/to/chest_xray` for real figures.") if phantom else f"> **Data:** `{source}`", ""]
    if fallback:
        lines += [f"> **{fallback} trials trained from a random init**: their pretrained weights were missing "
                  "(`weights_source=random-fallback`), so every weights and transfer-learning comparison is void.", ""]
    lines += ["| | |", "|---|---|",
              f"| studies | {', '.join(f'`{s.study_name}`' for s in studies)} ({len(per_trial)} trials) |",
              f"| data | {source}: train/val/test {data.get('n_train')}/{data.get('n_val')}/{data.get('n_test')} "
              f"at {data.get('image_size')} px{'; ' + data['val_note'] if data.get('val_note') else ''} |",
              "| profile | " + "<br>".join(f"{s.study_name}: `{json.dumps(s.user_attrs.get('base_config', {}))}`"
                                          for s in studies) + " |",
              f"| device | {devices} |",
              f"| produced by | `{first.user_attrs.get('command', 'python study/run.py --space ' + space.name)}`, then "
              f"`{'python study/analyze.py --space ' + shlex.quote(space.name)}` |", ""]
    lines += ["## Table 1: the architectures", "",
              "From the model objects (GFLOPs: one forward pass of one image, 2 FLOPs per multiply-add; the "
              "(1,3,3,1) repeat triples it); seconds per epoch measured in this study.", "",
              markdown(arch_table), ""]
    for n, (theirs, mine) in rebuilt.items():
        lines += [f"## Table {n}, rebuilt", "", "The report:", "", markdown(theirs), "", "This study:", "",
                  markdown(mine), ""]
    lines += ["## Every cell", "",
              "Each cell's best completed trial by val loss; test accuracy at that trial's best-val checkpoint with "
              "a 95 % bootstrap interval; time is the trial's wall time (m:ss). A cell whose trials were all pruned "
              "shows its best pruned trial, without test figures.", "", markdown(shown), ""]
    gap = rows.dropna(subset=["val_test_gap"]) if "val_test_gap" in rows else rows.iloc[0:0]
    if len(gap):
        lines += ["## Val against test", "",
                  f"Val accuracy at the best-val checkpoint minus test accuracy: mean {gap.val_test_gap.mean():+.1%} "
                  f"over {len(gap)} cells (from {gap.val_test_gap.min():+.1%} to {gap.val_test_gap.max():+.1%}). "
                  "The test split is shifted (a different distribution), as Kermany's is.", ""]
    lines += ["## The report's claims, checked", "",
              "Supported or contradicted only when the 95 % intervals do not overlap; otherwise not resolved at "
              "this sample size.", "", markdown(claims), ""]
    if len(beside):
        lines += ["## The report beside this study", "", markdown(beside), ""]
    lines += ["## Parameter importances (Optuna fANOVA, completed trials)", "",
              markdown(imp) if len(imp) else imp_note, ""]
    best = None if space.compare else export.best_config(first, space, first.user_attrs.get("data_args", {}))
    if best:
        lines += ["## Best configuration", "",
                  f"Trial #{best['trial']}: val loss {best['best_val_loss']:.4g}, test accuracy "
                  f"{_pct(best['test_best_acc'])} (`best_config.json`):", "",
                  "```json", json.dumps(best["config"], indent=1), "```", "", "Re-run it as a single trial:", "",
                  "```bash", best["command"], "```", ""]
    lines += ["## Plots", "", "![learning curves](learning_curves.png)", "", "![test accuracy](test_accuracy.png)",
              "", "![val against test](val_vs_test.png)", ""]
    return "\n".join(lines)
