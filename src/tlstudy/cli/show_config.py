"""`tlstudy run --show-config`: what the run would run, printed from its resolved settings."""

from __future__ import annotations

from tlstudy import spaces
from tlstudy.settings import PROTOCOL, StudySettings
from tlstudy.study import storage


def show_config(settings: StudySettings, space: spaces.Space) -> None:
    """--show-config: what `tlstudy run` would run."""
    from ray.tune.search.optuna import OptunaSearch

    print(f"space {space.name} ({space.path}): {space.description}")
    print(f"profile {settings.profile}: " + ", ".join(f"{k}={v}" for k, v in settings.profile_values().items()))
    more = (
        f", then rounds of more to the cells of undecided claims (--seeds auto: looks at {settings.looks} seeds)"
        if settings.auto_seeds
        else ""
    )
    print(
        f"budget: {settings.budget} search trials per cell (the first runs the protocol), then {settings.seeds} "
        f"replicates of each cell's best (training seeds 1..{settings.seeds}){more}; pruner {settings.pruner}, "
        "within a cell"
    )
    print(f"fixed: {settings.shared}")
    print(f"protocol: {PROTOCOL}")
    print("searched (as Optuna distributions):")
    for k, d in OptunaSearch.convert_search_space(space.param_space).items():
        print(f"  {k}: {d}")
    print(f"cells ({len(space.cells)}):")
    for cell in space.cells:
        print(f"  {cell.label()}")
    print(
        f"data: {settings.data.source} (data seed {settings.data.seed}); storage: "
        f"{storage.display_url(settings.storage)}"
    )
    gpus = settings.gpus_per_trial if settings.gpus_per_trial is not None else "from the cluster at its start"
    print(
        f"resources: cpus per trial {settings.cpus_per_trial}, gpus per trial {gpus}, "
        f"at most {settings.max_concurrent or 'as many trials as fit'} at once"
    )
