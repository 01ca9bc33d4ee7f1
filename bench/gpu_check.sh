#!/usr/bin/env bash
# GPU check, about 6 minutes on one H200; writes its figures as JSON:
#   1. the tests marked gpu;
#   2. images/s of resnet18, resnext50_32x4d, resnet101 at 224 px, bf16 + channels_last,
#      training and eval, through tlstudy's own train()/validate() on uint8 data on the GPU;
#   3. a taskE study at the full image size (224 px), four trials at a time at 0.25 GPU each
#      (2 epochs and a smaller phantom set, so that it fits the time: the per-image cost is the point).
#
#   bash bench/gpu_check.sh [OUT.json]        # default bench/gpu_check.json ($OUT/gpu_check.json when $OUT is set)
#   GPU_CHECK_DRY=1 bash bench/gpu_check.sh   # the same parts, CPU-sized: checks the script without a GPU
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0  # Ray on loopback only
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DRY=${GPU_CHECK_DRY:-0}
OUT_JSON=${1:-${OUT:+$OUT/gpu_check.json}}
OUT_JSON=${OUT_JSON:-bench/gpu_check.json}
WORK=$(mktemp -d /tmp/tlstudy-gpu-check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
export TLSTUDY_CACHE_DIR="$WORK/cache" PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
T0=$(date +%s)

if [ "$DRY" = 1 ]; then
  SIZE=32; IMAGES=32; STUDY_ARGS=(--profile quick --image-size 32 --epochs 1 --phantom-sizes 64,32,32 --max-train 64
                                  --gpus-per-trial 0 --cpus-per-trial 1 --num-cpus 2)
else
  SIZE=224; IMAGES=1024; STUDY_ARGS=(--profile full --epochs 2 --phantom-sizes 512,128,128 --weights-policy auto
                                     --gpus-per-trial 0.25 --cpus-per-trial 2 --max-concurrent 4)
fi

echo "== 1/3 tests marked gpu" >&2
set +e
timeout 150 "$PY" -m pytest -m gpu -q -p no:cacheprovider --junitxml="$WORK/gpu-tests.xml" >"$WORK/tests.log" 2>&1
echo $? >"$WORK/tests.rc"
set -e
tail -3 "$WORK/tests.log" >&2

echo "== 2/3 images/s at $SIZE px" >&2
set +e  # a part that fails or runs out of time is recorded; the others still run
timeout 200 "$PY" - "$SIZE" "$IMAGES" "$WORK/throughput.json" <<'EOF'
import json, sys, time
import torch
from tlstudy import models, train
from tlstudy.transforms import parse_repeat

size, n, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
on = device.type == "cuda"  # bf16 + channels_last: what "auto" picks on a GPU with bf16
run = train.RunContext(device=device, amp=on, fmt=torch.channels_last if on else torch.contiguous_format,
                       mode="finetune", frozen_bn="eval", features=False)
cfg = dict(train.DEFAULTS, batch_size=64, augment=False)
x = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, device=device)
y = torch.randint(0, 2, (n,), device=device)
repeat, gen = parse_repeat("1,3,1,1"), torch.Generator().manual_seed(0)
res = {"device": torch.cuda.get_device_name() if on else "cpu", "image_size": size, "batch_size": 64,
       "amp_bf16": on, "channels_last": on}
for arch in ("resnet18", "resnext50_32x4d", "resnet101"):
    model, _ = models.build(arch, "none", 2, "finetune")
    model.to(device, memory_format=run.fmt)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    if on:
        torch.cuda.reset_peak_memory_stats()
    r = {}
    for phase in ("train", "eval"):
        step = (lambda: train.train(model, x, y, opt, cfg, repeat, gen, run)) if phase == "train" else \
               (lambda: train.validate(model, x, y, repeat, run))
        step(); sync()  # warm-up: cuDNN autotuning, allocator
        t = time.perf_counter(); step(); sync()
        r[f"{phase}_images_per_s"] = n / (time.perf_counter() - t)
    r["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30 if on else None
    res[arch] = r
    print(arch, r, file=sys.stderr, flush=True)
    json.dump(res, open(out, "w"))  # after each architecture: a timeout keeps what was measured
EOF
echo $? >"$WORK/throughput.rc"

echo "== 3/3 taskE study, four trials at 0.25 GPU" >&2
S0=$(date +%s.%N)
timeout 330 "$PY" study/run.py --space taskE --results "$WORK/study" "${STUDY_ARGS[@]}" >"$WORK/study.log" 2>&1
echo $? >"$WORK/study.rc"
set -e
S1=$(date +%s.%N)
tail -5 "$WORK/study.log" >&2

"$PY" - "$WORK" "$OUT_JSON" "$S0" "$S1" "$T0" "$DRY" <<'EOF'
import json, sys, time
import xml.etree.ElementTree as ET
from pathlib import Path
import pandas as pd

work, out, s0, s1, t0, dry = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), \
    float(sys.argv[5]), sys.argv[6] == "1"
res = {"dry_run_on_cpu": dry}
try:
    suite = ET.parse(work / "gpu-tests.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    res["gpu_tests"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
except (OSError, ET.ParseError) as e:
    res["gpu_tests"] = {"error": str(e)}
res["gpu_tests"]["exit_status"] = int((work / "tests.rc").read_text())
tp = work / "throughput.json"
res["throughput"] = json.loads(tp.read_text()) if tp.exists() else {}
res["throughput"]["exit_status"] = int((work / "throughput.rc").read_text())
study = {"exit_status": int((work / "study.rc").read_text()), "wall_s": s1 - s0}
csv = work / "study" / "taskE" / "trials.csv"
if csv.exists():
    t = pd.read_csv(csv)
    study.update(trials=len(t), states=t.state.value_counts().to_dict(), sum_trial_wall_s=float(t.wall_s.sum()),
                 epochs=int(t.epochs.max()) if "epochs" in t else None,
                 train_images_per_trial_epoch=int(t.n_train.max()) if "n_train" in t else None)
else:
    study["log_tail"] = (work / "study.log").read_text()[-2000:]
res["taske_study"] = study
res["total_s"] = time.time() - t0
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(res, indent=1))
print(json.dumps(res, indent=1))
EOF
echo "figures: $OUT_JSON" >&2
