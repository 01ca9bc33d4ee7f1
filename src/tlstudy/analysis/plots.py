"""The report's figures, drawn with matplotlib's non-interactive Agg backend (a trial's own learning
curve is drawn by tlstudy.study.search, when the trial ends)."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from tlstudy.names import CELL, PHASE  # noqa: E402


def learning_curves(per_trial, epochs, axes, path):
    """Train (dashed) and val (solid) loss per epoch, one panel per cell; the cell's
    trials in one colour each, pruned ones faint, failed ones left out."""
    keys = ["task", "number"]
    cells = list(per_trial.groupby(axes, sort=True, dropna=False)) if axes else [((), per_trial)]
    cols = min(3, len(cells))
    rows = -(-len(cells) // cols)
    fig, panels = plt.subplots(rows, cols, figsize=(4.2 * cols, 3 * rows), dpi=90, squeeze=False)
    for ax in panels.flat[len(cells) :]:
        ax.axis("off")
    for ax, (cell, g) in zip(panels.flat, cells):
        cell = cell if isinstance(cell, tuple) else (cell,)
        for i, (_, t) in enumerate(g[g.state != "FAIL"].iterrows()):
            e = epochs[(epochs[keys[0]] == t[keys[0]]) & (epochs[keys[1]] == t[keys[1]])].sort_values("epoch")
            alpha = 0.25 if t.state == "PRUNED" else 1.0
            color = f"C{i % 10}"
            ax.plot(e.epoch, e.train_loss, "--", color=color, alpha=alpha)
            ax.plot(e.epoch, e.val_loss, "-", color=color, alpha=alpha, label=f"#{t.number} {t.state.lower()}")
        ax.set_yscale("log")  # a diverging trial would flatten the others on a linear axis
        ax.set_title(", ".join(f"{k}={v}" for k, v in zip(axes, cell)), fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch", fontsize=8)
        if ax.lines:
            ax.legend(fontsize=6)
    panels[0][0].set_ylabel("loss (dashed: train, solid: val)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def test_accuracy(rows, path):
    """Each cell's test accuracy over its replicates (best-val checkpoint) with its 95 % interval."""
    r = (
        rows.dropna(subset=["test_acc"])
        if "test_acc" in rows
        else rows.iloc[0:0].assign(test_acc=[], test_low=[], test_high=[], cell=[])
    )
    fig, ax = plt.subplots(figsize=(7, 0.45 * max(len(r), 2) + 1.2), dpi=90)
    y = range(len(r))
    ax.errorbar(
        r.test_acc,
        y,
        xerr=[(r.test_acc - r.test_low).clip(lower=0), (r.test_high - r.test_acc).clip(lower=0)],
        fmt="o",
        capsize=3,
    )
    ax.set_yticks(list(y), list(r.cell), fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("test accuracy over the replicates (95 % interval over seeds and test images)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def val_vs_test(per_trial, path):
    """Val accuracy at the best-val checkpoint against test accuracy, one point per completed trial
    that scored the test split: a colour per cell, a marker per phase."""
    t = per_trial[per_trial.state == "COMPLETE"]
    t = t.dropna(subset=["test_best_acc"]) if "test_best_acc" in t else t.iloc[0:0]
    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=90)
    cells = sorted(t[CELL].astype(str).unique()) if CELL in t else []
    markers = {"search": "s", "replicate": "o"}
    for i, cell in enumerate(cells):
        for phase, g in t[t[CELL].astype(str) == cell].groupby(PHASE) if PHASE in t else []:
            ax.scatter(
                g.val_acc_at_best, g.test_best_acc, s=22, color=f"C{i % 10}", marker=markers.get(phase, "^"),
                label=f"{cell} ({phase})", alpha=0.8,
            )  # fmt: skip
    ax.plot([0, 1], [0, 1], ":", color="grey", label="val = test")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("val accuracy (best-val checkpoint)")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=5, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


VERDICT_COLOURS = {"supported": "tab:green", "contradicted": "tab:red", "inconclusive": "tab:orange", "void": "grey"}


def forest(judged, path):
    """The claims at a glance: each claim's estimate a - b with its 95 % interval, zero (or the
    equivalence claims' +-margin band), the verdict as a colour and the seeds per cell beside it.
    Accuracy claims in points; the speed claim (s_per_step) as the percent difference of its
    geometric mean time, a / b - 1."""
    rows = judged.iloc[::-1].to_dict("records")
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * max(len(rows), 2) + 1.3), dpi=90)
    for y, r in enumerate(rows):
        colour = VERDICT_COLOURS.get(r["verdict"], "black")
        if r["metric"] == "s_per_step" and r.get("ratio") == r.get("ratio") and r["verdict"] != "void":
            est, low, high = (100 * (v - 1) for v in (r["ratio"], r["ratio_low"], r["ratio_high"]))
            what = f"{r['n_a']} / {r['n_b']} timed runs (% of time)"
        elif r["verdict"] != "void":
            est, low, high = (100 * r[k] for k in ("estimate", "low", "high"))
            what = f"{r['n_a']} / {r['n_b']} seeds"
        else:
            ax.text(0, y, "void", color=colour, ha="center", va="center", fontsize=7)
            continue
        if r["direction"] == "equivalent":
            m = 100 * r["margin"]
            ax.fill_between([-m, m], y - 0.35, y + 0.35, color="tab:blue", alpha=0.15, lw=0)
        ax.errorbar([est], [y], xerr=[[est - low], [high - est]], fmt="o", color=colour, capsize=3)
        ax.annotate(f"{r['verdict']}, {what}", (high, y), xytext=(5, 0), textcoords="offset points",
                    va="center", fontsize=6, color=colour)  # fmt: skip
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(rows)), [str(r["claim"]) for r in rows], fontsize=8)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel("a - b: points of test accuracy (claim on speed: % of time); band: equivalence margin")
    ax.margins(x=0.25)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def show_your_work(work, path):
    """Each cell's expected best val loss after k search trials (tlstudy.analysis.tables.show_your_work)."""
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=90)
    ks = [c for c in work.columns if c.startswith("k=")]
    for i, r in enumerate(work.to_dict("records")):
        ax.plot([int(k[2:]) for k in ks], [r[k] for k in ks], "o-", color=f"C{i % 10}", label=r[CELL])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("search trials k")
    ax.set_ylabel("expected best val loss")
    ax.set_yscale("log")
    if len(work):
        ax.legend(fontsize=5)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
