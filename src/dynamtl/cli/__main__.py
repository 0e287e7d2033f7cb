"""``python -m dynamtl.cli``: the ``dynamtl`` command."""

from dynamtl.cli.main import main

main(prog_name="dynamtl")
