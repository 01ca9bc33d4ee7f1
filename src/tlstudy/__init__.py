"""tlstudy: a reproducible hyperparameter-search study of transfer learning on chest X-rays."""

__version__ = "0.1.0"
