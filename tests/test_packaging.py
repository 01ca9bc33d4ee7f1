"""The wheel carries what the installed `tlstudy` needs outside a checkout: the search spaces,
the report's reference numbers, the console command, the license."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_the_wheel_ships_the_spaces_the_reference_and_the_command(tmp_path):
    # Built from a copy: an in-tree build would leave build/ and *.egg-info in the checkout.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("src", "search_spaces", "reference"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    [wheel] = (tmp_path / "dist").glob("tlstudy-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    spaces = {p.name for p in (ROOT / "search_spaces").glob("*.py")}
    assert spaces and {f"tlstudy/search_spaces/{s}" for s in spaces} <= names
    csvs = {p.name for p in (ROOT / "reference").glob("*.csv")}
    assert "homework4.csv" in csvs and {f"tlstudy/reference/{c}" for c in csvs} <= names
    # Every module of every layer (the subpackages must be listed in pyproject.toml's packages).
    modules = {p.relative_to(ROOT / "src").as_posix() for p in (ROOT / "src" / "tlstudy").rglob("*.py")}
    assert "tlstudy/cli/submit.py" in modules and modules <= names, modules - names
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    entry_points = zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode()
    assert "tlstudy = tlstudy.cli:main" in entry_points
    assert any(n.startswith(f"{dist_info}/licenses/LICENSE") for n in names)
    assert "License-Expression: MIT" in zipfile.ZipFile(wheel).read(f"{dist_info}/METADATA").decode()
