"""How the quick profile and the phantom were sized: one protocol trial per taskE setting.

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python bench/phantom_calibration.py

Runs tlstudy.training.loop.fit on one thread (as a Ray trial with one CPU does) for the settings
of taskE's cells (plain, tiled train and val, tiled train only; 2 and 10 outputs) with the
protocol's hyperparameters, and prints val accuracy, test balanced accuracy and seconds per
trial. The environment variables above hold torch's kernels to AVX2, as on the project's
2-core machines without AVX512-BF16 (where bf16 is emulated, so autocast stays off).
Another calibration: a JSON argument of overrides, e.g.
    python bench/phantom_calibration.py '{"lesion": {"strength": [0.5, 0.8]}, "profile": {"epochs": 4}}'

"""

import itertools
import json
import sys
import time

import torch

from tlstudy.data import phantom, splits
from tlstudy.settings import PROFILES, PROTOCOL, DataSettings, TrialConfig
from tlstudy.training.loop import fit

PROFILE = dict(PROFILES["quick"])
LESION, SHIFT = {}, {}  # overrides of phantom._LESION / phantom._SHIFT
SEEDS = (1, 2)


def main(argv=sys.argv[1:]):
    over = json.loads(argv[0]) if argv else {}
    PROFILE.update(over.get("profile", {}))
    LESION.update(over.get("lesion", {}))
    SHIFT.update(over.get("shift", {}))
    settings = over.get(
        "settings",
        [
            [2, ["1,3,1,1", "1,3,1,1"]],
            [2, ["1,3,3,1", "1,3,3,1"]],
            [2, ["1,3,3,1", "1,3,1,1"]],
            [10, ["1,3,1,1", "1,3,1,1"]],
        ],
    )
    torch.set_num_threads(1)
    phantom._LESION.update(LESION)
    phantom._SHIFT.update(SHIFT)
    data = DataSettings("phantom", PROFILE["image_size"], tuple(PROFILE["phantom_sizes"]), PROFILE["max_train"])
    data_splits = splits.load(data, use_cache=False)
    print(
        f"cpu capability {torch.backends.cpu.get_cpu_capability()}; profile {PROFILE}; lesion {phantom._LESION}; "
        f"shift {phantom._SHIFT}",
        flush=True,
    )
    for (out, (tr, ev)), seed in itertools.product(settings, over.get("seeds", SEEDS)):
        cfg = dict(
            weights="none",
            out_features=out,
            train_repeat=tr,
            eval_repeat=ev,
            epochs=PROFILE["epochs"],
            step_size=PROFILE["step_size"],
            train_seed=seed,
            **{**PROTOCOL, **over.get("trial", {})},
        )
        t0 = time.perf_counter()
        s = list(fit(TrialConfig(**cfg), data_splits))[-1]["summary"]
        print(
            f"out {out:2d} train {tr} eval {ev} seed {seed}: best val acc {s['best_val_acc']:.1%}  "
            f"test acc {s['test_best_acc']:.1%}  balanced {s['test_best_balanced_acc']:.1%}  "
            f"{time.perf_counter() - t0:.1f} s",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
