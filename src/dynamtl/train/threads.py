"""How many threads torch uses in a run, chosen so that a shared machine does not collapse.

torch's intra-op thread pool (OpenMP) defaults to one thread per core. Its threads meet at a
barrier after every parallel operation, so when another process takes one of the cores the
whole pool waits for the thread that was descheduled: on a 2-core machine with one other
CPU-bound process, 2 threads made the Census multi-task comparison of every method
(``src/dynamtl/cli/census_multitask.toml``, the main job of the time; the main job is now
Census auxiliary learning with a noise task, ``main_job.toml``) 20× slower than 1 thread
(22 min vs 1 min 15 s), while on a quiet machine the models of dynamtl's offline benchmarks step no faster
with 2 threads than with 1 (an MLP step 3 ms vs 2.5 ms, a small CNN 100 ms vs 103 ms).
Hence the rule of :func:`choose_threads`: the CPUs are shared out between the runs that
train at once, and a CPU that other processes keep busy is not counted.

The thread count changes the order of floating-point reductions, so results depend on it
in their last digits: it is part of a run's configuration (``RunConfig.threads``, recorded
in ``config.json``) and a resumed run keeps it.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (``os.sched_getaffinity``,
    which ``taskset``, ``numactl`` and SLURM's ``--cpus-per-task`` set), bounded by a cgroup
    v2 CPU quota (``docker run --cpus``) when there is one."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS and Windows have no affinity mask
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(cpus, quota) if quota else cpus)


def _cgroup_quota() -> int | None:
    """CPUs allowed by the cgroup v2 quota ``cpu.max`` (``"QUOTA PERIOD"`` or ``"max ..."``),
    rounded up; ``None`` without a quota."""
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
        return math.ceil(int(quota) / int(period)) if quota != "max" else None
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class ThreadChoice:
    """A thread count and, in words, why."""

    threads: int
    reason: str


def choose_threads(jobs: int = 1, *, cpus: int | None = None, load: float | None = None) -> ThreadChoice:
    """The torch threads of each of ``jobs`` runs that train at once on this machine.

    ``threads = max(1, ⌊(C − B) / jobs⌋)`` where ``C`` is the number of usable CPUs
    (``cpus``, default :func:`usable_cpus`) and ``B`` the CPUs that other processes keep
    busy: the 1-minute load average (``load``, default ``os.getloadavg()[0]``) rounded to
    the nearest integer, at most ``C``. So: one thread per run as soon as runs share the
    CPUs or other processes run; the CPUs split between the runs on an idle machine. In a
    container the load average counts the whole host, which errs on the side of one thread.

    Raises:
        ValueError: ``jobs`` < 1 or ``cpus`` < 1.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    cpus = usable_cpus() if cpus is None else cpus
    if cpus < 1:
        raise ValueError(f"cpus must be >= 1, got {cpus}")
    if load is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    busy = min(cpus, math.floor(load + 0.5))
    return ThreadChoice(max(1, (cpus - busy) // jobs), f"{cpus} usable CPU(s), load average {load:.1f}")


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the body with ``torch.set_num_threads(threads)`` (``None``: as it is), then put
    back the previous count."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
