"""The GPU tests: `pytest -m gpu tests/test_gpu.py` (bench/gpu_check.sh runs them). They import only
torch, torchvision and tlstudy's training and data layers, so they run where Ray and Optuna are not
installed. Without CUDA, and outside `-m gpu` (where the suite hides CUDA), they are skipped."""

import os
import warnings

import pytest
import torch
from torchvision.models import get_model

from tlstudy.settings import TrialConfig
from tlstudy.training import device as devices
from tlstudy.training import loop, memory, models, throughput

from conftest import balanced_phantom, load_data

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (outside -m gpu the suite hides it)"),
]
CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def balanced32():
    return balanced_phantom()


def native(amp):
    return amp != "bf16" or devices.native_bf16(CUDA)


@pytest.mark.parametrize("amp", ["auto", "bf16", "fp16", "off"])
def test_cuda_trial_trains_with_each_numerics(balanced32, amp):
    if not native(amp):
        pytest.skip("no native bf16 on this GPU")
    cfg = TrialConfig(weights="none", epochs=2, batch_size=32, augment=True, device="cuda", amp=amp)
    s = list(loop.fit(cfg, balanced32))[-1]["summary"]
    want = devices.auto_amp(CUDA) if amp == "auto" else amp
    assert s["device"] == "cuda"
    assert s["amp"] == want and s["channels_last"] == (want != "off")
    assert s["test_best_total"] == 100 and s["best_train_acc"] > 0.5 and 0 < s["gpu_peak_gb"] < 4


def test_auto_picks_bf16_only_where_native():
    native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    older = torch.cuda.get_device_capability() < devices.FP16_CAPABILITY
    assert devices.auto_amp(CUDA) == ("bf16" if native_bf16 else "off" if older else "fp16")


