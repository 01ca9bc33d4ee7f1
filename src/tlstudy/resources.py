"""The files tlstudy ships beside its code: the search spaces and the report's reference numbers.

In a checkout they live at the top level (search_spaces/, results/reference/), where people
edit them; an installed wheel carries the same files inside the package
(tlstudy/search_spaces/, tlstudy/reference/: pyproject.toml maps the packages
tlstudy.search_spaces and tlstudy.reference onto those folders). Both lookups are light:
no torch, no Ray.
"""
from importlib.resources import files
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[2]  # src/tlstudy/ -> the checkout, in a checkout


def _shipped(packaged, in_checkout):
    """The installed package's folder when there is one, else the checkout's."""
    inside = Path(str(files("tlstudy") / packaged))
    return inside if inside.is_dir() else _CHECKOUT / in_checkout


def spaces_dir():
    """The search spaces the package ships (taskA .. taskE)."""
    return _shipped("search_spaces", "search_spaces")


def reference_dir():
    """The report's transcribed numbers (homework4.csv) and claims (claims.csv)."""
    return _shipped("reference", "results/reference")
