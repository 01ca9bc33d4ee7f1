"""The analysis of stored studies: REPORT.md and its CSV files under results/<space>/.

`analyze(studies, space, out_dir)` reads the Optuna studies (and each trial's per-image
predictions), builds the tables (tlstudy.tables), judges the report's claims
(tlstudy.claims, on results/reference/claims.csv) and writes one page that says what the
design can and cannot show: the seeds, the budget per cell, the pruning rule, the margin and
alpha, the data and whether the weights were real.
"""
import json
import shlex
from pathlib import Path

import optuna
import pandas as pd

from tlstudy import claims as tlclaims
from tlstudy import export, plots, spaces, tables
from tlstudy.errors import UserError
from tlstudy.tables import markdown

REPORT_TASKS = ("taskA", "taskB", "taskC", "taskE")


def study_frames(study, space=None, artifact_dir=None):
    """(space, per-trial frame, per-epoch frame, predictions) of one stored study."""
    # A study run from a space file path stores only its name: the caller passes the loaded space.
    space = space or spaces.load(study.user_attrs.get("space", study.study_name))
    trials = export.trials_frame(study, space.fixed)
    epochs = export.epochs_frame(study)
    planned = study.user_attrs.get("base_config", {}).get("epochs")
    per_trial = tables.trial_figures(trials, epochs, planned) if len(trials) else trials
    preds = export.predictions_frame(study, artifact_dir) if artifact_dir and Path(artifact_dir).is_dir() else None
    return space, per_trial, epochs, preds


def study_meta(study):
    """What makes two studies comparable, for the claims' void rules."""
    data, design = study.user_attrs.get("data", {}), study.user_attrs.get("design", {})
    return dict(data_fingerprint=data.get("data_fingerprint"), data_source=data.get("data_source", ""),
                image_size=data.get("image_size"), epochs=study.user_attrs.get("base_config", {}).get("epochs"),
                profile=json.dumps(design.get("profile", {}), sort_keys=True))


def claim_inputs(storage, current, artifact_dir):
    """(trials, predictions, studies, throughput) of the report's tasks stored beside the current studies."""
    trials, preds, meta, speed = [], [], {}, []
    names = set(optuna.get_all_study_names(storage))
    for task in REPORT_TASKS:
        if task in current:
            study, (_, per_trial, _, p) = current[task]
        elif task in names:
            study = optuna.load_study(study_name=task, storage=storage)
            _, per_trial, _, p = study_frames(study, artifact_dir=artifact_dir)
        else:
            continue
        meta[task] = study_meta(study)
        speed += study.user_attrs.get("throughput", [])
        if len(per_trial):
            trials.append(per_trial.assign(study=task))
        if p is not None and len(p):
            preds.append(p.assign(study=task))
    frame = lambda fs, cols: pd.concat(fs, ignore_index=True) if fs else pd.DataFrame(columns=cols)  # noqa: E731
    return (frame(trials, ["study", "number", "state", "phase", "train_seed", "weights_source"]),
            frame(preds, export.PREDICTION_COLUMNS), meta, pd.DataFrame(speed) if speed else None)


def importances(study):
    """Optuna's fANOVA importances of the parameters over the completed trials."""
    try:
        imp = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (ValueError, RuntimeError) as e:
        return pd.DataFrame(), f"not computed: {e}"
    return pd.DataFrame({"parameter": list(imp), "importance": [round(v, 3) for v in imp.values()]}), ""


