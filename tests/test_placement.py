"""Where trials run and how they share a GPU, on the CPU: the device each trial resolves to under Ray
(with Ray's logical GPUs), the cluster's defaults, the numerics per device, the memory estimate and
the packing arithmetic built on it."""

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace

import pytest
import torch
from torchvision.models import get_model

from tlstudy import spaces
from tlstudy.cli.parsers import subparser
from tlstudy.errors import UserError
from tlstudy.settings import TrialConfig, resolve_study
from tlstudy.study import placement
from tlstudy.training import device as devices
from tlstudy.training import feature_cache, loop, memory

from conftest import kill_group, load_data

GiB = 2**30

# Ray with two logical GPUs: an actor per grant, as Tune's trials are, asks the resolver for its
# device without training anything. CUDA_VISIBLE_DEVICES names two devices no machine has, so that
# Ray counts two and torch finds none, here and on a GPU machine alike.
LOGICAL_GPUS = textwrap.dedent("""
    import contextlib, io, json, os, sys
    import ray
    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, logging_level="WARNING")
    from tlstudy import cli
    from tlstudy.study import placement

    @ray.remote
    class Trial:
        def device(self, requested):
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            return placement.granted_device(requested), placement.granted_share(), visible

    out, trials = {}, {}
    for gpus in (0, 0.25, 1):
        trials[gpus] = Trial.options(num_cpus=0, num_gpus=gpus).remote()
        out[str(gpus)] = ray.get(trials[gpus].device.remote("auto"))
    try:  # the trial granted no GPU, asking for cuda
        ray.get(trials[0].device.remote("cuda"))
    except ray.exceptions.RayTaskError as e:
        out["cuda without a GPU"] = str(e)
    out["gpus"] = placement.gpus()
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):  # a new study on this cluster, as tlstudy run resolves it
        cli.main(["run", "--space", "taskE", "--results", sys.argv[1], "--show-config"])
    out["show_config"] = shown.getvalue()
    out["probe"] = placement.probe(timeout=60)
    print(json.dumps(out))
""")


