"""The report's tables as pandas frames, rebuilt from a study's trials; generic, no claims.

- `trial_figures`: one row per trial with the report's figures from its per-epoch history;
- `cell_rows`: one row per variant cell: its search (budget used, best search trial) and its
  replicates (mean and sd over training seeds of the report's columns, and the test accuracy
  with an interval over seeds and test images, tlstudy.analysis.statistics);
- `expected_best`: Dodge et al.'s "show your work" curve, a cell's expected best val loss
  after k search trials;
The report's own tables beside these: tlstudy.analysis.reference. Test figures come from the
replicates only: a search trial, chosen on val loss, scores no test images.
"""

import numpy as np
import pandas as pd

from tlstudy.analysis import statistics
from tlstudy.names import CELL, IS_PROTOCOL, PHASE, REPLICATE, TEST_BEST_ACC, TRAIN_SEED
from tlstudy.spaces import Cell

CELL_KEYS = ("task", "arch", "weights", "mode", "out_features", "train_repeat", "eval_repeat")
COLUMNS = (
    "Final Train Loss",
    "Best Train acc",
    "Final Val Loss",
    "Best Val acc",
    "Best Val Loss (epoch)",
    "Test acc",
    "Time",
)
FIGURES = (
    "final_train_loss",
    "best_train_acc",
    "final_val_loss",
    "best_val_acc",
    "best_val_loss",
    "val_acc_at_best",
    "time_s",
    "mean_epoch_s",
    "test_best_acc",
    "test_best_balanced_acc",
)


