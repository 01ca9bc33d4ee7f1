"""The training-speed measurement claim 1 is judged on: real timed steps, and a claim that reads them."""

import os

import pandas as pd
import pytest

from tlstudy.analysis import claims
from tlstudy.training import throughput


def test_the_architectures_are_timed_interleaved_each_run_in_its_own_process():
    rows = throughput.interleaved(["resnet18", "resnet50"], image_size=32, rounds=2, batch_size=4, steps=2, warmup=1)
    t = pd.DataFrame(rows)
    assert len(t) == 4 and list(t.groupby("arch").size()) == [2, 2]
    assert t.s_per_step.gt(0).all() and set(t.run) == {0, 1}
    assert t[["device", "device_type", "batch_size", "image_size", "repeat", "threads"]].nunique().max() == 1
    assert t.device_type.iloc[0] == "cpu" and t.device.iloc[0] == throughput.device_name("cpu")
    # A B, then B A: the machine's drift falls on both; every run in a fresh process.
    order = [list(g.sort_values("slot").arch) for _, g in t.groupby("run")]
    assert order == [["resnet18", "resnet50"], ["resnet50", "resnet18"]]
    assert t.pid.nunique() == 4 and os.getpid() not in set(t.pid)
    # A speed claim written as data is judged on these rows, paired on the setting.
    table = pd.DataFrame(
        [
            dict(
                claim="s1",
                group="1",
                sentence_zh="",
                gloss_en="resnet50 is slower",
                study_a="taskX",
                cell_a="arch=resnet50",
                study_b="taskX",
                cell_b="arch=resnet18",
                metric="s_per_step",
                direction="greater",
                about="",
                report_a="",
                report_b="",
            )
        ]
    )
    studies = {"taskX": dict(data_fingerprint="f", data_source="phantom", image_size=32, profile="{}", epochs=1)}
    judged = claims.evaluate(
        table,
        pd.DataFrame(columns=["study", "number", "state", "phase", "train_seed", "weights_source"]),
        pd.DataFrame(columns=["study", "number", "checkpoint"]),
        studies,
        throughput=t,
    )
    assert judged.verdict[0] in ("supported", "contradicted", "inconclusive"), judged.to_dict("records")
    assert "2 rounds of interleaved timed runs, paired" in judged.reason[0]


def test_a_failed_timing_run_says_why():
    """The run's own last line of error comes back: here, a CUDA device on a machine without one."""
    with pytest.raises(RuntimeError, match=r"timing resnet18 failed \(exit 1\): .*(CUDA|NVIDIA|GPU)"):
        throughput.interleaved(["resnet18"], image_size=32, rounds=1, steps=1, warmup=0, device="cuda")
