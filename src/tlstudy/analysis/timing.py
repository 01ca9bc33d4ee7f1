"""Claim 1's figures: the interleaved timed runs paired by round, with the replicates' wall times beside.

A speed claim ("resnet101 trains slower than resnext50_32x4d") is judged on the timed runs of
tlstudy.training.throughput.interleaved, at one setting (device, batch, image size, repeat) both
architectures ran at, paired by round. The replicate trials' whole wall times are stated beside
the verdict, with the device they ran on and how many trials ran at once: they are what a user
waits for, but they mix in data loading, evaluation and the neighbours' load, so they are not
the test.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tlstudy.analysis import statistics
from tlstudy.names import PHASE, REPLICATE

SETTING = ("device", "batch_size", "image_size", "repeat")  # a throughput comparison holds these fixed


def text(values):
    """Values as the strings a cell is written with: 2, 2.0 and "2" alike."""
    return values.map(lambda v: str(int(v)) if isinstance(v, float) and v.is_integer() else str(v))


def select(frame, cell):
    """Rows of `frame` matching `cell` (key -> string), and the cell keys the frame lacks."""
    missing = [k for k in cell if k not in frame]
    mask = np.ones(len(frame), dtype=bool)
    for k, v in cell.items():
        if k in frame:
            mask &= (text(frame[k]) == v).to_numpy()
    return frame[mask], missing


def void(reasons):
    return dict(void=True, reason="; ".join(reasons))


def speed_row(c, cells, throughput, studies, alpha, trials=None):
    """Claim on seconds per step: the cells' timed runs at one common setting, paired by round."""
    if throughput is None or not len(throughput):
        return void(
            [
                "no throughput measurement (a frame of arch, device, batch_size, image_size, repeat, run, "
                "s_per_step) was given"
            ]
        )
    t = throughput
    size = {studies[s].get("image_size") for s in (c["study_a"], c["study_b"]) if s in studies} - {None}
    if "image_size" in t and size:
        t = t[text(t.image_size).isin({str(v) for v in size})]
    keys = [k for k in SETTING if k in t]
    if not keys:
        t, keys = t.assign(setting="any"), ["setting"]
    # The frame records the architecture and the setting only: other cell keys cannot be matched there.
    a, _ = select(t, {k: v for k, v in cells["a"].items() if k in t})
    b, _ = select(t, {k: v for k, v in cells["b"].items() if k in t})
    run = "run" if "run" in t else None
    pairs = a.merge(b, on=keys + ([run] if run else []), suffixes=("_a", "_b"))
    count = pairs.groupby(keys, dropna=False).size()
    count = count[count >= 2]
    if count.empty:
        return void(
            [
                f"no setting ({', '.join(keys)}) with at least 2 rounds of timed runs of both cells"
                + (f" at image size {sorted(size)}" if size else "")
            ]
        )
    best = count.idxmax()  # the setting with the most rounds of both
    best = best if isinstance(best, tuple) else (best,)
    at = pairs[np.logical_and.reduce([(text(pairs[k]) == str(v)).to_numpy() for k, v in zip(keys, best)])]
    r = statistics.throughput(at.s_per_step_a, at.s_per_step_b, level=1 - alpha)
    return dict(
        estimate=r["estimate"],
        low=r["low"],
        high=r["high"],
        p=r["p"],
        n_a=r["n_a"],
        n_b=r["n_b"],
        mean_a=r["mean_a"],
        mean_b=r["mean_b"],
        void=False,
        setting=", ".join(f"{k}={v}" for k, v in zip(keys, best)),
        ratio=r["ratio"],
        ratio_low=r["ratio_low"],
        ratio_high=r["ratio_high"],
        wall=wall_times(trials, c, cells),
    )


def concurrency(trials: pd.DataFrame) -> pd.Series:
    """For each trial, how many of its study's trials were running at its midpoint (itself included)."""
    start = pd.to_datetime(trials.datetime_start)
    end = pd.to_datetime(trials.datetime_complete)
    mid = start + (end - start) / 2
    out = pd.Series(np.nan, index=trials.index)
    for _, g in trials.groupby("study"):
        s, e, m = start[g.index].to_numpy(), end[g.index].to_numpy(), mid[g.index].to_numpy()
        out[g.index] = ((s[None, :] <= m[:, None]) & (m[:, None] <= e[None, :])).sum(1)
    return out


def wall_times(trials, c, cells) -> str:
    """The cells' COMPLETE replicates' wall times in words: median seconds, device and trials at once."""
    need = {"study", "state", PHASE, "wall_s", "datetime_start", "datetime_complete"}
    if trials is None or not need <= set(trials):
        return ""
    done = trials[(trials.state == "COMPLETE") & (trials[PHASE] == REPLICATE)].copy()
    if done.empty:
        return ""
    done["at_once"] = concurrency(done)
    words = []
    for side in ("a", "b"):
        mine, missing = select(done[done.study == c[f"study_{side}"]], cells[side])
        if missing or mine.empty:
            continue
        device = ", ".join(sorted(set(mine.get("device", pd.Series(["?"])).astype(str))))
        words.append(
            f"{side}: median {mine.wall_s.median():.1f} s over {len(mine)} replicates on {device}, "
            f"{mine.at_once.median():.0f} trial(s) at once"
        )
    return "replicates' whole-trial wall time " + "; ".join(words) if words else ""
