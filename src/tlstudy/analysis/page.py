"""REPORT.md: the analysis of a study on one page, for GitHub (tlstudy.analysis.report writes it)."""

import json
import shlex

import pandas as pd

from tlstudy.analysis import claims as tlclaims
from tlstudy.analysis import export, tables
from tlstudy.analysis.tables import markdown
from tlstudy.names import (
    BASE_CONFIG,
    BUDGET,
    COMMAND,
    DATA,
    DATA_ARGS,
    RANDOM_FALLBACK,
    ROUNDS,
    THROUGHPUT,
    WEIGHTS_SOURCE,
)


class Page:
    """REPORT.md: everything on one page, for GitHub."""

    def __init__(self, studies, space, tasks, per_trial, margin, alpha):
        self.studies, self.space, self.tasks, self.per_trial = studies, space, tasks, per_trial
        self.margin, self.alpha = margin, alpha
        self.kept: list[str] = []  # the kept models' section (tlstudy.analysis.kept), when there is one study

    def render(self, shown, rows, arch_table, rebuilt, beside, work, judged, imp, imp_note):
        lines = self.header() + self.design(rows)
        lines += [
            "## Table 1: the architectures",
            "",
            "From the model objects (GFLOPs: one forward pass of one image, 2 FLOPs per multiply-add; the "
            "(1,3,3,1) repeat triples it).",
            "",
            markdown(arch_table),
            "",
        ]
        lines += self.speed()
        for n, (theirs, mine) in rebuilt.items():
            lines += [
                f"## Table {n}, rebuilt",
                "",
                "The report (one run each):",
                "",
                markdown(theirs),
                "",
                "This study (each cell's replicates: mean ± sd over training seeds):",
                "",
                markdown(mine),
                "",
            ]
        lines += [
            "## Every cell",
            "",
            "Each cell's best search configuration (lowest val loss), trained again with each training seed: "
            "figures are means over those replicates (± sd over seeds). Test accuracy is at the best-val-loss "
            "checkpoint, with a 95 % interval over seeds and test images (`statistics.cell_interval`: the "
            "seed and image variance against calibrated critical values; Wilson's interval over the test "
            "images when a cell has one replicate). Search trials never scored the test split: they were "
            "chosen on val loss alone.",
            "",
            markdown(shown),
            "",
        ]
        gap = rows.dropna(subset=["val_test_gap"]) if "val_test_gap" in rows else rows.iloc[0:0]
        if len(gap):
            lines += [
                "## Val against test",
                "",
                f"Val accuracy at the best-val checkpoint minus test accuracy, over the replicates: mean "
                f"{gap.val_test_gap.mean():+.1%} over {len(gap)} cells (from {gap.val_test_gap.min():+.1%} to "
                f"{gap.val_test_gap.max():+.1%}).",
                "",
            ]
        lines += self.claims(judged, work)
        if len(beside):
            lines += ["## The report beside this study", "", markdown(beside), ""]
        lines += [
            "## Parameter importances (Optuna fANOVA, completed trials)",
            "",
            markdown(imp) if len(imp) else imp_note,
            "",
        ]
        lines += self.best() + self.kept
        lines += [
            "## Plots",
            "",
            "![learning curves](learning_curves.png)",
            "",
            "![test accuracy](test_accuracy.png)",
            "",
            "![val against test](val_vs_test.png)",
            "",
        ]
        return "\n".join(lines)

    def header(self):
        first, per_trial = self.studies[0], self.per_trial
        data = first.user_attrs.get(DATA, {})
        source = data.get("data_source", "?")
        devices = ", ".join(sorted(per_trial.device.dropna().astype(str).unique())) if "device" in per_trial else "?"
        lines = [f"# {self.space.name}: {self.space.description}", ""]
        if str(source).startswith("phantom"):
            lines += [
                "> **Data: the synthetic phantom** (`tlstudy.phantom`), not the Kermany chest X-rays. It cannot "
                "reproduce the report's numbers, only the shape of its findings, and it says nothing about "
                "ImageNet transfer: claims about transfer are void on it. Run with `--data path/to/chest_xray` "
                "for real figures.",
                "",
            ]
        else:
            lines += [f"> **Data:** `{source}`", ""]
        sources = sorted(per_trial[WEIGHTS_SOURCE].dropna().unique()) if WEIGHTS_SOURCE in per_trial else []
        fallback = int((per_trial.get(WEIGHTS_SOURCE) == RANDOM_FALLBACK).sum()) if sources else 0
        weights = (
            f"**{fallback} trials trained from a random init**: their pretrained weights were missing "
            "(`weights_source=random-fallback`), so every weights and transfer-learning comparison is void"
            if fallback
            else f"as asked: {', '.join(sources) or 'none'}"
        )
        command = first.user_attrs.get(COMMAND, "tlstudy run --space " + shlex.quote(self.space.name))
        return lines + [
            "| | |",
            "|---|---|",
            f"| studies | {', '.join(f'`{s.study_name}`' for s in self.studies)} ({len(per_trial)} trials) |",
            f"| data | {source}: train/val/test {data.get('n_train')}/{data.get('n_val')}/{data.get('n_test')} at "
            f"{data.get('image_size')} px{'; ' + data['val_note'] if data.get('val_note') else ''} |",
            f"| weights | {weights} |",
            "| fixed settings | "
            + "<br>".join(f"{s.study_name}: `{json.dumps(s.user_attrs.get(BASE_CONFIG, {}))}`" for s in self.studies)
            + " |",
            f"| device | {devices} |",
            f"| produced by | `{command}`, then `tlstudy analyze --space {shlex.quote(self.space.name)}` |",
            "",
        ]

    def design(self, rows):
        budget = [s.user_attrs.get(BUDGET, {}) for s in self.studies]
        b = budget[0] if budget else {}
        return [
            "## What this design can and cannot show",
            "",
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
            "(`tlstudy.analysis.statistics.paired`); Holm's correction holds the family-wise error at "
            f"α = {self.alpha} "
            f'over the claims below; "no effect" claims are equivalence tests (TOST) with a margin of '
            f"±{self.margin:.0%} accuracy.",
            "- **Not varied**: the data split and the phantom's seed (one data seed), the search's own luck "
            'beyond its budget (see the "show your work" curves), the architecture\'s implementation.',
            "",
        ]

    def speed(self):
        speed = [r for s in self.studies for r in s.user_attrs.get(THROUGHPUT, [])]
        if not speed:
            return []
        t = pd.DataFrame(speed).groupby(["arch", "device", "batch_size", "image_size", "threads"], as_index=False)
        t = (
            t.s_per_step.agg(["mean", "std", "count"])
            .rename(columns={"mean": "s/step", "std": "sd", "count": "timed runs"})
            .round(4)
        )
        return [
            "## Training speed, measured",
            "",
            "Each architecture trained for a fixed number of steps at a fixed batch and image size, after a "
            "warm-up, in rounds that interleave the architectures (A B, then B A), each run in a process of its own, "
            "on the trials' device and threads (`tlstudy.training.throughput`). Claim 1 is judged on these runs, "
            "paired by round, not on trials' epoch times.",
            "",
            markdown(t),
            "",
        ]

    def claims(self, judged, work):
        lines = [
            "## Show your work: expected best val loss after k search trials",
            "",
            "Dodge et al. (2019): the expected lowest val loss of k trials drawn from each cell's own search "
            "trials. Where two cells' curves cross, which one wins depends on the search budget; a cell that "
            "wins only at the budget used here won by its search's luck.",
            "",
            "![show your work](show_your_work.png)",
            "",
            markdown(work.round(4)),
            "",
        ]
        lines += [
            "## The report's claims, tested",
            "",
            "![the claims at a glance](claims_forest.png)",
            "",
            "Paired comparisons of cells on the replicates' test predictions (best-val-loss checkpoint): "
            "estimate a - b with its 95 % interval, over training seeds (paired by seed, Scheffé's exact "
            "df) and test images (by patient where the images carry one), against critical values "
            f"calibrated on the share of each (`tlstudy.analysis.critical`). Holm's correction holds the "
            f"family-wise error at α = {self.alpha}{self.looks()}; equivalence claims by TOST with margin "
            f"±{self.margin:.0%}, at the same adjusted level. A verdict is **void** when the comparison "
            "cannot speak (see the reason). Each states what it rests on: the data, the seeds per cell "
            "and the failed replicates left out, P(a > b) over seed pairs (Bouthillier et al. 2021) and, "
            "when inconclusive, the smallest difference it could have detected at 80 % power.",
            "",
        ]
        for r in judged.to_dict("records"):
            lines.append(f"- **{r['claim']}** ({r['verdict']}): {self.plain(r)}")
        shown = judged[tlclaims.COLUMNS].drop(columns=["reason"]).copy()
        for k in ("estimate", "low", "high", "p", "p_holm", "level", "mde", "p_better"):
            shown[k] = shown[k].map(lambda v: "" if pd.isna(v) else f"{v:.3g}")
        return lines + ["", markdown(shown), ""]

    def looks(self):
        """How the rounds of a study run with --seeds auto spent alpha, or nothing for a fixed design."""
        rounds = [r for s in self.studies for r in s.user_attrs.get(ROUNDS, {}).get("looks", [])]
        if not rounds:
            return ""
        spent = ", ".join(f"look {r['look']} ({r['seeds']} seeds) at {r['alpha']:.3g}" for r in rounds)
        return (
            f", spent over the looks of `--seeds auto` by the power family (ρ = 2; "
            f"tlstudy.analysis.sequential): {spent}"
        )

    @staticmethod
    def plain(r):
        """One sentence per claim, in plain words, with what it rests on."""
        gloss = r.get("gloss_en") or r["claim"]
        if r["verdict"] == "void":
            return f"{gloss}. This study cannot say: {r['reason']}."
        said = {
            "supported": "the data support it",
            "contradicted": "the data contradict it",
            "inconclusive": "the data cannot tell at this size",
        }[r["verdict"]]
        source = "the synthetic phantom" if str(r.get("data_source", "")).startswith("phantom") else "X-rays"
        on = "" if r["metric"] == "s_per_step" else f" On {source}:"
        return f"{gloss}. {said[0].upper()}{said[1:]}.{on} {r['reason']}."

    def best(self):
        first = self.studies[0]
        best = (
            None if self.space.compare else export.best_config(first, self.space, first.user_attrs.get(DATA_ARGS, {}))
        )
        if not best:
            return []
        return [
            "## Best configuration",
            "",
            f"Trial #{best['trial']}: val loss {best['best_val_loss']:.4g}, test accuracy "
            f"{tables.pct(best['test_best_acc'])} (`best_config.json`):",
            "",
            "```json",
            json.dumps(best["config"], indent=1),
            "```",
            "",
            "Re-run it as a single trial:",
            "",
            "```bash",
            best["command"],
            "```",
            "",
        ]
