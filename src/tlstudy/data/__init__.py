"""The data: a data set as train, val and test uint8 tensors, decoded once and cached (splits), the
file formats it can come in (sources), and the synthetic chest-radiograph phantom (phantom)."""

__all__ = ["phantom", "sources", "splits"]
