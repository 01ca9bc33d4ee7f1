"""Fixtures and helpers the test modules share (import the plain helpers: `from conftest import ...`)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

# Ray must stay on loopback; the variable only works when set before ray is imported.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
# The suite runs two test processes on two cores (-n 2), each starting drivers and Ray workers: one
# torch thread per process (Ray gives its workers one per CPU they hold). Two threads per process
# oversubscribed the cores, and OpenMP's spinning threads slowed a training loop 3-15x under load.
# Read by torch when it loads, so set before anything imports it; subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

# `pytest -m gpu` runs the GPU tests (tests/test_gpu.py: torch, torchvision and tlstudy.training only).
GPU_RUN = "gpu"


def pytest_configure(config):
    """Outside `pytest -m gpu` the suite hides CUDA, so it passes unchanged on a GPU machine: `auto`
    means the CPU, a new study's profile is quick, trials find no GPU. Set before anything starts
    CUDA; the subprocesses and Ray workers of the tests inherit it."""
    if config.getoption("markexpr", "").strip() != GPU_RUN:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


# The files that run Ray studies, longest first (seconds on a 2-core machine, suite of Dec 2026).
# With --dist loadfile the two workers take whole files in collection order; alphabetical order
# left the longest files for last, and one worker ran on ~45 s after the other had finished.
# Longest first, the two finish together. Only the order changes, never what runs.
LONGEST_FIRST = [
    "test_reliability.py",  # 238
    "test_postgres.py",  # 105
    "test_study.py",  # 83
    "test_cluster.py",  # 82
    "test_placement.py",  # 58
    "test_rounds.py",  # 54
    "test_analysis.py",  # 50
    "test_throughput.py",  # 27
]


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's own order stays


ROOT = Path(__file__).parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
XRAYS = FIXTURES / "chest_xray_sample"
# A study small enough for a test: 16 px phantoms, 48 training images, 3 epochs.
TINY = ["--image-size", "16", "--phantom-sizes", "48,40,40", "--max-train", "48", "--epochs", "3"]
# Two cells: resnet18 from scratch with 2 or 3 outputs.
SMALL_SPACE = '''"""Two cells: resnet18 from scratch with 2 or 3 outputs."""
from ray import tune
from tlstudy.spaces import training_space
FIXED = dict(arch="resnet18", weights="none")
CELLS = [dict(out_features=2), dict(out_features=3)]
PARAM_SPACE = {**training_space(), "out_features": tune.choice([2, 3])}
'''


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path, monkeypatch):
    """Each test gets its own data cache and an empty torchvision weights cache."""
    monkeypatch.setenv("TLSTUDY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


@pytest.fixture
def xray_folder(tmp_path):
    """The 16 real X-rays in the chest_xray layout: per class 4 train, 1 val, 3 test."""
    root = tmp_path / "chest_xray"
    for cls in ("NORMAL", "PNEUMONIA"):
        files = sorted((XRAYS / cls).glob("*.jpeg"))
        for split, part in (("train", files[:4]), ("val", files[4:5]), ("test", files[5:])):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for f in part:
                shutil.copy(f, root / split / cls / f.name)
    return root


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole test session (or xdist worker), sized for 2 cores, on loopback."""
    import ray

    # address="local": otherwise ray.init joins any Ray already running on the machine.
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


# ---------------------------------------------------------------- plain helpers


def balanced_phantom(size=32):
    """Phantoms with half of each class, so that chance is 50 % on every split (train 320, val and
    test 100). Imports only torch and the data layer: tests/test_gpu.py uses it too."""
    import torch

    from tlstudy.data import phantom
    from tlstudy.data.splits import Splits

    x, y = {}, {}
    for i, (split, n) in enumerate((("train", 320), ("val", 100), ("test", 100))):
        a, b = phantom.make_split(n, size, 10 + i, shifted=(split == "test"), normal_fraction=0.5)
        x[split], y[split] = torch.from_numpy(a), torch.from_numpy(b)
    return Splits(x, y, ["NORMAL", "PNEUMONIA"], "phantom (balanced)", "test")


def load_data(source, image_size, *, phantom_sizes=(180, 100, 200), use_cache=True, **settings):
    """tlstudy.data.splits.load of a source at a size, the other DataSettings as keywords."""
    from tlstudy.data import splits
    from tlstudy.settings import DataSettings

    return splits.load(
        DataSettings(source=str(source), image_size=image_size, phantom_sizes=tuple(phantom_sizes), **settings),
        use_cache=use_cache,
    )


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_study(results, name):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{results / 'optuna.db'}")


def write_space(folder, name, text):
    """A space file in folder/search_spaces/, found by name as a user's own space would be."""
    (folder / "search_spaces").mkdir(exist_ok=True)
    (folder / "search_spaces" / f"{name}.py").write_text(text)


def start(folder, args, log):
    """study/run.py ARGS in a session of its own (its Ray with it), so a test can SIGKILL them together."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "study" / "run.py"), *args],
        cwd=folder,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def run_to_end(folder, launch):
    """launch(log) a driver logging to folder/driver.log, and check that it ends with status 0."""
    with open(folder / "driver.log", "a") as log:
        proc = launch(log)
        try:
            assert proc.wait(timeout=600) == 0, (folder / "driver.log").read_text()[-3000:]
        finally:
            kill_group(proc)


def survivors(pgid):
    r = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True)
    return r.stdout.split()


def kill_group(proc):
    """SIGKILL the driver's whole session (Ray's raylet, GCS and workers too), and check nothing survives."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)
    deadline = time.time() + 30
    while survivors(proc.pid) and time.time() < deadline:
        time.sleep(0.2)
    assert not survivors(proc.pid), survivors(proc.pid)


def train_model_file(path, data, **config):
    """Train a trial on `data` (tlstudy.training.loop.fit) and write its model file as a study's
    trainable does; returns (path, the last epoch's record, the header written)."""
    from tlstudy.names import KEPT_WEIGHTS, SUMMARY
    from tlstudy.settings import TrialConfig
    from tlstudy.training import loop, modelfile

    trial = TrialConfig(**{"arch": "resnet18", "weights": "none", "epochs": 1, "lr": 0.01, **config})
    *_, last = loop.fit(trial, data)
    header = modelfile.describe(trial, data.info(), last[SUMMARY])
    modelfile.save(path, last[KEPT_WEIGHTS], header)
    return path, last, header


def small_model_file(path):
    """A model file of a small torchvision network (mobilenet_v3_small, random weights)."""
    from tlstudy.settings import TrialConfig
    from tlstudy.training import modelfile, models

    config = TrialConfig(arch="mobilenet_v3_small", weights="none")
    model, source = models.build(config.arch, "none", 2)
    info = dict(classes=["NORMAL", "PNEUMONIA"], image_size=32, data_source="phantom", data_fingerprint="0" * 16)
    return modelfile.save(path, model.state_dict(), modelfile.describe(config, info, {"weights_source": source}))
