"""The Ray a study runs on: started or joined once per process (`init_ray`), and the defaults its
resources give: a new study's profile (`default_profile`: full where the cluster has a GPU) and how
many trials run at once (`slots`); the GPUs per trial come from tlstudy.study.packing. These are
the cluster's, not the driver's: a head without a GPU may lead GPU workers, and a GPU machine may
be told to keep its GPUs out of Ray.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import ray

from tlstudy.errors import UserError


def init_ray(address: str | None = None, num_cpus: int | None = None, verbose: bool = False) -> None:
    """Start a Ray of its own, or join the cluster of `address` (or RAY_ADDRESS); once per process."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # "local": without it, ray.init joins any Ray already running on this machine (another
    # user's, another study's) instead of starting this study's own. Trials' own output (the
    # weights-fallback warning of each) only with --verbose: the progress lines say what matters.
    kwargs: dict[str, Any] = dict(address=address or "local", include_dashboard=False, log_to_driver=verbose)
    if not address and num_cpus:
        kwargs["num_cpus"] = num_cpus
    # Ray's token authentication is fine on loopback; its warning at every start is not news.
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
        lambda record: "Token authentication is enabled" not in record.getMessage()
    )
    try:
        ray.init(logging_level=logging.WARNING, **kwargs)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise UserError(f"cannot start or join Ray{f' at {address}' if address else ''}: {e}") from None


def gpus() -> float:
    """The GPUs of the cluster Ray runs (logical ones too: ray.init(num_gpus=...))."""
    return float(ray.cluster_resources().get("GPU", 0.0))


def default_profile(gpus: float) -> str:
    """A new study's profile: the report's protocol where the cluster has a GPU to run it."""
    return "full" if gpus > 0 else "quick"


def profile(address: str | None = None, num_cpus: int | None = None, verbose: bool = False) -> str:
    """The default profile of a new study on the Ray of `address` (started or joined now)."""
    init_ray(address, num_cpus, verbose)
    return default_profile(gpus())


def slots(cluster: dict, resources: dict) -> int:
    """How many trials with `resources` the cluster's resources (ray.cluster_resources()) fit at once."""
    fits = [cluster.get(k.upper(), 0) / v for k, v in resources.items() if v]
    return max(1, int(min(fits))) if fits else 1