def test_each_trial_resolves_to_the_device_ray_granted_it(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "98,99"}
    # A session of its own: whatever happens, its Ray goes with it (kill_group checks).
    proc = subprocess.Popen(
        [sys.executable, "-c", LOGICAL_GPUS, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        kill_group(proc)
    assert proc.returncode == 0, stderr[-3000:]
    out = json.loads(stdout.splitlines()[-1])
    # Granted no GPU: the CPU, though CUDA_VISIBLE_DEVICES still names the node's GPUs (Ray 2.60
    # leaves it as the worker found it: torch alone would take cuda:0).
    assert out["0"] == ["cpu", 0.0, "98,99"]
    # Granted a share or a whole GPU: CUDA, on the GPU Ray picked (it sets the variable for those).
    assert out["0.25"][:2] == ["cuda", 0.25] and out["0.25"][2] in ("98", "99")
    assert out["1"][:2] == ["cuda", 1.0] and out["1"][2] in ("98", "99")
    assert "granted this trial no GPU" in out["cuda without a GPU"]
    # The cluster's GPUs, not this process's torch (which sees none), make a new study's profile full.
    assert out["gpus"] == 2.0 and "profile full: image_size=224, epochs=30" in out["show_config"]
    assert "gpus per trial from the cluster at its start" in out["show_config"]
    assert out["probe"] is None  # a logical GPU has no CUDA behind it: one trial per GPU, said so


def test_without_gpus_trials_run_on_the_cpu_and_a_new_study_is_quick(ray_local):
    @ray_local.remote(num_gpus=0)
    def device():
        return placement.granted_device("auto"), placement.granted_share()

    assert ray_local.get(device.remote()) == ("cpu", 0.0)
    assert placement.gpus() == 0.0 and placement.default_profile(placement.gpus()) == "quick"
    space, settings = study("taskE", "quick")
    assert placement.with_gpus(settings, space, images=480).gpus_per_trial == 0.0
    fixed_cuda = replace(settings, shared={**settings.shared, "device": "cuda"})
    with pytest.raises(UserError, match="fixes device cuda"):
        placement.with_gpus(fixed_cuda, space, images=480)


def test_default_concurrency_is_what_the_cluster_fits():
    assert placement.slots({"CPU": 2.0}, {"cpu": 1, "gpu": 0}) == 2
    assert placement.slots({"CPU": 16.0, "GPU": 1.0}, {"cpu": 1, "gpu": 0.25}) == 4
    assert placement.slots({"CPU": 2.0, "GPU": 1.0}, {"cpu": 1, "gpu": 0.25}) == 2
    assert placement.slots({"CPU": 1.0}, {"cpu": 2, "gpu": 0}) == 1  # Ray queues it; never 0


def test_trials_per_gpu_and_their_memory_caps():
    ctx = placement.CONTEXT
    assert placement.trials_per_gpu(16 * GiB, 2 * GiB) == 4  # the cap: more trials add no throughput
    assert placement.trials_per_gpu(16 * GiB, 6 * GiB) == 2  # 15.2 GiB usable / (6 + 0.75)
    assert placement.trials_per_gpu(16 * GiB, int(15.2 * GiB - ctx) + 1) == 1
    assert placement.trials_per_gpu(8 * GiB, 40 * GiB) == 1  # never 0: one trial, and its own error
    assert placement.memory_fraction(0.25, 80 * GiB) == pytest.approx(0.25 - 0.75 / 80)
    assert placement.memory_fraction(1.0, 80 * GiB) is None and placement.memory_fraction(0.0, 80 * GiB) is None
    assert placement.memory_fraction(0.5, 1 * GiB) == 0.25  # a context larger than the share: half of it


def study(name, profile):
    """A new study's settings, as `tlstudy run --space NAME --profile PROFILE` resolves them."""
    space = spaces.load(name)
    flags = vars(subparser("run").parse_args(["--space", name]))
    return space, resolve_study(space.summary(), profile, {**flags, "storage": "", "command": ""})


KERMANY = 5216 + 522 + 624
# torch.cuda.get_device_properties().total_memory of an 80 GB A100 or H100 and of a 16 GB T4.
GPU_80GB, GPU_16GB = 85.0e9, 15.8e9


@pytest.mark.parametrize(
    "task, arch, per_gpu",
    # What the README's GPU section says the defaults give: {GPU: trials per GPU}.
    [("taskE", "resnet18", {GPU_80GB: 4, GPU_16GB: 2}), ("taskB", "resnet101", {GPU_80GB: 4, GPU_16GB: 1})],
)
def test_the_largest_trial_of_a_study_sets_its_packing(task, arch, per_gpu):
    space, settings = study(task, "full")
    peak, what = placement.largest_trial(space, settings, KERMANY, "bf16")
    # taskE: resnet18 at its largest batch (64) with the input tiled three times in height.
    assert what.startswith(f"{arch} at batch 64, ") and ("224x672" in what) == (task == "taskE")
    assert peak.data == KERMANY * 224 * 224
    assert {gpu: placement.trials_per_gpu(int(gpu), peak.total) for gpu in per_gpu} == per_gpu, peak


def real_saved_bytes(model, x):
    """What autograd saves in a real forward pass on the CPU, each storage once, the weights not."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in weights:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(storages.values())


@pytest.mark.parametrize("arch", ["resnet18", "resnext50_32x4d"])
def test_the_estimate_counts_what_a_real_training_step_saves(arch):
    torch.manual_seed(0)
    model = get_model(arch, num_classes=2).train()
    real = real_saved_bytes(model, torch.randn(4, 3, 96, 32))
    with torch.device("meta"):
        meta = get_model(arch, num_classes=2)
    assert memory._saved(meta, memory._input(4, 32, (1, 3, 3, 1), torch.float32))[0] == real
    one, three = (memory.estimate(arch, 16, 224, (1, 3, r, 1), amp="off") for r in (1, 3))
    assert three.activations == pytest.approx(3 * one.activations, rel=0.02)  # tiling in height triples them
    bf16 = memory.estimate(arch, 16, 224, (1, 3, 1, 1), amp="bf16")
    # Half the bytes in bf16, but for the stem's max-pool indices (int64, batch x 64 x 56 x 56), which keep theirs.
    indices = 16 * 64 * 56 * 56 * 8
    assert bf16.activations == pytest.approx((one.activations + indices) / 2, rel=1e-3)
    assert memory.estimate(arch, 64, 224, (1, 3, 1, 1), amp="off").activations == pytest.approx(
        4 * one.activations, rel=1e-3
    )


def test_numerics_per_device_and_how_they_are_asked_for():
    cpu = torch.device("cpu")
    auto = "bf16" if devices.native_bf16(cpu) else "off"
    assert devices.numerics("auto", "auto", cpu) == devices.Numerics(auto, auto != "off")
    assert devices.numerics("on", "auto", cpu) == devices.numerics(True, "auto", cpu) == devices.Numerics("bf16", True)
    assert devices.numerics(False, "on", cpu) == devices.Numerics("off", True)
    fp16 = devices.numerics("fp16", "off", cpu)
    assert (fp16.dtype, fp16.fmt) == (torch.float16, torch.contiguous_format)
    assert isinstance(devices.scaler(cpu, fp16), torch.amp.GradScaler)
    assert devices.scaler(cpu, devices.Numerics("bf16", True)) is None  # bf16 has fp32's range
    assert TrialConfig(amp="fp16").amp == "fp16"
    with pytest.raises(UserError, match="amp 'fp8' is not one of auto, bf16, fp16, on, off"):
        TrialConfig(amp="fp8")


def test_an_fp16_trial_trains_with_its_gradient_scaler_and_keys_its_own_features():
    data = load_data("phantom", 16, seed=0, phantom_sizes=(48, 40, 40), min_val=0, use_cache=False)
    cfg = dict(weights="none", epochs=2, batch_size=16, device="cpu")
    fp16 = list(loop.fit(TrialConfig(**cfg, amp="fp16"), data))[-1]["summary"]
    assert fp16["amp"] == "fp16" and fp16["channels_last"] and fp16["test_best_total"] == 40
    run = loop.RunContext(torch.device("cpu"), None, torch.contiguous_format, "frozen", "eval", True)
    key = lambda run: feature_cache.key(data.x["val"], (1, 3, 1, 1), TrialConfig(mode="frozen"), "none", run)
    keys = {key(replace(run, dtype=dtype)) for dtype in (None, torch.bfloat16, torch.float16)}
    assert len(keys) == 3  # the features of each autocast dtype are cached apart
