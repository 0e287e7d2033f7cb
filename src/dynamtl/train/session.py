"""The training loop of one run: :class:`~dynamtl.MultiTask` steps over the training
stream, evaluation and model selection at every epoch's end, checkpoints, logs, and the
final test of the selected model.

Determinism: the run seeds torch, NumPy and Python, turns on
``torch.use_deterministic_algorithms`` (warning only where an operation has no
deterministic version) for its duration, and draws every data order from the seed alone
(:mod:`dynamtl.train.batches`). On CPU a run, killed and resumed at any step, ends with
the same weights and metrics, bit for bit, as one that was never interrupted.

Signals: ``SIGUSR1`` checkpoints after the current step; ``SIGINT`` (Ctrl-C) and ``SIGTERM``
checkpoint after the current step, write a ``stop`` record to ``events.jsonl`` and end the
run with :class:`RunStopped`, whose message is the command that continues it. A second
``SIGINT`` interrupts at once (the last checkpoint is kept).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

try:
    from tqdm import tqdm
except ModuleNotFoundError as missing:  # pragma: no cover - depends on the installed extras
    raise ModuleNotFoundError("dynamtl.train needs tqdm: pip install 'dynamtl[cli]'") from missing

import dynamtl
from dynamtl._helpers import describe
from dynamtl.command import suggested, suggested_for
from dynamtl.data import _progress as data_progress
from dynamtl.step import MultiTask, NonFiniteLossError
from dynamtl.train import checkpoint
from dynamtl.train.batches import MetaStream, Passes
from dynamtl.train.config import ENVIRONMENT, ConfigError, RunConfig, RunPlan, environment, resolved_record
from dynamtl.train.evaluate import Evaluation, evaluate
from dynamtl.train.folder import (
    RESULTS_FORMAT,
    RunFolder,
    write_atomic,
    write_json_atomic,
)
from dynamtl.train.logs import RunLog
from dynamtl.train.plots import draw_run_plots
from dynamtl.train.processes import Processes
from dynamtl.train.selection import CRITERION, Selection

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {  # classes taking lr, weight_decay
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}


class DataError(RuntimeError):
    """The benchmark's data could not be loaded; the message is the loader's."""


logger = logging.getLogger("dynamtl")


class TrainingStopped(RuntimeError):
    """The run stopped on a non-finite loss; its last good checkpoint is kept."""


class RunStopped(RuntimeError):
    """The run was stopped by a signal (``SIGINT``, ``SIGTERM``) after checkpointing; the
    message says how to continue it (empty in the processes other than rank 0 of a
    distributed run, so that it is said once). ``signal``: the signal's number."""

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.signal = signal_number


@dataclass(frozen=True)
class Display:
    """How a run shows itself: ``progress`` bars and epoch lines (on a terminal), each
    prefixed with ``label`` (``"[5/17] auto-lambda seed 0"`` in a comparison)."""

    progress: bool = True
    label: str = ""


def run_session(
    checked: RunPlan, folder: RunFolder, processes: Processes, *, display: Display, resume_from: str | None,
    allow_changes: bool = False, trust: bool = False,
) -> dict[str, Any]:
    """Train ``checked`` in ``folder``, from scratch or from the checkpoint ``resume_from``
    (``"last"`` or ``"previous"``), in ``processes`` (rank 0 writes the folder); return the
    results written to ``results.json``. A checkpoint whose config or environment differs
    from the run's is refused unless ``allow_changes``; one that cannot be verified against
    its checksum unless ``trust``."""
    with _deterministic():
        session = _Session(checked, folder, processes, display, resume_from, allow_changes, trust)
        wait = True
        try:
            return session.run()
        except KeyboardInterrupt:
            wait = False  # a second Ctrl-C: stop at once, not waiting for the TensorBoard writer
            raise
        finally:
            session.log.close(wait=wait)


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


