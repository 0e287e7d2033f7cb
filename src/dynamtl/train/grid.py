"""A grid of independent runs and the engines that train it.

A grid is a plain list of :class:`GridRun` (a label, a complete :class:`RunConfig`, a run
folder); every run is :func:`~dynamtl.train.runs.train_or_reuse` of its spec, so a run
already finished is read back and an interrupted one resumed, whichever engine trains it.
An engine returns one :class:`Outcome` per spec, in the grid's order, whatever the order in
which the runs finished:

* :class:`LocalEngine` — this machine: with ``jobs=1`` the runs train one after the other
  in this process; with ``jobs=N`` in N worker processes (started once with ``spawn``, each
  taking the next run when it is free). A run's result does not depend on the process it
  trains in: every run seeds everything, and its thread count is in its config.
* :class:`SubmititEngine` — beyond one machine, through `submitit
  <https://github.com/facebookincubator/submitit>`_: one SLURM job per run (its local
  executor, which starts each run as a subprocess, where SLURM is absent).

A run that fails (its exception, or a worker process that died) is reported by name in its
outcome; the others go on. Ctrl-C stops the grid: in this process the run checkpoints and
stops (:class:`~dynamtl.train.session.RunStopped`); the parent of worker processes sends
them ``SIGTERM``, on which each run checkpoints after its current step and stops, and
kills those still there after :data:`STOP_SECONDS` (or at a second Ctrl-C); submitit jobs
are cancelled. ``KeyboardInterrupt`` or ``RunStopped`` then propagates, and a stopped run
continues from its last checkpoint the next time the grid is run. ``SIGTERM`` to the grid's
process (``kill PID``, ``timeout``, SLURM) stops it as Ctrl-C does. ``SIGUSR1`` is passed on
to the worker processes, each of whose runs checkpoints after its current step; in this
process, a run checkpoints on it; submitit jobs are not signalled (one line says so).
"""

from __future__ import annotations

import abc
import collections
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynamtl._helpers import describe
from dynamtl.train.checkpoint import CheckpointError
from dynamtl.train.config import ConfigError, RunConfig
from dynamtl.train.folder import RunFolder, RunFolderError
from dynamtl.train.interrupts import interruptible
from dynamtl.train.runs import train_or_reuse
from dynamtl.train.session import DataError, RunStopped, TrainingStopped
from dynamtl.train.threads import ThreadChoice, choose_threads, usable_cpus

Say = Callable[[str], None]
EXPECTED_ERRORS = (ConfigError, RunFolderError, CheckpointError, TrainingStopped, DataError)
"""Failures told in one line; any other exception's traceback is printed too."""
STOP_SECONDS = 30.0
"""How long stopped workers get to checkpoint and exit before they are killed."""


@dataclass(frozen=True)
class GridRun:
    """One run of a grid: ``label`` (the method's row in a table), its complete config,
    and its run folder."""

    label: str
    config: RunConfig
    folder: Path

    @property
    def name(self) -> str:
        """How messages name the run: ``"auto-lambda seed 1"``."""
        return f"{self.label} seed {self.config.seed}"


@dataclass(frozen=True)
class Outcome:
    """What became of a spec: its ``results`` (``results.json``'s dict), or ``None`` and
    the ``error`` that stopped it; ``reused``: it had finished before; ``seconds``: wall
    time of its training here."""

    spec: GridRun
    results: dict[str, Any] | None
    error: str | None = None
    reused: bool = False
    seconds: float = 0.0


def train_grid_run(spec: GridRun) -> dict[str, Any]:
    """Train (or read back, or resume) the run of ``spec``, without progress bars: what a
    worker process or a cluster job executes."""
    return train_or_reuse(spec.config, spec.folder, progress=False)


