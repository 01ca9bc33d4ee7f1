"""Search spaces: one plain Python file per task in search_spaces/.

A space file defines
- PARAM_SPACE: a Ray Tune param space (tune.choice, tune.loguniform, ...) over the fields of
  tlstudy.settings.TrialConfig;
- FIXED: the task's fixed trial settings;
- CELLS: the variant cells that every study must cover, each a dict of values of
  PARAM_SPACE's categorical parameters (the report's table rows);
- optionally QUICK / FULL: overrides of the run profiles (tlstudy.settings.PROFILES);
- or, instead of all that, COMPARE = ("taskB", "taskC"): a space that runs no trials
  of its own and compares other studies (task D).
Its docstring's first line is its one-line description. `--space NAME` looks for
NAME.py in ./search_spaces/ (the working directory's), then among the spaces the package
ships; `--space path/to/file.py` loads any file. The package ships the report's reference
numbers the same way (`shipped`).

Finding, listing and describing spaces is light (no Ray, no torch: the command line
checks --space before its heavy imports); only `load`, which executes the file, and
`training_space` import Ray. A loaded space's `summary()` is what the study stores, with the
file's hash, so that a rerun with the same file compares its settings without loading it.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import itertools
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from tlstudy.errors import UserError
from tlstudy.settings import DEFAULTS

_CHECKOUT = Path(__file__).resolve().parents[2]  # src/tlstudy/ -> the checkout, in a checkout


@dataclass(frozen=True)
class Cell:
    """A variant cell: the values of the space's cell parameters, in the space's order."""

    items: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, values: dict[str, Any]) -> Cell:
        return cls(tuple(values.items()))

    @classmethod
    def parse(cls, text: str) -> Cell:
        """A cell from its label ("arch=resnet101; weights=IMAGENET1K_V1"; ";" alone also works): values as text."""
        return cls(tuple(tuple(p.strip().split("=", 1)) for p in str(text).split(";") if p.strip()))  # type: ignore[misc]

    def label(self) -> str:
        """The cell as stored and shown: "out_features=2; train_repeat=1,3,1,1", or "all" for a space without cells."""
        return "; ".join(f"{k}={v}" for k, v in self.items) or "all"

    def as_dict(self) -> dict[str, Any]:
        return dict(self.items)


def shipped(packaged: str, in_checkout: str) -> Path:
    """A folder the package ships: inside an installed wheel (tlstudy/<packaged>: pyproject.toml
    maps the packages tlstudy.search_spaces and tlstudy.reference there), else the checkout's."""
    inside = Path(str(files("tlstudy") / packaged))
    return inside if inside.is_dir() else _CHECKOUT / in_checkout


def training_space() -> dict:
    """The training hyperparameters every task searches, with the reasons for their ranges."""
    from ray import tune

    return {
        # The PyTorch transfer-learning tutorial uses SGD lr 1e-3, Adam's default is 1e-3;
        # a decade either side covers fine-tuning (low) and fresh heads or scratch training (high).
        "lr": tune.loguniform(1e-4, 1e-2),
        "optimizer": tune.choice(["sgd", "adam", "adamw"]),
        # Only SGD reads it; 0.9 is the tutorial's value.
        "momentum": tune.uniform(0.8, 0.95),
        # From none-in-effect to the strong end used for fine-tuning.
        "weight_decay": tune.loguniform(1e-6, 1e-2),
        # The report's loaders used small batches; 64 is what fits a CPU trial's memory comfortably.
        "batch_size": tune.choice([16, 32, 64]),
        # step: the tutorial's StepLR (step_size from the profile, gamma 0.1).
        "schedule": tune.choice(["step", "cosine", "none"]),
    }


def product(**axes: list) -> list[dict]:
    """Every combination of the axes' values, as cells: product(arch=[a, b], weights=[v1, v2])."""
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


@dataclass
class Space:
    name: str
    path: Path
    description: str
    param_space: dict = field(default_factory=dict)
    fixed: dict = field(default_factory=dict)
    cells: list[Cell] = field(default_factory=list)
    profiles: dict = field(default_factory=dict)
    compare: tuple = ()

    @property
    def axes(self) -> list[str]:
        """The parameters that define a cell, in order."""
        return list(dict.fromkeys(k for c in self.cells for k, _ in c.items))

    def choices(self, *keys: str) -> list[tuple]:
        """Every combination of the values `keys` take in the cells (or the fixed settings, or the defaults)."""
        combos = {tuple(c.as_dict().get(k, self.fixed.get(k, DEFAULTS[k])) for k in keys) for c in self.cells}
        return sorted(combos, key=str)

    def summary(self) -> dict[str, Any]:
        """The space as plain JSON: its searched distributions (as Optuna's), cells, fixed settings
        and profile overrides, and its file's hash; what a study stores of it."""
        from optuna.distributions import distribution_to_json
        from ray.tune.search.optuna import OptunaSearch

        dists = OptunaSearch.convert_search_space(self.param_space) if self.param_space else {}
        return {
            "name": self.name,
            "sha1": file_hash(self.path),
            "fixed": dict(self.fixed),
            "cells": [c.as_dict() for c in self.cells],
            "profiles": self.profiles,
            "params": {k: distribution_to_json(d) for k, d in dists.items()},
        }