class _Session:
    """The objects of one run and its training loop."""

    def __init__(
        self, checked: RunPlan, folder: RunFolder, processes: Processes, display: Display, resume_from: str | None,
        allow_changes: bool,
        trust: bool,
    ) -> None:
        config = checked.config
        assert config.epochs is not None and config.batch_size is not None
        self.config, self.folder, self.processes = config, folder, processes
        self.progress = display.progress and processes.main
        self.label = f"{display.label} " if display.label else ""
        self.environment = environment()
        self.epochs, self.batch_size = config.epochs, config.batch_size
        if self.batch_size % processes.size:
            raise ConfigError(
                f"--batch-size {self.batch_size} is the global batch, shared by {processes.size} processes: "
                f"choose a multiple of {processes.size}"
            )
        state, changes = self._checked_checkpoint(resume_from, allow_changes, trust) if resume_from else (None, [])
        checkpoint.seed_everything(config.seed)
        self.bench = bench = checked.benchmark
        assert config.root is not None
        try:
            with data_progress.shown(self.progress):  # preparing an empty data folder shows its bars
                splits = bench.splits(Path(config.root), config.seed, config.limit)
        except (OSError, ValueError) as error:
            raise DataError(f"cannot load the data of benchmark {bench.name!r} from {config.root}: {error}") from error
        self.splits = splits
        names = checked.context.tasks
        self.specs = {task: bench.specs[task] for task in names}
        self.device = processes.device
        self.model = bench.model({task: spec.out_features for task, spec in self.specs.items()}).to(self.device)
        weighting, aggregation = checked.method.build(checked.context)
        self.scaler = torch.amp.GradScaler(self.device.type) if config.precision == "fp16" else None
        self.mtl = MultiTask(
            processes.wrap(self.model), bench.tasks(names), _optimizer(config, self.model),
            weighting=weighting, aggregation=aggregation,
            representation=bench.representation if aggregation.needs_representation else None,
            scaler=self.scaler,
        )
        assert self.mtl.optimizer is not None
        self.optimizer = self.mtl.optimizer
        self.scheduler = _scheduler(config, self.optimizer)
        self.training = Passes(
            bench, splits.train, self.batch_size, config.seed, "train", bool(config.shuffle), self.device
        )
        meta_data = splits.val if config.meta_source == "val" else splits.train
        self.meta_stream = MetaStream(Passes(bench, meta_data, self.batch_size, config.seed, "meta", True, self.device))
        # aggregations that read several independent mini-batches per step (SDMGrad, MoDo) draw
        # the others from a stream of reshuffled passes over the training split of its own
        self.extra_batches = self.mtl.aggregation.batches_per_step - 1
        self.extra_stream = MetaStream(
            Passes(bench, splits.train, self.batch_size, config.seed, "extra", True, self.device)
        ) if self.extra_batches else None
        self.resumed_batches: Iterator[Any] | None = None
        self.primary = checked.context.primary
        self.selection = Selection(self.primary, self.specs)
        self.epoch, self.batch, self.step = 0, 0, 0
        self.totals = _EpochTotals(len(names))
        self.skipped, self.last_weights = 0, torch.zeros(0)
        self.seconds = {"train": 0.0, "eval": 0.0}
        written = folder if processes.main else None
        if processes.main and (state is None or changes or self._environment_edited(folder)):
            write_json_atomic(folder.config, {**config.to_dict(), ENVIRONMENT: self.environment})
        if state is None:
            self.log = RunLog(written)
            self.log.event("start", dynamtl=dynamtl.__version__, tasks=list(names))
        else:
            path = folder.checkpoint(resume_from or "last")
            self._load(state, path, trust)
            if trust and processes.main:  # once it is known to be put back whole
                checkpoint.record_checksum(path)
                logger.warning("%s was read on trust (--trust-checkpoint): its checksum is recorded anew in %s",
                               path, path.parent / checkpoint.CHECKSUMS)
            self.log = RunLog(written, True, self.step, self.epoch)
            self.log.event("resume", checkpoint=resume_from, **self._position())
            for change in changes:
                self.log.event("change", change=change)
            for repair in self.log.repairs:
                logger.warning("%s", repair)
                self.log.event("log-repair", repair=repair)

    def _environment_edited(self, folder: RunFolder) -> bool:
        """Whether ``config.json``'s ``environment`` block (a copy for reading: the
        environment is measured and compared with the checkpoint's record) differs from the
        one measured now, saying so: it is then rewritten."""
        try:
            recorded = json.loads(folder.config.read_text()).get(ENVIRONMENT)
        except (OSError, ValueError, AttributeError):
            return False  # a missing or damaged config.json is handled (rewritten) before
        if recorded == self.environment:
            return False
        logger.warning("%s: its %r block (%s) is not this run's environment (%s), which is what resume compares "
                       "with the checkpoint's record; it was rewritten", folder.config, ENVIRONMENT, recorded,
                       self.environment)
        return True

    def _checked_checkpoint(self, which: str, allow_changes: bool, trust: bool) -> tuple[dict[str, Any], list[str]]:
        """The checkpoint ``which`` (read although it cannot be verified when ``trust``) and
        the differences of its config and environment from this run's (allowed ones
        only), followed by the settings it did not record that take their defaults."""
        if which not in ("last", "previous"):
            raise ValueError(f"checkpoint must be 'last' or 'previous', got {which!r}")
        path = self.folder.checkpoint(which)
        state = checkpoint.load(path, trust=trust)
        differences, unrecorded = checkpoint.config_differences(
            {**state["config"], ENVIRONMENT: state.get("environment", {})},
            {**self.config.to_dict(), ENVIRONMENT: self.environment},
            {**resolved_record(state["config"]), ENVIRONMENT: self.environment},
        )
        if differences and not allow_changes:
            listed = "".join(f"\n  - {d}" for d in differences)
            raise checkpoint.CheckpointError(
                f"the checkpoint {path} was made under another configuration or environment:{listed}\n"
                "resume with the same settings (put back what changed: a setting edited in config.json — "
                "`threads` too, which resume takes from config.json, not from OMP_NUM_THREADS — or the dynamtl "
                f"and torch versions), or accept the changes with "
                f"`{suggested('resume', self.folder.root, '--allow-changes')}` (results may then differ from an "
                "uninterrupted run); or start a new run in another folder"
            )
        if differences and self.processes.main:
            logger.warning("resuming %s with changes: %s", self.folder.root, "; ".join(differences))
        if unrecorded and self.processes.main:
            logger.warning("%s", checkpoint.unrecorded_note(path, unrecorded))
        saved = state.get("processes", 1)
        if saved != self.processes.size:
            raise checkpoint.CheckpointError(
                f"the checkpoint {path} was made by {saved} process(es), this run has {self.processes.size}: the "
                f"position in the data depends on it; resume with {saved} process(es): "
                f"`{suggested_for(saved, 'resume', self.folder.root)}`"
            )
        return state, [*differences, *(f"not recorded: {u}" for u in unrecorded)]

    def run(self) -> dict[str, Any]:
        total = self.epochs * self.training.per_pass
        disable = None if self.progress else True  # None: bars only on a terminal
        with _signals() as signals, tqdm(
            total=total, initial=self.step, unit="step", disable=disable, dynamic_ncols=True
        ) as bar:
            while self.epoch < self.epochs:
                bar.set_description(f"{self.label}epoch {self.epoch + 1}/{self.epochs}")
                self._train_epoch(signals, bar)
                summary = self._end_epoch()
                if self.progress:
                    bar.write(f"{self.label}{summary}")
                if self.processes.any(signals.stop is not None):
                    self._stop(signals)
        return self._finish()

    def _train_epoch(self, signals: _Signals, bar: tqdm) -> None:
        needs_meta = self.mtl.weighting.needs_meta_batch
        start = time.perf_counter()
        batches = self.resumed_batches or self.training.iterate(self.epoch, self.batch)
        self.resumed_batches = None
        shard = self.processes.shard
        for index, batch in enumerate(map(shard, batches), start=self.batch):
            meta_batch = shard(self.meta_stream.next()) if needs_meta else None
            extra = self.extra_stream
            extra_batches = [shard(extra.next()) for _ in range(self.extra_batches)] if extra else []
            self.step += 1
            record: dict[str, Any] = {"step": self.step, "epoch": self.epoch + 1, "batch": index + 1,
                                      "lr": self.optimizer.param_groups[0]["lr"]}
            try:
                with self._autocast():
                    info = self.mtl.step(batch, meta_batch, extra_batches=extra_batches)
            except NonFiniteLossError as error:
                self._non_finite(error, record)
            else:
                self.totals.add(info.losses)
                if not info.skipped:  # a loss-scale overflow (fp16)
                    self.last_weights = info.weights
                self.log.step({**record, **info.as_dict()})
            self.batch = index + 1
            bar.update()
            every = self.config.checkpoint_every
            signalled = self.processes.any(signals.checkpoint.is_set())  # the same decision on every process
            if (every and self.step % every == 0) or signalled:
                reason = "signal" if signalled else "steps"
                signals.checkpoint.clear()
                start = self._charge_time(start)
                self._save(reason)
                if signalled and self.processes.any(signals.stop is not None):
                    self._stop(signals)
        self._charge_time(start)

    def _autocast(self) -> torch.autocast:
        """The autocast of ``--precision`` (disabled for 32)."""
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.config.precision)
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def _stop(self, signals: _Signals) -> None:
        """End the run after a stopping signal: the checkpoint just saved is the one to
        continue from."""
        number = signals.stop or signal.SIGTERM
        name = signal.Signals(number).name
        self.log.event("stop", reason=name, **self._position())
        position = self._position()
        raise RunStopped(
            f"stopped by {name} at step {position['step']} (epoch {position['epoch']}, batch {position['batch']}); "
            f"checkpoint saved in {self.folder.checkpoints}. Continue with: {suggested('resume', self.folder.root)}"
            if self.processes.main else "",  # said once, by rank 0 of torchrun's processes
            number,
        )

    def _charge_time(self, start: float) -> float:
        """Add the training time since ``start`` to the epoch's and the run's; return now."""
        now = time.perf_counter()
        self.totals.seconds += now - start
        self.seconds["train"] += now - start
        return now

    def _non_finite(self, error: NonFiniteLossError, record: dict[str, Any]) -> None:
        where = f"epoch {record['epoch']}, batch {record['batch']} (run step {record['step']})"
        if self.config.on_nonfinite == "skip":
            self.skipped += 1
            self.totals.skipped += 1
            self.log.step({**record, "skipped": True, "error": str(error)})
            return
        self.log.event("stop", reason="non-finite loss", where=where, error=str(error))
        last = self.folder.checkpoint("last")
        kept = f"the last good checkpoint {last} is kept" if last.exists() else "no checkpoint had been saved yet"
        kept += "; train anew with a lower --lr, or with --on-nonfinite skip to skip such batches"
        raise TrainingStopped(f"training stopped at {where}: {error}; {kept}") from error

    def _end_epoch(self) -> str:
        """Evaluate, select, log and checkpoint at the end of an epoch; a one-line summary."""
        start = time.perf_counter()
        self.mtl.end_epoch()
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        val = self._evaluate(self.splits.val)
        score, best = self.selection.update(self.epoch + 1, val.metrics, self.model)
        seconds_eval = time.perf_counter() - start
        self.seconds["eval"] += seconds_eval
        self.log.epoch({
            "epoch": self.epoch + 1, "step": self.step, "lr": lr,
            **self.totals.means(self.specs), **val.flat("val"),
            "selection": score, "best": best, "skipped": self.totals.skipped,
            "seconds_train": self.totals.seconds, "seconds_eval": seconds_eval,
        })
        self.epoch, self.batch = self.epoch + 1, 0
        self.totals = _EpochTotals(len(self.specs))
        self._save("epoch")
        shown = ", ".join(f"{task}/{name} {value:.4g}" for task, m in val.metrics.items() for name, value in m.items())
        return f"epoch {self.epoch}/{self.epochs}: val {shown}{' (best)' if best else ''}"

    def _finish(self) -> dict[str, Any]:
        selection = self.selection
        assert selection.best_model is not None and selection.best_metrics is not None
        self.model.load_state_dict(selection.best_model)
        test = self._evaluate(self.splits.test)
        config = self.config
        results = {
            "format": RESULTS_FORMAT,
            "benchmark": config.benchmark, "method": config.method, "seed": config.seed,
            "mode": config.mode, "tasks": list(self.specs), "primary": list(self.primary),
            "best_epoch": selection.best_epoch,
            "selection": {"criterion": CRITERION, "score": selection.best_score},
            "val": selection.best_metrics, "test": test.metrics,
            "metrics": {t: [{"name": m.name, "higher_is_better": m.higher_is_better} for m in s.metrics]
                        for t, s in self.specs.items()},
            "final_weights": dict(zip(self.specs, self.last_weights.tolist())),
            "delta_mtl": None,
            "steps": self.step, "skipped_steps": self.skipped, "seconds": dict(self.seconds),
        }
        if self.processes.main:
            write_atomic(self.folder.model, checkpoint.serialized(selection.best_model))
            write_json_atomic(self.folder.results, results)
            self.log.event("finish", best_epoch=selection.best_epoch, steps=self.step)
            draw_run_plots(self.folder.root)
        return results

    def _evaluate(self, data: Any) -> Evaluation:
        batches = Passes(self.bench, data, self.batch_size, self.config.seed, "eval", False, self.device)
        return evaluate(self.model, self.specs, batches.iterate(0), multi_input=self.mtl.tasks.multi_input)

    def _save(self, reason: str) -> None:
        if not self.processes.main:
            return
        checkpoint.save(self.folder, self._state())
        self.log.event("checkpoint", reason=reason, **self._position())

    def _state(self) -> dict[str, Any]:
        """Everything the run needs to continue (see :mod:`dynamtl.train.checkpoint`)."""
        return {
            "config": self.config.to_dict(),
            "environment": self.environment,
            "processes": self.processes.size,
            "position": {"epoch": self.epoch, "batch": self.batch, "step": self.step},
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "multitask": self.mtl.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "rng": checkpoint.rng_state(),
            "meta_stream": self.meta_stream.drawn,
            "extra_stream": self.extra_stream.drawn if self.extra_stream else 0,
            "totals": self.totals.state_dict(),
            "selection": self.selection.state_dict(),
            "skipped": self.skipped,
            "last_weights": self.last_weights,
            "seconds": dict(self.seconds),
        }

    def _position(self) -> dict[str, int]:
        """The last step done: run ``step``, its ``epoch`` and ``batch`` (1-based, as in
        ``steps.jsonl``; 0 before the first step)."""
        if self.batch == 0 and self.epoch > 0:
            return {"step": self.step, "epoch": self.epoch, "batch": self.training.per_pass}
        return {"step": self.step, "epoch": self.epoch + 1 if self.step else 0, "batch": self.batch}

    def _load(self, state: dict[str, Any], path: Path, trust: bool) -> None:
        """Put the run in the state of the checkpoint ``path`` (complete, as
        :func:`checkpoint.load` checked); ``CheckpointError`` naming the file when a part's
        content cannot be put back."""
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.mtl.load_state_dict(state["multitask"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as error:
            previous = path.with_name("previous.pt")
            other = (f"resume from the checkpoint before it, if only this one was changed "
                     f"(`{suggested('resume', self.folder.root, '--checkpoint', 'previous')}`), or "
                     if path.name == "last.pt" and previous.is_file() else "")
            raise checkpoint.CheckpointError(
                f"the checkpoint {path} does not fit this run's model or method ({describe(error)}): it was made "
                f"by another version of the benchmark or method, or changed. It was left as it is: {other}"
                "start a new run in another folder"
            ) from error
        try:
            self._restore(state)
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as error:
            raise checkpoint.CheckpointError(checkpoint.damaged(
                path, f"its content cannot be put back ({describe(error)})", readable=False, trust=trust)) from error

    def _restore(self, state: dict[str, Any]) -> None:
        """The parts of a checkpoint other than the model, optimizer and method."""
        position = state["position"]
        self.epoch, self.batch, self.step = position["epoch"], position["batch"], position["step"]
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.epoch < self.epochs:  # position the loaders before the random state is put back
            self.resumed_batches = self.training.iterate(self.epoch, self.batch)
        self.meta_stream.seek(state["meta_stream"])
        if self.extra_stream:
            self.extra_stream.seek(state.get("extra_stream", 0))
        self.totals.load_state_dict(state["totals"])
        self.selection.load_state_dict(state["selection"])
        self.skipped, self.last_weights = state["skipped"], state["last_weights"]
        self.seconds = dict(state["seconds"])
        checkpoint.restore_rng(state["rng"])


class _EpochTotals:
    """One epoch's running sums of the training losses (float64), its skips and the
    seconds spent training."""

    def __init__(self, num_tasks: int) -> None:
        self.sums = torch.zeros(num_tasks, dtype=torch.float64)
        self.count = 0
        self.skipped = 0
        self.seconds = 0.0

    def add(self, losses: torch.Tensor) -> None:
        self.sums += losses.detach().to("cpu", torch.float64)
        self.count += 1

    def means(self, tasks: Iterable[str]) -> dict[str, float]:
        means = (self.sums / self.count).tolist() if self.count else [math.nan] * len(self.sums)
        return {f"train_loss/{task}": value for task, value in zip(tasks, means)}

    def state_dict(self) -> dict[str, Any]:
        return {"sums": self.sums.clone(), "count": self.count, "skipped": self.skipped, "seconds": self.seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums, self.count = state["sums"].clone(), state["count"]
        self.skipped, self.seconds = state["skipped"], state["seconds"]


class _Signals:
    """What the signals received so far ask for: ``checkpoint`` (an event: after the
    current step) and ``stop`` (the number of a stopping signal, then end the run)."""

    def __init__(self) -> None:
        self.checkpoint = threading.Event()
        self.stop: int | None = None

    def handle(self, number: int, frame: Any) -> None:
        if number != getattr(signal, "SIGUSR1", None):
            if self.stop == signal.SIGINT and number == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now
            self.stop = number
        self.checkpoint.set()


@contextlib.contextmanager
def _signals() -> Iterator[_Signals]:
    """Handlers of ``SIGUSR1`` (checkpoint after the current step), ``SIGINT`` and
    ``SIGTERM`` (checkpoint after the current step, then stop), put back afterwards. Only
    in the main thread (elsewhere Python delivers no signals)."""
    received = _Signals()
    names = ("SIGUSR1", "SIGINT", "SIGTERM")
    numbers = [getattr(signal, name) for name in names if hasattr(signal, name)]
    usable = threading.current_thread() is threading.main_thread()
    previous = {number: signal.signal(number, received.handle) for number in numbers} if usable else {}
    try:
        yield received
    finally:
        for number, handler in previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)


def _optimizer(config: RunConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    assert config.optimizer is not None
    kind, lr, decay = OPTIMIZERS[config.optimizer], config.lr, config.weight_decay
    extra = {"momentum": config.momentum} if kind is torch.optim.SGD else {}
    return kind(model.parameters(), lr=lr, weight_decay=decay, **extra)


def _scheduler(config: RunConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-epoch learning-rate schedule (a constant one for ``"none"``, so that every
    run has a scheduler state to checkpoint)."""
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs or 1)
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_epochs or 1, gamma=config.step_gamma)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