def trial_figures(trials, epochs, planned_epochs):
    """One row per trial: the report's figures from its per-epoch history (so pruned trials
    have them too), joined to its state, parameters and test counts."""
    if epochs.empty:
        epochs = pd.DataFrame(
            columns=["number", "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "epoch_s"], dtype=float
        )
    ep = epochs.sort_values(["number", "epoch"])
    g = ep.groupby("number")
    finite = ep[np.isfinite(ep.val_loss.astype(float))]
    best = finite.loc[finite.groupby("number").val_loss.idxmin()].set_index("number")
    figs = pd.DataFrame(
        {
            "final_train_loss": g.train_loss.last(),
            "best_train_acc": g.train_acc.max(),
            "final_val_loss": g.val_loss.last(),
            "best_val_acc": g.val_acc.max(),
            "best_val_loss": best.val_loss,
            "best_epoch": best.epoch,
            "val_acc_at_best": best.val_acc,
            "epochs_run": g.epoch.max(),
            "train_s": g.epoch_s.sum(),
            "mean_epoch_s": g.epoch_s.mean(),
        }
    )
    trials = trials.drop(columns=[c for c in figs.columns if c in trials.columns])
    out = trials.merge(figs, left_on="number", right_index=True, how="left")
    out["planned_epochs"] = planned_epochs
    for k in (PHASE, TRAIN_SEED, TEST_BEST_ACC, "test_best_balanced_acc", "wall_s"):
        if k not in out:
            out[k] = np.nan
    # A finished trial's wall time includes start-up and testing; a pruned one has only its epochs.
    out["time_s"] = out.wall_s.fillna(out.train_s)
    return out


def cell_rows(per_trial, axes, predictions=None):
    """One row per cell: the search (trials by state, the best search trial) and the replicates
    (n, mean and sd of the report's figures over seeds, test accuracy with its interval)."""
    rows = []
    axes = [a for a in axes if a in per_trial]
    groups = per_trial.groupby(axes, sort=True, dropna=False) if axes else [((), per_trial)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        search, reps = g[g[PHASE] != REPLICATE], g[(g[PHASE] == REPLICATE) & (g.state == "COMPLETE")]
        row = {
            **dict(zip(axes, key)),
            "search_trials": len(search),
            "search_complete": int((search.state == "COMPLETE").sum()),
            "search_pruned": int((search.state == "PRUNED").sum()),
            "failed": int((g.state == "FAIL").sum()),
            "replicates": len(reps),
            "seeds": ",".join(str(int(s)) for s in sorted(reps.train_seed.dropna())),
        }
        done = search[(search.state == "COMPLETE") & search.best_val_loss.notna()]
        if len(done):
            b = done.loc[done.best_val_loss.idxmin()]
            row.update(
                chosen_trial=int(b.number),
                chosen_val_loss=b.best_val_loss,
                chosen_protocol=str(b.get(IS_PROTOCOL)) == "True",
            )
        if len(reps):
            row.update({f"{k}_mean": reps[k].astype(float).mean() for k in FIGURES if k in reps})
            row.update({f"{k}_sd": reps[k].astype(float).std() for k in FIGURES if k in reps})
            row.update(
                best_epoch=int(reps.best_epoch.median()),
                epochs=int(reps.planned_epochs.iloc[0]),
                val_test_gap=reps.val_acc_at_best.mean() - reps.test_best_acc.astype(float).mean(),
            )
            row.update(test_interval(reps, predictions))
        rows.append(row)
    return pd.DataFrame(rows)


def test_interval(reps, predictions):
    """The cell's test accuracy at the best-val-loss checkpoint with a 95 % interval: over
    training seeds and test images (statistics.cell_interval) with two or more replicates,
    Wilson's for the test images of a single one."""
    p = (
        None
        if predictions is None or not len(predictions)
        else predictions[predictions.number.isin(reps.number) & (predictions.checkpoint == "best_loss")]
    )
    if p is not None and "task" in reps and "study" in p:  # trial numbers repeat across compared studies
        p = p[p.study.isin(reps.task.unique())]
    if len(reps) >= 2 and p is not None and p.number.nunique() == len(reps):
        est, lo, hi = statistics.cell_interval(p, "acc")  # a t interval: it can pass 0 or 1 with few seeds
        return dict(test_acc=est, test_low=max(lo, 0.0), test_high=min(hi, 1.0), test_interval="seeds x images")
    r = reps.iloc[0]
    lo, hi = (
        statistics.wilson(int(r.get("test_best_correct", 0)), int(r.get("test_best_total", 0) or 0))
        if r.get("test_best_total")
        else (np.nan, np.nan)
    )
    how = "Wilson, one replicate" if len(reps) == 1 else "Wilson, first replicate (no predictions stored)"
    return dict(test_acc=float(r.test_best_acc), test_low=lo, test_high=hi, test_interval=how)


def expected_best(values, ks=None):
    """Dodge et al. 2019: the expected lowest val loss of k trials drawn (with replacement) from
    a cell's N search trials, for k = 1..N: sum_i v_(i) * (((N-i+1)/N)^k - ((N-i)/N)^k) with
    v sorted ascending. Pruned trials count with the best val loss they reached."""
    v = np.sort(np.asarray([x for x in values if np.isfinite(x)], dtype=float))
    n = len(v)
    if not n:
        return pd.Series(dtype=float)
    i = np.arange(1, n + 1)
    ks = ks or range(1, n + 1)
    return pd.Series({k: float(np.sum(v * (((n - i + 1) / n) ** k - ((n - i) / n) ** k))) for k in ks})


def show_your_work(per_trial, axes):
    """Each cell's expected best val loss after k = 1..N of its search trials, one column per k."""
    axes = [a for a in axes if a in per_trial]
    search = per_trial[(per_trial[PHASE] != REPLICATE) & per_trial.state.isin(["COMPLETE", "PRUNED"])]
    rows = []
    for key, g in search.groupby(axes, sort=True, dropna=False) if axes else [((), search)]:
        key = key if isinstance(key, tuple) else (key,)
        curve = expected_best(g.best_val_loss.astype(float))
        rows.append({CELL: label(dict(zip(axes, key)), axes), **{f"k={k}": v for k, v in curve.items()}})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- formatting


def label(row, axes):
    """A table row's cell, spelled as the trials spell it (tlstudy.spaces.Cell.label)."""
    return Cell.of({k: row[k] for k in axes}).label()


def pct(v):
    return "" if pd.isna(v) else f"{v:.2%}"


def _num(v):
    return "" if pd.isna(v) else f"{v:.4g}"


def _clock(s):
    return "" if pd.isna(s) else f"{int(s // 60)}:{int(round(s % 60)):02d}"


def _sd(r, k, as_pct):
    sd = r.get(f"{k}_sd", np.nan)
    return "" if pd.isna(sd) else f" ± {sd:.1%}" if as_pct else f" ± {sd:.2g}"


def report_columns(r):
    """The report's columns for one row, as text: a cell's replicate means (± sd over seeds),
    or a row of the report itself (the reference table's column names)."""
    get = lambda k: r.get(f"{k}_mean", r.get(k, np.nan))  # noqa: E731
    test = pct(r.get("test_acc", np.nan))
    if test and not pd.isna(r.get("test_low", np.nan)):
        test += f" [{r['test_low']:.1%}, {r['test_high']:.1%}]"
    epoch = (
        ""
        if pd.isna(r.get("best_epoch", np.nan))
        else f"Epoch {int(r['best_epoch'])}/{int(r['epochs'])} ({_num(get('best_val_loss'))})"
    )
    return dict(
        zip(
            COLUMNS,
            (
                _num(get("final_train_loss")) + _sd(r, "final_train_loss", False),
                pct(get("best_train_acc")),
                _num(get("final_val_loss")),
                pct(get("best_val_acc")) + _sd(r, "best_val_acc", True),
                epoch,
                test,
                _clock(get("time_s")),
            ),
        )
    )


def format_cells(rows, axes):
    """The cell table as shown: the report's columns over the replicates, and the search behind them."""
    out = []
    for r in rows.to_dict("records"):  # not iterrows: it would turn the integers into floats
        row = {CELL: label(r, axes), **report_columns(r)}
        row["test sd (seeds)"] = "" if pd.isna(r.get("test_best_acc_sd", np.nan)) else f"{r['test_best_acc_sd']:.1%}"
        row["balanced acc"] = pct(r.get("test_best_balanced_acc_mean", np.nan))
        row["val-test gap"] = "" if pd.isna(r.get("val_test_gap", np.nan)) else f"{r['val_test_gap']:+.1%}"
        row["replicates (seeds)"] = f"{r['replicates']} ({r['seeds']})" if r["replicates"] else "0"
        chosen = r.get("chosen_trial", np.nan)
        row["search: done/pruned, chosen"] = f"{r['search_complete']}/{r['search_pruned']}, " + (
            "none" if pd.isna(chosen) else f"#{int(chosen)}{' (protocol)' if r.get('chosen_protocol') else ''}"
        )
        out.append(row)
    return pd.DataFrame(out)


def markdown(df):
    return df.to_markdown(index=False) if len(df) else "(no rows)"