class Engine(abc.ABC):
    """Trains a grid; ``jobs``: how many runs at once (``None``: :meth:`default_jobs`)."""

    where = ""

    def __init__(self, jobs: int | None = None) -> None:
        if jobs is not None and jobs < 1:
            raise ConfigError(f"jobs must be >= 1, got {jobs}")
        self.jobs = jobs

    def jobs_for(self, runs: int) -> int:
        """Runs trained at once for a grid of ``runs`` runs."""
        return max(1, min(self.jobs or self.default_jobs(runs), runs))

    @abc.abstractmethod
    def default_jobs(self, runs: int) -> int:
        """``jobs`` when not given."""

    @abc.abstractmethod
    def default_threads(self, jobs: int) -> ThreadChoice:
        """The torch threads of a run when ``jobs`` runs train at once."""

    def run(
        self, grid: Sequence[GridRun], workspace: Path, *, progress: bool = False, say: Say | None = None
    ) -> list[Outcome]:
        """Every spec's outcome, in ``grid``'s order. Finished runs are read back here;
        the others go to :meth:`_train` (``workspace``: a folder for the engine's files)."""
        tally = _Tally(len(grid), say if say is not None else (lambda line: None), progress)
        outcomes: dict[int, Outcome] = {}
        todo = []
        for index, spec in enumerate(grid):
            if RunFolder(spec.folder).finished:
                outcomes[index] = tally.add(_in_process(spec, progress=False, reused=True))
            else:
                todo.append(index)
        if todo:
            with _grid_signals(self._pass_on_checkpoint):
                trained = self._train([grid[i] for i in todo], Path(workspace), self.jobs_for(len(grid)), tally,
                                      progress)
            outcomes.update(zip(todo, trained))
        return [outcomes[index] for index in range(len(grid))]

    def _pass_on_checkpoint(self) -> str:
        """Pass ``SIGUSR1`` on to the runs training (what was done, in a line)."""
        return "no run of the grid is training in a worker process now: nothing to checkpoint"

    @abc.abstractmethod
    def _train(
        self, specs: Sequence[GridRun], workspace: Path, jobs: int, tally: _Tally, progress: bool
    ) -> list[Outcome]:
        """The outcomes of ``specs`` (none finished yet), in their order."""


class LocalEngine(Engine):
    """This machine: ``jobs`` runs at once (default: one per usable CPU), in this process
    when ``jobs`` is 1, else in worker processes."""

    where = "on this machine"

    def default_jobs(self, runs: int) -> int:
        return usable_cpus()

    def default_threads(self, jobs: int) -> ThreadChoice:
        return choose_threads(jobs)

    def _train(
        self, specs: Sequence[GridRun], workspace: Path, jobs: int, tally: _Tally, progress: bool
    ) -> list[Outcome]:
        if jobs == 1:
            return [tally.add(_in_process(spec, progress=progress, reused=False, label=tally.next(spec)))
                    for spec in specs]
        self._pool = _WorkerPool(min(jobs, len(specs)))
        try:
            return self._pool.run(specs, tally)
        finally:
            self._pool = None

    _pool: _WorkerPool | None = None

    def _pass_on_checkpoint(self) -> str:
        busy = [w for w in self._pool.workers if w.spec is not None] if self._pool else []
        for worker in busy:
            with contextlib.suppress(OSError):  # a worker that just ended
                os.kill(worker.process.pid, signal.SIGUSR1)
        return (f"SIGUSR1 passed on to {len(busy)} worker process(es): each run checkpoints after its current step"
                if busy else super()._pass_on_checkpoint())


