"""Ray for a study: a Ray of its own on 127.0.0.1, or a cluster joined (--address, RAY_ADDRESS),
and how many trials its resources fit at once."""
import logging
import os

import ray

from tlstudy.errors import UserError


def init_ray(args):
    """Start a Ray of its own, or join the cluster of --address (or RAY_ADDRESS); once per process."""
    if ray.is_initialized():
        return
    address = args.address or os.environ.get("RAY_ADDRESS")
    # "local": without it, ray.init joins any Ray already running on this machine (another
    # user's, another study's) instead of starting this study's own.
    # Trials' own output (the weights-fallback warning of each, say) only with --verbose: the
    # progress lines and the failures' reasons say what matters.
    kwargs = dict(address=address or "local", include_dashboard=False, log_to_driver=bool(getattr(args, "verbose", 0)))
    if not address and args.num_cpus:
        kwargs["num_cpus"] = args.num_cpus
    # Ray's default for a local cluster (token authentication on) is fine on loopback; its
    # warning about it at every start is not news to the user.
    # (A logger's name, not an access: Ray's token setup logs under this private module.)
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
        lambda record: "Token authentication is enabled" not in record.getMessage())
    try:
        ray.init(logging_level="WARNING", **kwargs)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise UserError(f"cannot start or join Ray{f' at {address}' if address else ''}: {e}") from None


def slots(cluster, resources):
    """How many trials with `resources` the cluster's resources (ray.cluster_resources()) fit at once."""
    fits = [cluster.get(k.upper(), 0) / v for k, v in resources.items() if v]
    return max(1, int(min(fits))) if fits else 1
