"""Where a quick taskE study's time goes: the driver's phases and each trial's span on its worker.

    python bench/study_timeline.py RESULTS_DIR [run.py flags...]

Runs `study/run.py --space taskE --num-cpus 2` (quick profile) in this process with timers
around the driver's phases, then reads each trial's result.json written by Ray Tune: a
trial's span on its worker runs from its first epoch's start (first report's timestamp
minus time_this_iter_s) to its last report. Ray's timestamps are whole seconds.
"""

import glob
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep Ray on loopback

from ray import tune  # noqa: E402

from tlstudy import cli  # noqa: E402
from tlstudy.analysis import export, report  # noqa: E402
from tlstudy.study import runner  # noqa: E402

PHASES = {}


def timed(owner, name, key):
    f = getattr(owner, name)

    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return f(*args, **kwargs)
        finally:
            PHASES[key] = PHASES.get(key, 0) + time.perf_counter() - t

    setattr(owner, name, wrapper)


def main():
    results = Path(sys.argv[1])
    for owner, name, key in [
        (runner, "init_ray", "ray_init_s"),
        (runner.data_splits, "load", "data_s"),
        (runner.storage, "open_study", "open_study_s"),
        (tune.Tuner, "fit", "tuner_fit_s"),
        (export, "write", "export_s"),
        (report, "write_report", "analysis_s"),
    ]:
        timed(owner, name, key)
    t0 = time.perf_counter()
    cli.main(["run", "--space", "taskE", "--results", str(results), "--num-cpus", "2", *sys.argv[2:]])
    wall = time.perf_counter() - t0
    spans = []
    for f in glob.glob(str(results / "ray" / "taskE" / "*" / "*" / "result.json")):
        rs = [json.loads(line) for line in open(f) if line.strip()]
        spans.append(
            dict(
                trial=rs[0]["trial_id"],
                pid=rs[0]["pid"],
                epochs=len(rs),
                start=rs[0]["timestamp"] - rs[0]["time_this_iter_s"],
                end=rs[-1]["timestamp"],
                in_trial_s=rs[-1]["time_total_s"],
                epoch_s=sum(r["epoch_s"] for r in rs),
            )
        )
    spans.sort(key=lambda s: s["start"])
    first = spans[0]["start"]
    for s in spans:
        print(
            f"{s['trial']} worker {s['pid']}: {s['start'] - first:6.1f} -> {s['end'] - first:6.1f} s "
            f"({s['epochs']} epochs)"
        )
    in_trials = sum(s["in_trial_s"] for s in spans)
    span = max(s["end"] for s in spans) - first
    workers = len({s["pid"] for s in spans})  # reused actors: one per slot
    print(
        "RESULT "
        + json.dumps(
            {
                "wall_s": wall,
                **PHASES,
                "trials": len(spans),
                "workers": workers,
                "sum_in_trial_s": in_trials,
                "sum_epoch_s": sum(s["epoch_s"] for s in spans),
                "trials_span_s": span,
                "tuner_fit_before_or_after_trials_s": PHASES["tuner_fit_s"] - span,
                "slot_time_outside_trials": 1 - in_trials / (workers * wall),
            }
        )
    )


if __name__ == "__main__":
    main()
