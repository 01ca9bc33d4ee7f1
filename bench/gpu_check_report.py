"""bench/gpu_check.sh's last steps: `summary WORK OUT.json TOTAL_S` gathers what the measuring steps
(bench/gpu_check.py) wrote into WORK into one JSON and a digest; `verify OUT.json` judges it (exit 0
when every step ended well, nothing loaded the study layer's packages, the GPU tests passed and the
trials left their epoch times; else 1, saying why). The standard library only.
"""

import json
import sys
from pathlib import Path


def write(path: Path, obj: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    tmp.replace(path)


def summary(work: Path, out: Path, total_s: float) -> None:
    """One JSON of every step: its exit status and time, and what it measured; packing's gain."""
    res: dict = {}
    for name in ("info", "data", "throughput", "trials1", "trials4"):
        path = work / f"{name}.json"
        res[name] = json.loads(path.read_text()) if path.exists() else None
    res["steps"] = {}
    for line in (work / "steps").read_text().splitlines():
        name, rc, limit, ms = line.split()
        res["steps"][name] = dict(exit=int(rc), limit_s=int(limit), seconds=round(int(ms) / 1000, 1))
    res["gpu_tests"] = _junit(work / "gpu_tests.xml")
    one, four = res["trials1"], res["trials4"]
    if one and four and one["trials"][0].get("epoch_s") and all(t.get("epoch_s") for t in four["trials"]):
        single, packed = one["trials"][0], four["trials"]
        last = lambda t: t["epoch_s"][-1]  # noqa: E731  (the first epoch holds cuDNN's autotuning)
        res["packing"] = dict(
            gain_epoch=round(4 * last(single) / (sum(map(last, packed)) / 4), 2),
            gain_wall=round(4 * single["wall_s"] / four["block_wall_s"], 2),
            note="work per second with four trials sharing the device, against one alone: the last epoch's "
            "time (gain_epoch) and the processes' wall time, start-up included (gain_wall)",
        )
    res["forbidden_imports"] = sorted(
        {m for r in res.values() if isinstance(r, dict) for m in r.get("forbidden_imports", [])}
        | {m for t in (one or {}).get("trials", []) + (four or {}).get("trials", []) for m in t["forbidden_imports"]}
    )
    res["total_s"] = round(total_s, 1)
    write(out, res)
    digest = [f"{k}: exit {v['exit']}, {v['seconds']} s of {v['limit_s']}" for k, v in res["steps"].items()]
    digest += [f"info: {res['info']}", f"gpu tests: {res['gpu_tests']}", f"packing: {res.get('packing')}"]
    for r in (res["throughput"] or {}).get("rows", []):
        digest.append("  " + " ".join(f"{k}={v}" for k, v in r.items()))
    digest.append(f"throughput skipped (time): {len((res['throughput'] or {}).get('skipped', []))}")
    for n in ("trials1", "trials4"):
        for t in (res[n] or {}).get("trials", []):
            digest.append(f"{n}: " + " ".join(f"{k}={v}" for k, v in t.items()))
        digest.append(f"{n} nvidia-smi: {(res[n] or {}).get('nvidia_smi')}")
    digest.append(f"forbidden imports: {res['forbidden_imports']}; total {res['total_s']} s")
    (work / "digest.txt").write_text("\n".join(digest) + "\n")
    print("\n".join(digest))


def verify(path: Path) -> int:
    """0 when every step of a gpu_check.json ended well and nothing imported Ray or Optuna; else 1, saying why."""
    res = json.loads(path.read_text())
    wrong = [f"step {k} exited {v['exit']}" for k, v in res["steps"].items() if v["exit"] != 0]
    wrong += [f"imported {', '.join(res['forbidden_imports'])}"] if res["forbidden_imports"] else []
    t = res["gpu_tests"]
    wrong += [f"GPU tests: {t}"] if "error" in t or t["failures"] or t["errors"] else []
    if res["info"]["mode"] == "gpu" and "error" not in t and t["skipped"] == t["tests"]:
        wrong.append("GPU tests: every one skipped on a GPU machine (pytest saw no CUDA)")
    # A row out of memory is a figure (that batch does not fit this GPU); a diverged one is not.
    rows = (res["throughput"] or {}).get("rows", [])
    wrong += [f"throughput row {r}" for r in rows if "error" in r and "out of memory" not in r["error"]]
    for n in ("trials1", "trials4"):
        wrong += [f"{n}: a trial exited {t['exit']}" for t in (res[n] or {}).get("trials", []) if t["exit"] != 0]
    wrong += [] if res.get("packing") else ["the trials left no epoch times"]
    print("\n".join(wrong) or f"gpu_check: every step passed ({res['info']['mode']} mode, {res['total_s']} s)")
    return 1 if wrong else 0


def _junit(path: Path) -> dict:
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        return {"error": str(e)}
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = [
        c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None or c.find("error") is not None
    ]
    return {**counts, "failed": failed}


if __name__ == "__main__":
    if sys.argv[1] == "summary":
        summary(Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4]))
    else:
        sys.exit(verify(Path(sys.argv[2])))