@contextlib.contextmanager
def _grid_signals(pass_on_checkpoint: Callable[[], str]) -> Iterator[None]:
    """While a grid trains (in the main thread): ``SIGINT`` raises ``KeyboardInterrupt``
    (even if it was inherited ignored: :func:`~dynamtl.train.interrupts.interruptible`),
    ``SIGTERM`` stops the grid as Ctrl-C does (``RunStopped``; a run training in this
    process handles both itself), ``SIGUSR1`` is given to ``pass_on_checkpoint``, which
    says what it did in one line on stderr."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(number: int, frame: Any) -> None:
        raise RunStopped("stopped by SIGTERM", number)

    def checkpoint(number: int, frame: Any) -> None:
        sys.stderr.write(pass_on_checkpoint() + "\n")

    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, stop)}
    if hasattr(signal, "SIGUSR1"):
        previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, checkpoint)
    try:
        with interruptible():  # Ctrl-C stops the grid even if SIGINT was inherited ignored
            yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)


def _in_process(spec: GridRun, *, progress: bool, reused: bool, label: str = "") -> Outcome:
    """Train ``spec`` here; its failure in the outcome, but a stop asked for
    (``RunStopped``, ``KeyboardInterrupt``) raised."""
    start = time.perf_counter()
    try:
        results = train_or_reuse(spec.config, spec.folder, progress=progress, label=label)
    except RunStopped:
        raise
    except Exception as error:  # a failed run is reported, the others go on
        if not isinstance(error, EXPECTED_ERRORS):
            traceback.print_exc()
        return Outcome(spec, None, describe(error), reused, time.perf_counter() - start)
    return Outcome(spec, results, None, reused, time.perf_counter() - start)


class _Tally:
    """Counts outcomes and tells each one: failures always, the others with ``progress``."""

    def __init__(self, total: int, say: Say, progress: bool) -> None:
        self.total, self.say, self.progress, self.done = total, say, progress, 0

    def next(self, spec: GridRun) -> str:
        """How the run about to train is shown: ``"[5/17] auto-lambda seed 0"``."""
        return f"[{self.done + 1}/{self.total}] {spec.name}"

    def add(self, outcome: Outcome) -> Outcome:
        self.done += 1
        if outcome.error is not None:
            what = f"FAILED: {outcome.error}"
        elif outcome.reused:
            what = "finished before, reused"
        else:
            what = f"done in {outcome.seconds:.1f} s"
        if self.progress or outcome.error is not None:
            self.say(f"[{self.done}/{self.total}] {outcome.spec.name}: {what}")
        return outcome


def _serve(connection: multiprocessing.connection.Connection) -> None:
    """A worker process: trains the specs it receives until it receives ``None``. Between
    runs, Ctrl-C is the parent's to handle (it stops the workers) and ``SIGUSR1`` is
    ignored; during a run, a signal that stops the run (the parent's SIGTERM) ends the
    worker too."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "SIGUSR1"):
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # between runs: nothing to checkpoint (a run handles it)
    while True:
        try:
            spec = connection.recv()
        except EOFError:  # the parent is gone
            return
        if spec is None:
            return
        try:
            outcome = _in_process(spec, progress=False, reused=False)
        except RunStopped as stop:
            connection.send((None, describe(stop)))
            return
        connection.send((outcome.results, outcome.error))


class _Worker:
    """One worker process, its end of the pipe, and the spec it trains."""

    def __init__(self, context: Any) -> None:
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child,), name="dynamtl-worker")
        self.process.start()
        child.close()
        self.spec: GridRun | None = None
        self.index, self.started = -1, 0.0

    def give(self, index: int, spec: GridRun) -> None:
        """Train ``spec``, the ``index``-th of the pool's list."""
        self.spec, self.index, self.started = spec, index, time.perf_counter()
        self.connection.send(spec)

    def outcome(self) -> Outcome | None:
        """The outcome of its spec when it has one (the worker answered, or died)."""
        assert self.spec is not None
        seconds = time.perf_counter() - self.started
        if self.connection.poll():
            try:
                results, error = self.connection.recv()
            except EOFError:
                results, error = None, self._death()
        elif not self.process.is_alive():
            results, error = None, self._death()
        else:
            return None
        outcome = Outcome(self.spec, results, error, False, seconds)
        self.spec = None
        return outcome

    def _death(self) -> str:
        self.process.join()
        code = self.process.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
        return f"its worker process died ({how})"

    def stop(self, *, now: bool) -> None:
        """Ask an idle worker to leave; ``now``: terminate it (SIGTERM) wherever it is."""
        if now:
            self.process.terminate()
            return
        with contextlib.suppress(OSError):  # a worker that died
            self.connection.send(None)