def file_hash(path: Path | str) -> str:
    """The space file's content hash: a stored study's summary of it holds while this is unchanged."""
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def reference_dir() -> Path:
    """The report's transcribed numbers (homework4.csv) and claims (claims.csv), shipped like the spaces."""
    return shipped("reference", "reference")


def folders() -> list[Path]:
    """Where --space NAME looks, the first folder holding NAME.py wins."""
    return [Path.cwd() / "search_spaces", shipped("search_spaces", "search_spaces")]


def _files():
    """{name: path} of every space file --space NAME can reach."""
    found = {}
    for folder in reversed(folders()):  # the working directory's spaces shadow the shipped ones
        for f in sorted(folder.glob("[!_]*.py")) if folder.is_dir() else []:
            found[f.stem] = f
    return dict(sorted(found.items()))


def find(name: str) -> Path:
    """The file behind --space NAME or --space path/to/file.py."""
    p = Path(name)
    if p.suffix == ".py":
        if not p.is_file():
            raise UserError(f"space file {name} does not exist")
        return p
    for folder in folders():
        if (folder / f"{name}.py").is_file():
            return folder / f"{name}.py"
    raise UserError(f"unknown space {name!r}; known: {', '.join(_files()) or 'none'} (or give a path to a .py file)")


def describe(path: Path | str) -> str:
    """A space file's one-line description (its docstring's first line), read without running it;
    a UserError for a file that is not valid Python."""
    path = Path(path)
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except SyntaxError as e:
        raise UserError(f"space file {path} has a syntax error at line {e.lineno}: {e.msg}") from None
    except (OSError, ValueError) as e:
        raise UserError(f"space file {path} cannot be read: {e}") from None
    return ((ast.get_docstring(tree) or "").strip().splitlines() or [""])[0]


def compares(path: Path | str) -> bool:
    """Whether a space file is a comparison of other studies (it assigns COMPARE), read without running it."""
    tree = ast.parse(Path(path).read_bytes(), filename=str(path))
    return any(
        isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "COMPARE" for t in node.targets)
        for node in tree.body
    )


def available() -> list[tuple[str, str]]:
    """(name, description) of every space --space NAME can reach; no space file is executed."""
    found = []
    for name, path in _files().items():
        try:
            found.append((name, describe(path)))
        except UserError as e:
            found.append((name, f"(broken: {e})"))
    return found


def load(name: str | Path) -> Space:
    path = find(str(name))
    spec = importlib.util.spec_from_file_location(f"tlstudy_space_{path.stem}", path)
    assert spec is not None and spec.loader is not None  # a .py file always has a spec
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise UserError(f"space file {path} has a syntax error at line {e.lineno}: {e.msg}") from None
    except Exception as e:  # a space file is user code: any failure is the user's to fix
        raise UserError(f"space file {path} failed to load: {type(e).__name__}: {e}") from None
    description = ((module.__doc__ or "").strip().splitlines() or [""])[0]
    if hasattr(module, "COMPARE"):
        return Space(path.stem, path, description, compare=tuple(module.COMPARE))
    if not isinstance(getattr(module, "PARAM_SPACE", None), dict):
        raise UserError(f"space file {path} defines no PARAM_SPACE dict (or COMPARE tuple)")
    space = Space(
        path.stem,
        path,
        description,
        dict(module.PARAM_SPACE),
        dict(getattr(module, "FIXED", {})),
        [Cell.of(c) for c in getattr(module, "CELLS", [{}])],
        {p: dict(getattr(module, p.upper())) for p in ("quick", "full") if hasattr(module, p.upper())},
    )
    validate(space)
    return space


def validate(space: Space) -> None:
    """Catch a broken space before any trial runs: unknown settings, cells the space cannot
    produce, and architecture/weights pairs torchvision lacks (no resnet18 with V2)."""
    from ray.tune.search.sample import Categorical, Domain

    from tlstudy.training import models

    where = f"space {space.name} ({space.path})"
    unknown = sorted((set(space.param_space) | set(space.fixed)) - set(DEFAULTS))
    if unknown:
        raise UserError(f"{where}: unknown trial settings {unknown}; known: {sorted(DEFAULTS)}")
    both = sorted(set(space.param_space) & set(space.fixed))
    if both:
        raise UserError(f"{where}: {both} are both searched and fixed")
    for cell in space.cells:
        for k, v in cell.items:
            dom = space.param_space.get(k)
            if not isinstance(dom, Categorical) or v not in dom.categories:
                raise UserError(f"{where}: cell value {k}={v!r} is not a choice of PARAM_SPACE[{k!r}]")
    choices = {
        k: (v.categories if isinstance(v, Categorical) else [v])
        for k, v in {**space.fixed, **space.param_space}.items()
        if k in ("arch", "weights", "out_features", "mode")
    }
    if any(
        isinstance(v, Domain) and not isinstance(v, Categorical)
        for k, v in space.param_space.items()
        if k in ("arch", "weights", "mode")
    ):
        raise UserError(f"{where}: arch, weights and mode must be tune.choice or fixed")
    for arch, weights, mode in itertools.product(
        choices.get("arch", [DEFAULTS["arch"]]),
        choices.get("weights", [DEFAULTS["weights"]]),
        choices.get("mode", [DEFAULTS["mode"]]),
    ):
        try:
            models.check(arch, weights, mode=mode)
        except UserError as e:
            raise UserError(f"{where}: it can sample arch={arch}, weights={weights}: {e}") from None