def analyze(studies, space, out_dir, margin=0.02, alpha=0.05):
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
    preds = [f[3] for _, f in current.values() if f[3] is not None]
    preds = pd.concat(preds, ignore_index=True) if preds else None
    if per_trial.empty:
        raise UserError(f"study {studies[0].study_name!r} has no trials yet: run tlstudy run --space {space.name}")
    axes = [a for a in (["arch", "weights", "task"] if space.compare else space.axes) if a in per_trial]
    rows = tables.cell_rows(per_trial, axes, preds)
    shown = tables.format_cells(rows, axes)
    ref = tables.reference()
    rebuilt = tables.report_tables(rows, ref, tasks, axes) if len(ref) else {}
    beside = tables.side_by_side(rows, ref, tasks, axes) if len(ref) else pd.DataFrame()
    work = tables.show_your_work(per_trial, axes)
    judged = tlclaims.evaluate(tlclaims.load(), *claim_inputs(storage, current, artifacts), margin=margin, alpha=alpha)
    image_size = studies[0].user_attrs.get("data", {}).get("image_size") or 224
    arch_table = tables.architecture_table(per_trial, image_size)
    imp, imp_note = (pd.DataFrame(), "not computed for a comparison") if space.compare else importances(studies[0])

    paths = {k: out / v for k, v in dict(
        cells="cells.csv", cells_md="cells.md", architectures="architectures.csv", claims="claims.csv",
        report_vs_study="report_vs_study.csv", importances="importances.csv", show_your_work="show_your_work.csv",
        curves="learning_curves.png", test_acc="test_accuracy.png", val_vs_test="val_vs_test.png",
        expected_best="show_your_work.png", report="REPORT.md").items()}
    try:
        rows.to_csv(paths["cells"], index=False)
        paths["cells_md"].write_text(markdown(shown) + "\n")
        arch_table.to_csv(paths["architectures"], index=False)
        judged[tlclaims.COLUMNS].to_csv(paths["claims"], index=False)
        beside.to_csv(paths["report_vs_study"], index=False)
        imp.to_csv(paths["importances"], index=False)
        work.to_csv(paths["show_your_work"], index=False)
        for n, (theirs, mine) in rebuilt.items():
            paths[f"table{n}"] = out / f"table{n}.csv"
            mine.to_csv(paths[f"table{n}"], index=False)
        plots.learning_curves(per_trial, epochs, axes, paths["curves"])
        plots.test_accuracy(rows.assign(cell=shown.cell), paths["test_acc"])
        plots.val_vs_test(per_trial, paths["val_vs_test"])
        plots.expected_best(work, paths["expected_best"])
        page = Page(studies, space, tasks, per_trial, margin, alpha)
        paths["report"].write_text(page.render(shown, rows, arch_table, rebuilt, beside, work, judged, imp, imp_note))
    except OSError as e:
        raise UserError(f"cannot write the analysis to {out}: {e.strerror}") from None
    paths["table"] = markdown(shown)
    return paths


