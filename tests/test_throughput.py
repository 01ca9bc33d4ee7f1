"""The training-speed measurement claim 1 is judged on: real timed steps, and a claim that reads them."""

import pandas as pd

from tlstudy.analysis import claims
from tlstudy.training import throughput


def test_each_architecture_is_timed_alone_in_several_runs_at_one_setting():
    rows = throughput.measure(["resnet18", "resnet50"], image_size=32, batch_size=4, steps=2, runs=3, warmup=1)
    t = pd.DataFrame(rows)
    assert len(t) == 6 and list(t.groupby("arch").size()) == [3, 3]
    assert t.s_per_step.gt(0).all() and set(t.run) == {0, 1, 2}
    assert t[["device", "batch_size", "image_size", "repeat", "threads"]].nunique().max() == 1
    # resnet50 does about twice resnet18's arithmetic per image (4.1 against 1.8 GMACs at 224 px).
    means = t.groupby("arch").s_per_step.mean()
    assert means["resnet50"] > means["resnet18"]
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
    assert judged.verdict[0] in ("supported", "inconclusive") and judged.estimate[0] > 0, judged.to_dict("records")
