"""What a study costs on this machine, stated beside a reference step measured in the same run.

    python bench/study_cost.py                               # the default study: tlstudy run --space taskE
    python bench/study_cost.py --space taskA -- --seeds 2    # another study; flags after -- go to tlstudy run
    python bench/study_cost.py --src /tmp/main/src --src src # the same study with two checkouts, back to back
    python bench/study_cost.py --src OLD --src NEW --src OLD --src NEW   # alternating: drift falls on both

The machines this project runs on drift (the same training step took 143, then 283, then 350 ms
within 15 minutes on one idle machine), so an absolute time says little alone. This command
times a fixed reference step (resnet18, 32 px, batch 16, one thread, SGD: a quick-profile
training step) before and after each study, runs the study in a fresh results folder, and
prints the CPU kind, the reference step time, the study's wall time and their ratio. With
several --src folders it runs the same study with each checkout's tlstudy, one after the
other, each between reference steps: the pair's ratio of wall times is the comparison.
Prints a table and a JSON line (RESULT ...).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_kind():
    """The CPU model, whether it has native bf16 (AVX512-BF16 or AMX), and torch's kernel level."""
    import torch

    flags, model = "", platform.processor() or "cpu"
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name"))
        flags = next(line for line in text.splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    native = " avx512_bf16" in flags or " amx_bf16" in flags
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "avx512_bf16": native,
        "torch_kernels": torch.backends.cpu.get_cpu_capability(),
        "held": {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if k in os.environ},
    }


def reference_step(steps=20, warmup=3):
    """Median seconds of one training step of resnet18 at 32 px, batch 16, one thread, fp32."""
    import torch
    import torchvision

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = torchvision.models.resnet18(num_classes=2).train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 2, (16,))
        times = []
        for i in range(warmup + steps):
            t = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i >= warmup:
                times.append(time.perf_counter() - t)
        return statistics.median(times)
    finally:
        torch.set_num_threads(before)


def run_study(src, space, flags, results):
    """Wall seconds of `tlstudy run` with the tlstudy of `src` (None: the installed one) and its exit status."""
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    if src:
        env["PYTHONPATH"] = str(Path(src).resolve()) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "tlstudy", "run", "--space", space, "--results", str(results), *flags]
    t = time.perf_counter()
    with open(results.parent / f"{results.name}.log", "w") as log:
        code = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    return time.perf_counter() - t, code


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--space", default="taskE")
    p.add_argument(
        "--src",
        action="append",
        help="a checkout's src/ folder whose tlstudy runs the study "
        "(repeatable: back to back; default: the installed tlstudy)",
    )
    p.add_argument("--keep", help="keep the results folders here (default: a temporary folder)")
    p.add_argument("flags", nargs="*", help="after --: flags for tlstudy run")
    args = p.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="tlstudy-cost-"))
    work.mkdir(parents=True, exist_ok=True)
    # A fresh data cache: every run decodes its data the same way, none finds another's features.
    os.environ.setdefault("TLSTUDY_CACHE_DIR", str(work / "cache"))
    out = {**cpu_kind(), "space": args.space, "flags": args.flags, "runs": []}
    print(
        f"cpu: {out['cpu']}, {out['cores']} cores, avx512_bf16 {out['avx512_bf16']}, torch kernels "
        f"{out['torch_kernels']}{' (held: ' + str(out['held']) + ')' if out['held'] else ''}",
        flush=True,
    )
    ref = reference_step()
    for i, src in enumerate(args.src or [None]):
        wall, code = run_study(src, args.space, args.flags, work / f"run{i}")
        after = reference_step()
        row = {
            "src": src or "installed",
            "wall_s": round(wall, 1),
            "exit_status": code,
            "ref_step_before_ms": round(1000 * ref, 1),
            "ref_step_after_ms": round(1000 * after, 1),
            "wall_in_ref_steps": round(wall / statistics.mean([ref, after])),
        }
        out["runs"].append(row)
        print(
            f"{row['src']}: {args.space} {row['wall_s']} s (exit {code}); reference step {row['ref_step_before_ms']} "
            f"-> {row['ref_step_after_ms']} ms; wall = {row['wall_in_ref_steps']} reference steps",
            flush=True,
        )
        ref = after
    # Alternating runs (--src A --src B --src A --src B) spread the machine's drift over both sides:
    # each side's mean wall time, and the ratio of every later side's mean to the first side's.
    sides = {}
    for row in out["runs"]:
        sides.setdefault(row["src"], []).append(row["wall_s"])
    out["mean_wall_s"] = {k: round(statistics.mean(v), 1) for k, v in sides.items()}
    first, *others = out["mean_wall_s"]
    for src in others:
        ratio = round(out["mean_wall_s"][src] / out["mean_wall_s"][first], 3)
        out.setdefault("ratio_to_first", {})[src] = ratio
        print(f"{src} / {first}: {ratio} (mean of {len(sides[src])} and {len(sides[first])} runs)")
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
