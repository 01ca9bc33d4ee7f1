import os
import shutil
from pathlib import Path

# Ray must stay on loopback; the variable only works when set before ray is imported.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import pytest  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
XRAYS = FIXTURES / "chest_xray_sample"


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
    """One local Ray for the whole test session, sized for 2 cores, on loopback."""
    import ray
    # address="local": otherwise ray.init joins any Ray already running on the machine.
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()
