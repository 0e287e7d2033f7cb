"""The ``dynamtl`` command line (``python -m dynamtl.cli``)."""

from dynamtl.cli.main import main

__all__ = ["main"]