class Page:
    """REPORT.md: everything on one page, for GitHub."""

    def __init__(self, studies, space, tasks, per_trial, margin, alpha):
        self.studies, self.space, self.tasks, self.per_trial = studies, space, tasks, per_trial
        self.margin, self.alpha = margin, alpha

    def render(self, shown, rows, arch_table, rebuilt, beside, work, judged, imp, imp_note):
        lines = self.header() + self.design(rows)
        lines += ["## Table 1: the architectures", "",
                  "From the model objects (GFLOPs: one forward pass of one image, 2 FLOPs per multiply-add; the "
                  "(1,3,3,1) repeat triples it).", "", markdown(arch_table), ""]
        lines += self.speed()
        for n, (theirs, mine) in rebuilt.items():
            lines += [f"## Table {n}, rebuilt", "", "The report (one run each):", "", markdown(theirs), "",
                      "This study (each cell's replicates: mean ± sd over training seeds):", "", markdown(mine), ""]
        lines += ["## Every cell", "",
                  "Each cell's best search configuration (lowest val loss), trained again with each training seed: "
                  "figures are means over those replicates (± sd over seeds). Test accuracy is at the best-val-loss "
                  "checkpoint, with a 95 % interval over seeds and test images (`inference.cell_interval`: a t "
                  "interval with the seed and image variance; Wilson's interval over the test images when a cell "
                  "has one replicate). Search trials never scored the test split: they were chosen on val loss "
                  "alone.", "", markdown(shown), ""]
        gap = rows.dropna(subset=["val_test_gap"]) if "val_test_gap" in rows else rows.iloc[0:0]
        if len(gap):
            lines += ["## Val against test", "",
                      f"Val accuracy at the best-val checkpoint minus test accuracy, over the replicates: mean "
                      f"{gap.val_test_gap.mean():+.1%} over {len(gap)} cells (from {gap.val_test_gap.min():+.1%} to "
                      f"{gap.val_test_gap.max():+.1%}).", ""]
        lines += self.claims(judged, work)
        if len(beside):
            lines += ["## The report beside this study", "", markdown(beside), ""]
        lines += ["## Parameter importances (Optuna fANOVA, completed trials)", "",
                  markdown(imp) if len(imp) else imp_note, ""]
        lines += self.best()
        lines += ["## Plots", "", "![learning curves](learning_curves.png)", "", "![test accuracy](test_accuracy.png)",
                  "", "![val against test](val_vs_test.png)", ""]
        return "\n".join(lines)

    def header(self):
        first, per_trial = self.studies[0], self.per_trial
        data = first.user_attrs.get("data", {})
        source = data.get("data_source", "?")
        devices = ", ".join(sorted(per_trial.device.dropna().astype(str).unique())) if "device" in per_trial else "?"
        lines = [f"# {self.space.name}: {self.space.description}", ""]
        if str(source).startswith("phantom"):
            lines += ["> **Data: the synthetic phantom** (`tlstudy.phantom`), not the Kermany chest X-rays. It cannot "
                      "reproduce the report's numbers, only the shape of its findings, and it says nothing about "
                      "ImageNet transfer: claims about transfer are void on it. Run with `--data path/to/chest_xray` "
                      "for real figures.", ""]
        else:
            lines += [f"> **Data:** `{source}`", ""]
        sources = sorted(per_trial.weights_source.dropna().unique()) if "weights_source" in per_trial else []
        fallback = int((per_trial.get("weights_source") == "random-fallback").sum()) if sources else 0
        weights = (f"**{fallback} trials trained from a random init**: their pretrained weights were missing "
                   "(`weights_source=random-fallback`), so every weights and transfer-learning comparison is void"
                   if fallback else f"as asked: {', '.join(sources) or 'none'}")
        command = first.user_attrs.get("command", "tlstudy run --space " + shlex.quote(self.space.name))
        return lines + [
            "| | |", "|---|---|",
            f"| studies | {', '.join(f'`{s.study_name}`' for s in self.studies)} ({len(per_trial)} trials) |",
            f"| data | {source}: train/val/test {data.get('n_train')}/{data.get('n_val')}/{data.get('n_test')} at "
            f"{data.get('image_size')} px{'; ' + data['val_note'] if data.get('val_note') else ''} |",
            f"| weights | {weights} |",
            "| fixed settings | " + "<br>".join(f"{s.study_name}: `{json.dumps(s.user_attrs.get('base_config', {}))}`"
                                                for s in self.studies) + " |",
            f"| device | {devices} |",
            f"| produced by | `{command}`, then `tlstudy analyze --space {shlex.quote(self.space.name)}` |", ""]

    def design(self, rows):
        budget = [s.user_attrs.get("budget", {}) for s in self.studies]
        b = budget[0] if budget else {}
        return ["## What this design can and cannot show", "",
                f"- **Search**: every cell got the same budget, {b.get('budget', '?')} trials; the first ran the "
                "report's own protocol (the PyTorch transfer-learning tutorial's SGD, lr 1e-3, momentum 0.9, "
                "StepLR), the others TPE on the cell's own trials. Pruning "
                f"(`{b.get('pruner', '?')}`) compared a trial with its own cell's trials only; the protocol trial "
                "and the replicates were never pruned.",
                f"- **Replicates**: each cell's best search configuration (by val loss, never by test) ran again "
                f"with {b.get('seeds', '?')} training seeds (init, batch order, augmentation); "
                f"{int(rows.replicates.min()) if len(rows) else 0} to {int(rows.replicates.max()) if len(rows) else 0} "
                "completed per cell. Tables, test figures and claims come from them.",
                "- **Comparisons** are paired on the same test images, with seed and image variance "
                f"(`tlstudy.inference.paired`); Holm's correction holds the family-wise error at α = {self.alpha} "
                f"over the claims below; \"no effect\" claims are equivalence tests (TOST) with a margin of "
                f"±{self.margin:.0%} accuracy.",
                "- **Not varied**: the data split and the phantom's seed (one data seed), the search's own luck "
                "beyond its budget (see the \"show your work\" curves), the architecture's implementation.", ""]

    def speed(self):
        speed = [r for s in self.studies for r in s.user_attrs.get("throughput", [])]
        if not speed:
            return []
        t = pd.DataFrame(speed).groupby(["arch", "device", "batch_size", "image_size", "threads"], as_index=False)
        t = t.s_per_step.agg(["mean", "std", "count"]).rename(
            columns={"mean": "s/step", "std": "sd", "count": "timed runs"}).round(4)
        return ["## Training speed, measured", "",
                "Each architecture trained alone for a fixed number of steps at a fixed batch and image size, after a "
                "warm-up (`tlstudy.throughput`); claim 1 is judged on these figures, not on trials' epoch times.", "",
                markdown(t), ""]

    def claims(self, judged, work):
        lines = ["## Show your work: expected best val loss after k search trials", "",
                 "Dodge et al. (2019): the expected lowest val loss of k trials drawn from each cell's own search "
                 "trials. Where two cells' curves cross, which one wins depends on the search budget; a cell that "
                 "wins only at the budget used here won by its search's luck.", "",
                 "![show your work](show_your_work.png)", "", markdown(work.round(4)), ""]
        lines += ["## The report's claims, tested", "",
                  f"Paired comparisons of cells on the replicates' test predictions (best-val-loss checkpoint); "
                  f"estimate a - b with its 95 % interval; p adjusted by Holm (α = {self.alpha}); equivalence claims "
                  f"by TOST with margin ±{self.margin:.0%}. A verdict is **void** when the comparison cannot speak "
                  "(see the reason).", ""]
        for r in judged.to_dict("records"):
            lines.append(f"- **{r['claim']}** ({r['verdict']}): {self.plain(r)}")
        shown = judged[tlclaims.COLUMNS].copy()
        for k in ("estimate", "low", "high", "p", "p_holm"):
            shown[k] = shown[k].map(lambda v: "" if pd.isna(v) else f"{v:.3g}")
        return lines + ["", markdown(shown), ""]

    @staticmethod
    def plain(r):
        """One sentence per claim, in plain words."""
        gloss = r.get("gloss_en") or r["claim"]
        if r["verdict"] == "void":
            return f"{gloss}. This study cannot say: {r['reason']}."
        unit = "s/step" if r["metric"] == "s_per_step" else "points"
        scale = 1 if unit == "s/step" else 100
        iv = f"{r['estimate'] * scale:+.2f} {unit} [{r['low'] * scale:+.2f}, {r['high'] * scale:+.2f}]"
        said = {"supported": "the data support it", "contradicted": "the data contradict it",
                "inconclusive": "the data cannot tell at this size"}[r["verdict"]]
        return f"{gloss}. Difference {iv}; {said}" + (f" (p_holm {r['p_holm']:.3g})." if not pd.isna(r["p_holm"])
                                                     else ".")

    def best(self):
        first = self.studies[0]
        best = None if self.space.compare else export.best_config(first, self.space, first.user_attrs.get("data_args", {}))
        if not best:
            return []
        return ["## Best configuration", "",
                f"Trial #{best['trial']}: val loss {best['best_val_loss']:.4g}, test accuracy "
                f"{tables.pct(best['test_best_acc'])} (`best_config.json`):", "",
                "```json", json.dumps(best["config"], indent=1), "```", "", "Re-run it as a single trial:", "",
                "```bash", best["command"], "```", ""]
