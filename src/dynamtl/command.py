"""The ``dynamtl`` command line as the user typed it, and the commands that messages
suggest, spelt the same way so that they can be pasted and run.

A run started with ``dynamtl train …`` suggests ``dynamtl resume RUN``; one started with
``python -m dynamtl.cli train …`` suggests ``python -m dynamtl.cli resume RUN`` (the console
script may not be on its ``PATH``); one under ``torchrun`` suggests ``torchrun
--nproc_per_node=N -m dynamtl.cli resume RUN`` (a run resumes with the process count that
saved it). From Python (not the command line) the suggestion is ``dynamtl …``.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

MODULE = "dynamtl.cli"


def _launched_as_module() -> list[str] | None:
    """``[interpreter, "-m", "dynamtl.cli"]`` as typed when this process is ``python -m
    dynamtl.cli`` (or a worker that ``multiprocessing`` spawned from it, which inherits its
    ``sys.argv``), else ``None``."""
    typed = list(getattr(sys, "orig_argv", []))
    for index, word in enumerate(typed[:-1]):
        if word == "-m" and typed[index + 1] == MODULE:
            return [typed[0], "-m", MODULE]
    if Path(sys.argv[0]).parts[-3:] == ("dynamtl", "cli", "__main__.py"):
        return [sys.executable, "-m", MODULE]
    return None


def prefix() -> list[str]:
    """The words that start a ``dynamtl`` command, as this process was started."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return ["torchrun", f"--nproc_per_node={os.environ.get('LOCAL_WORLD_SIZE', os.environ['WORLD_SIZE'])}",
                "-m", MODULE]
    return _launched_as_module() or ["dynamtl"]


def is_cli() -> bool:
    """Whether this process is the ``dynamtl`` command (not a Python program calling the
    library)."""
    return _launched_as_module() is not None or Path(sys.argv[0]).name == "dynamtl"


def suggested(*words: object) -> str:
    """The ``dynamtl`` command of ``words`` (e.g. ``"resume", run``), quoted for a shell."""
    return shlex.join([*prefix(), *(str(word) for word in words)])


def suggested_for(processes: int, *words: object) -> str:
    """:func:`suggested` for a run of ``processes`` processes, whatever this process is:
    ``torchrun --nproc_per_node=N -m dynamtl.cli …`` for more than one, the plain form (as
    this process was typed, without torchrun) for one."""
    if processes > 1:
        return shlex.join(["torchrun", f"--nproc_per_node={processes}", "-m", MODULE, *(str(w) for w in words)])
    return shlex.join([*(_launched_as_module() or ["dynamtl"]), *(str(word) for word in words)])


def typed() -> str:
    """This process's command line as the user typed it: ``dynamtl train …``, ``python -m
    dynamtl.cli train …``; a Python program's own command line otherwise."""
    if is_cli():
        return suggested(*sys.argv[1:])
    return shlex.join(getattr(sys, "orig_argv", sys.argv))
