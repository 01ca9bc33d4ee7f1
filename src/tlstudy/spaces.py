"""Search spaces: one plain Python file per task in search_spaces/.

A space file defines
- PARAM_SPACE: a Ray Tune param space (tune.choice, tune.loguniform, ...) over the
  trial settings of tlstudy.train.DEFAULTS;
- FIXED: the task's fixed trial settings;
- CELLS: the variant cells that every study must cover, each a dict of values of
  PARAM_SPACE's categorical parameters (the report's table rows);
- optionally QUICK / FULL: overrides of the run profiles (tlstudy.runner.PROFILES);
- or, instead of all that, COMPARE = ("taskB", "taskC"): a space that runs no trials
  of its own and compares other studies (task D).
Its docstring's first line is its one-line description. `--space NAME` looks for
search_spaces/NAME.py (in the working directory, then in the project); `--space
path/to/file.py` loads any file.
"""
import importlib.util
import itertools
from dataclasses import dataclass, field
from pathlib import Path

from ray import tune
from ray.tune.search.sample import Categorical, Domain

from tlstudy import models
from tlstudy.errors import UserError
from tlstudy.config import DEFAULTS

PROJECT_SPACES = Path(__file__).resolve().parents[2] / "search_spaces"


def training_space():
    """The training hyperparameters every task searches, with the reasons for their ranges."""
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


def product(**axes):
    """Every combination of the axes' values, as cells: product(arch=[a, b], weights=[v1, v2])."""
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


@dataclass
class Space:
    name: str
    path: Path
    description: str
    param_space: dict = field(default_factory=dict)
    fixed: dict = field(default_factory=dict)
    cells: list = field(default_factory=list)
    profiles: dict = field(default_factory=dict)
    compare: tuple = ()

    @property
    def axes(self):
        """The parameters that define a cell, in order."""
        return list(dict.fromkeys(k for c in self.cells for k in c))


def find(name):
    """The file behind --space NAME or --space path/to/file.py."""
    p = Path(name)
    if p.suffix == ".py":
        if not p.is_file():
            raise UserError(f"space file {name} does not exist")
        return p
    for folder in (Path.cwd() / "search_spaces", PROJECT_SPACES):
        if (folder / f"{name}.py").is_file():
            return folder / f"{name}.py"
    raise UserError(f"unknown space {name!r}; known: {', '.join(n for n, _ in available()) or 'none'} "
                    "(or give a path to a .py file)")


def available():
    """(name, description) of every space in search_spaces/."""
    found = {}
    for folder in (PROJECT_SPACES, Path.cwd() / "search_spaces"):
        for f in sorted(folder.glob("[!_]*.py")) if folder.is_dir() else []:
            try:
                found[f.stem] = load(f).description
            except UserError as e:
                found[f.stem] = f"(broken: {e})"
    return sorted(found.items())


def load(name):
    path = find(str(name))
    spec = importlib.util.spec_from_file_location(f"tlstudy_space_{path.stem}", path)
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
    space = Space(path.stem, path, description, dict(module.PARAM_SPACE), dict(getattr(module, "FIXED", {})),
                  list(getattr(module, "CELLS", [{}])),
                  {p: dict(getattr(module, p.upper())) for p in ("quick", "full") if hasattr(module, p.upper())})
    validate(space)
    return space


def validate(space):
    """Catch a broken space before any trial runs: unknown settings, cells the space cannot
    produce, and architecture/weights pairs torchvision lacks (no resnet18 with V2)."""
    where = f"space {space.name} ({space.path})"
    unknown = sorted((set(space.param_space) | set(space.fixed)) - set(DEFAULTS))
    if unknown:
        raise UserError(f"{where}: unknown trial settings {unknown}; known: {sorted(DEFAULTS)}")
    both = sorted(set(space.param_space) & set(space.fixed))
    if both:
        raise UserError(f"{where}: {both} are both searched and fixed")
    for cell in space.cells:
        for k, v in cell.items():
            dom = space.param_space.get(k)
            if not isinstance(dom, Categorical) or v not in dom.categories:
                raise UserError(f"{where}: cell value {k}={v!r} is not a choice of PARAM_SPACE[{k!r}]")
    choices = {k: (v.categories if isinstance(v, Categorical) else [v]) for k, v in
               {**space.fixed, **space.param_space}.items() if k in ("arch", "weights", "out_features", "mode")}
    if any(isinstance(v, Domain) and not isinstance(v, Categorical) for k, v in space.param_space.items()
           if k in ("arch", "weights", "mode")):
        raise UserError(f"{where}: arch, weights and mode must be tune.choice or fixed")
    for arch, weights, mode in itertools.product(choices.get("arch", [DEFAULTS["arch"]]),
                                                 choices.get("weights", [DEFAULTS["weights"]]),
                                                 choices.get("mode", [DEFAULTS["mode"]])):
        try:
            models.check(arch, weights, mode=mode)
        except UserError as e:
            raise UserError(f"{where}: it can sample arch={arch}, weights={weights}: {e}") from None
