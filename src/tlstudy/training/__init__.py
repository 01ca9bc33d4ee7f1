"""One trial: the training loop and its metrics (loop), the network and its input (models), a frozen
backbone's cached features (feature_cache), the timed steps claim 1 is judged on (throughput), and
one trial without Ray, `tlstudy trial` (single). Knows nothing of Ray Tune or Optuna."""

__all__ = ["feature_cache", "loop", "models", "single", "throughput"]
