"""Ctrl-C that works wherever the command was started.

Python raises ``KeyboardInterrupt`` on ``SIGINT`` only when it installs its own handler at
start-up, and it does not when the process inherits ``SIGINT`` *ignored* (``SIG_IGN``): a
command started with ``&`` from a non-interactive shell (a script, ``nohup cmd &``, some CI
runners and job launchers) would then ignore ``kill -INT PID`` for good. A run installs
its own handlers while it trains (:mod:`dynamtl.train.session`), so ``dynamtl train``
stopped cleanly there, but the phases around it — preparing the data, and all of
``dynamtl compare``'s parent process, which trains nothing itself with ``--jobs`` > 1 —
kept the ignored ``SIGINT``. :func:`interruptible` puts Python's handler in place for the
duration of a command, so that ``SIGINT`` behaves the same for ``train``, ``resume`` and
``compare`` however they were started (``docs/cli.md``, "Signals").
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """While the block runs (in the main thread), ``SIGINT`` raises ``KeyboardInterrupt``
    even if this process inherited it ignored; the previous handler is put back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is not signal.SIG_IGN:
        yield  # Python's handler, or one a caller installed on purpose: left as it is
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