class _WorkerPool:
    """``size`` worker processes training a list of specs."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.context = multiprocessing.get_context("spawn")
        self.workers: list[_Worker] = []

    def run(self, specs: Sequence[GridRun], tally: _Tally) -> list[Outcome]:
        pending = collections.deque(enumerate(specs))
        outcomes: dict[int, Outcome] = {}
        self.workers = workers = []
        interrupted = True
        try:
            workers += [_Worker(self.context) for _ in range(self.size)]
            while pending or any(w.spec is not None for w in workers):
                for slot, worker in enumerate(workers):
                    if worker.spec is None and pending:
                        if not worker.process.is_alive():
                            workers[slot] = worker = _Worker(self.context)
                        worker.give(*pending.popleft())
                busy = [w for w in workers if w.spec is not None]
                multiprocessing.connection.wait([w.connection for w in busy] + [w.process.sentinel for w in busy])
                for worker in busy:
                    index, outcome = worker.index, worker.outcome()
                    if outcome is not None:
                        outcomes[index] = tally.add(outcome)
            interrupted = False
        finally:
            _stop(workers, interrupted)
        return [outcomes[index] for index in range(len(specs))]


def _stop(workers: Sequence[_Worker], interrupted: bool) -> None:
    """Let the workers go (``interrupted``: SIGTERM, so that their runs checkpoint and
    stop) and wait for them; kill those still there after :data:`STOP_SECONDS`, or at
    once at a second Ctrl-C."""
    for worker in workers:
        worker.stop(now=interrupted)
    deadline = time.monotonic() + STOP_SECONDS
    try:
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
    finally:  # also at a second Ctrl-C

        for worker in workers:
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()


class SubmititEngine(Engine):
    """One job per run through submitit's ``AutoExecutor``: SLURM where ``srun`` is
    found, else submitit's local executor (each run a subprocess of this machine);
    ``cluster="local"`` forces the latter. ``parameters`` go to
    ``executor.update_parameters`` (``slurm_partition``, ``timeout_min``, ``mem_gb``…);
    by default a job asks for ``timeout_min`` = 1 day and ``cpus_per_task`` = the run's
    threads. Job files and logs are written under ``WORKSPACE/submitit``. At most ``jobs``
    jobs are submitted at once (default: every run)."""

    POLL_SECONDS = 1.0

    def __init__(
        self, jobs: int | None = None, parameters: Mapping[str, Any] | None = None, cluster: str | None = None
    ) -> None:
        super().__init__(jobs)
        try:
            import submitit
        except ModuleNotFoundError as missing:
            raise ConfigError("--engine submitit needs submitit: pip install 'dynamtl[grid]'") from missing
        self.parameters = dict(parameters or {})
        self.cluster = cluster or submitit.AutoExecutor.which()
        self.where = f"as submitit jobs ({'SLURM' if self.cluster == 'slurm' else self.cluster + ' executor'})"

    def default_jobs(self, runs: int) -> int:
        return runs

    def default_threads(self, jobs: int) -> ThreadChoice:
        cpus = int(self.parameters.get("cpus_per_task", 1))
        return ThreadChoice(cpus, f"cpus_per_task={cpus} of each submitit job")

    def _train(
        self, specs: Sequence[GridRun], workspace: Path, jobs: int, tally: _Tally, progress: bool
    ) -> list[Outcome]:
        import submitit

        executor = submitit.AutoExecutor(folder=workspace / "submitit", cluster=self.cluster)
        threads = max(spec.config.threads or 1 for spec in specs)
        executor.update_parameters(
            **{"name": "dynamtl", "timeout_min": 24 * 60, "cpus_per_task": threads, **self.parameters}
        )
        pending = collections.deque(enumerate(specs))
        running: dict[int, tuple[Any, float]] = {}
        outcomes: dict[int, Outcome] = {}
        interrupted = True
        try:
            while pending or running:
                while pending and len(running) < jobs:
                    index, spec = pending.popleft()
                    running[index] = (executor.submit(train_grid_run, spec), time.perf_counter())
                time.sleep(self.POLL_SECONDS)
                for index, (job, started) in list(running.items()):
                    if job.done():
                        del running[index]
                        outcomes[index] = tally.add(self._outcome(specs[index], job, time.perf_counter() - started))
            interrupted = False
        finally:
            if interrupted:
                for job, _ in running.values():
                    job.cancel(check=False)
        return [outcomes[index] for index in range(len(specs))]

    def _pass_on_checkpoint(self) -> str:
        return ("SIGUSR1 is not passed on to submitit jobs: signal a job itself (on SLURM: scancel --signal=USR1 "
                "JOBID); the grid goes on")

    @staticmethod
    def _outcome(spec: GridRun, job: Any, seconds: float) -> Outcome:
        try:
            return Outcome(spec, job.result(), None, False, seconds)
        except Exception as error:  # submitit wraps the job's exception with its traceback
            lines = [line for line in str(error).splitlines() if line.strip()]
            message = lines[-1].strip() if lines else type(error).__name__
            return Outcome(spec, None, f"{message} (job {job.job_id}; its log: {job.paths.stderr})", False, seconds)