def count_syncs(fn):
    """How many times fn() made the host wait for the GPU (torch's sync debug mode)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


@pytest.mark.parametrize("amp", ["auto", "fp16"])
def test_no_batch_waits_for_the_host(amp):
    """A few syncs per epoch (the shuffled order, the epoch's loss and accuracy), none per batch:
    an epoch of 4 batches and one of 16 sync as often, in training (with fp16's scaler, fused) and in
    evaluation."""
    n = devices.numerics(amp, "auto", CUDA)
    model = models.build("resnet18", "none", 2)[0].to(CUDA, memory_format=n.fmt)
    cfg = TrialConfig(batch_size=16, augment=True)
    run = loop.RunContext(CUDA, n.dtype, n.fmt, "finetune", "eval", False, devices.scaler(CUDA, n))
    optimizer = models.make_optimizer(cfg, list(model.parameters()), fused=True)
    x = torch.randint(0, 256, (512, 1, 32, 32), dtype=torch.uint8, device=CUDA)
    y = torch.randint(0, 2, (512,), device=CUDA)
    gen = torch.Generator().manual_seed(0)
    train = lambda k: loop.train_epoch(model, x[:k], y[:k], optimizer, cfg, (1, 3, 1, 1), gen, run)
    evaluate = lambda k: loop.evaluate(model, x[:k], y[:k], (1, 3, 3, 1), run)
    train(64), evaluate(128)  # cuDNN's autotuning, the allocator's first blocks
    assert count_syncs(lambda: train(64)) == count_syncs(lambda: train(256)) <= 3
    assert count_syncs(lambda: evaluate(128)) == count_syncs(lambda: evaluate(512)) <= 3


def test_cached_features_on_cuda_give_the_uncached_metrics():
    """The GPU's side of tests/test_feature_cache.py: bf16 and TF32 kernels round differently for
    other batch sizes (16 vs 128), so the losses agree to 2 % where a prediction may flip."""
    path = models.weights_file("resnet18", "IMAGENET1K_V1")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.manual_seed(123)
    torch.save(get_model("resnet18").state_dict(), path)
    splits = load_data("phantom", 16, seed=0, phantom_sizes=(64, 48, 32), min_val=0, use_cache=False)
    base = dict(arch="resnet18", weights="IMAGENET1K_V1", weights_policy="strict", mode="frozen", device="cuda")
    base.update(epochs=2, batch_size=16, lr=0.05, step_size=1, train_repeat="1,3,3,1")
    plain = list(loop.fit(TrialConfig(**base, feature_cache="off"), splits))
    cached = list(loop.fit(TrialConfig(**base), splits))
    assert plain[-1]["summary"]["feature_cache"] == "off" and cached[-1]["summary"]["feature_cache"] == "built"
    for p, c in zip(plain, cached):
        assert c["train_loss"] == pytest.approx(p["train_loss"], rel=2e-2)
        assert c["val_loss"] == pytest.approx(p["val_loss"], rel=2e-2)


def test_memory_cap_holds_and_the_cache_is_handed_back():
    total = torch.cuda.get_device_properties(CUDA).total_memory
    torch.cuda.empty_cache()  # what earlier tests cached would count against the cap
    with devices.memory_cap(CUDA, 0.05):
        kept = torch.empty(int(total * 0.02), dtype=torch.uint8, device=CUDA)
        with pytest.raises(torch.OutOfMemoryError):
            torch.empty(int(total * 0.06), dtype=torch.uint8, device=CUDA)
        del kept
    assert torch.cuda.memory_reserved(CUDA) - torch.cuda.memory_allocated(CUDA) < 64 * 2**20
    big = torch.empty(int(total * 0.06), dtype=torch.uint8, device=CUDA)  # the cap ended with the trial
    del big


@pytest.mark.parametrize("batch, repeat", [(64, "1,3,1,1"), (16, "1,3,3,1")])
def test_memory_estimate_covers_the_measured_peak_without_waste(batch, repeat):
    """What packing relies on: a resnet18 trial's real peak at 224 px is under its estimate, and
    the estimate is not so loose that packing would waste the GPU."""
    n = devices.numerics("auto", "auto", CUDA)
    images = 4 * batch
    x = torch.randint(0, 256, (images, 1, 224, 224), dtype=torch.uint8, device=CUDA)
    y = torch.randint(0, 2, (images,), device=CUDA)
    model = models.build("resnet18", "none", 2)[0].to(CUDA, memory_format=n.fmt)
    cfg = TrialConfig(batch_size=batch)
    optimizer = models.make_optimizer(cfg, list(model.parameters()), fused=True)
    run = loop.RunContext(CUDA, n.dtype, n.fmt, "finetune", "eval", False, devices.scaler(CUDA, n))
    devices.prepare(CUDA)
    for _ in range(2):  # the second pass measured: the first holds cuDNN's autotuning, whose trial
        # workspaces take what the allocator can give (under a trial's memory cap, what its share leaves)
        torch.cuda.reset_peak_memory_stats(CUDA)
        loop.train_epoch(model, x, y, optimizer, cfg, models.parse_repeat(repeat), torch.Generator(), run)
        loop.evaluate(model, x, y, models.parse_repeat(repeat), run)
    measured = torch.cuda.max_memory_allocated(CUDA)
    factors = models.parse_repeat(repeat)
    eval_batch = min(loop.EVAL_BATCH, images)
    est = memory.estimate("resnet18", batch, 224, factors, factors, n.amp, images=images, eval_batch=eval_batch).total
    assert measured < est < 3 * measured, (measured / 2**30, est / 2**30)


def test_claim_timing_runs_on_the_gpu():
    rows = throughput.interleaved(["resnet18"], 64, rounds=2, steps=2, warmup=1, device="cuda")
    assert len(rows) == 2 and rows[0]["device"] == torch.cuda.get_device_name()
    assert {r["device_type"] for r in rows} == {"cuda"} and len({r["pid"] for r in rows}) == 2
    assert rows[0]["amp"] == devices.auto_amp(CUDA) and all(r["s_per_step"] > 0 for r in rows)
