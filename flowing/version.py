"""flowing's version (the one place it is written; pyproject.toml repeats it)."""

__version__ = "0.4.0"
