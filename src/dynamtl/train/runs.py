"""The results of a run in a folder: trained anew, resumed, or read back.

:func:`train` starts a run in a new folder, :func:`resume` continues one from its
checkpoint, and :func:`train_or_reuse` returns the results of a finished run of the same
configuration, resuming an unfinished one and training only when the folder is new; it is
the cache of ``dynamtl compare``.

A method whose registry entry is ``single_task`` (``stl``) expands into one run of Equal
weighting per primary task, with that task's head only, in ``tasks/<task>/`` of its folder;
its ``results.json`` gathers their metrics (the reference of Δ_MTL).
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dynamtl.command import is_cli, suggested, typed
from dynamtl.train import checkpoint
from dynamtl.train.config import ENVIRONMENT, ConfigError, RunConfig, RunPlan, plan, resolved_record
from dynamtl.train.folder import (
    RESULTS_FORMAT,
    FolderWriteError,
    RunFolder,
    RunFolderError,
    locked,
    write_json_atomic,
)
from dynamtl.train.processes import Processes, launched_as_main, processes
from dynamtl.train.session import Display, RunStopped, run_session

logger = logging.getLogger("dynamtl")


def train(config: RunConfig, out: Path, *, progress: bool = True) -> dict[str, Any]:
    """Train ``config`` in the new run folder ``out``; return its ``results.json`` dict.
    ``RunFolderError`` when ``out`` is in use by another process (said first), or already
    holds a run, saying what to do with it."""
    checked = plan(config)
    folder = RunFolder(Path(out))
    with _holding(folder):
        if folder.finished:
            raise RunFolderError(
                f"{folder.root} holds a finished run (results in {folder.results}): train into another --out, or "
                f"delete {folder.root} to train it anew; to train it longer, start a new run with more --epochs"
            )
        if folder.config.exists():
            raise RunFolderError(
                f"{folder.root} already holds an unfinished run: continue it with "
                f"`{suggested('resume', folder.root)}`, or choose another --out"
            )
        return _execute(checked, folder, Display(progress), resume_from=None)


def resume(
    out: Path, *, which: str = "last", progress: bool = True, allow_changes: bool = False, trust: bool = False
) -> dict[str, Any]:
    """Continue the run in ``out`` from its checkpoint ``which`` (``"last"`` or
    ``"previous"``); return its results. A missing ``last.pt`` falls back to ``previous.pt``,
    and a run without either (stopped before its first checkpoint) starts over, each said
    in one line; a finished run is left as it is and its results are returned (so that
    ``train`` then ``resume`` always ends with the results; a damaged ``config.json`` is
    rewritten from its checkpoint). A config or environment that differs from the
    checkpoint's is refused unless ``allow_changes``; a checkpoint that cannot be verified
    against its checksum (record missing or damaged, or changed on purpose) unless
    ``trust``."""
    folder = RunFolder(Path(out))
    if not folder.root.is_dir():
        raise RunFolderError(f"no folder {folder.root}: give the folder of a run (the --out of `dynamtl train`)")
    with _holding(folder):
        if folder.finished:
            if folder.checkpoint(which).is_file():
                _recorded_config(folder, which, trust)  # rewrites a damaged config.json
            results = folder.read_results()
            if launched_as_main():
                logger.warning("the run in %s has finished: nothing to resume (results in %s); to train longer, "
                               "start a new run with more --epochs in another --out (its schedule is planned for "
                               "its number of epochs)", folder.root, folder.results)
            return results
        recorded = _recorded_config(folder, which, trust)
        checked = plan(RunConfig.from_mapping(recorded, str(folder.config)))
        if which == "previous":
            _set_aside_damaged_last(folder)
        resume_from = None if checked.method.single_task else _continue_from(folder, which)
        return _execute(checked, folder, Display(progress), resume_from, allow_changes=allow_changes, trust=trust)


def train_or_reuse(config: RunConfig, out: Path, *, progress: bool = True, label: str = "") -> dict[str, Any]:
    """The results of ``config`` in ``out``: read back if that run finished, resumed if it
    was interrupted, trained if the folder holds no run. ``RunFolderError`` if it is in use
    by another process, or holds a run of another configuration (a setting the run did not
    record, because it was made before the setting existed, counts as the same when it has
    its default now). ``label`` prefixes its progress bar and epoch lines."""
    checked = plan(config)
    folder = RunFolder(Path(out))
    display = Display(progress, label)
    with _holding(folder):
        if not folder.config.exists():
            return _execute(checked, folder, display, resume_from=None)
        recorded = _recorded_config(folder, "last")
        differences, unrecorded = checkpoint.config_differences(
            recorded, checked.config.to_dict(), resolved_record(recorded)
        )
        if differences:
            raise RunFolderError(
                f"{folder.root} holds a run of another configuration ({'; '.join(differences)}): "
                "choose another output folder"
            )
        if unrecorded and launched_as_main():
            logger.warning("%s", checkpoint.unrecorded_note(folder.config, unrecorded))
        if folder.finished:
            return folder.read_results()
        return _execute(checked, folder, display,
                        None if checked.method.single_task else _continue_from(folder, "last"))


@contextlib.contextmanager
def _holding(folder: RunFolder) -> Iterator[None]:
    """Hold the lock of ``folder`` (in rank 0 of ``torchrun``'s processes) for all the
    reading and writing a command does there, so that a folder in use is reported before
    anything about the run it holds (which the holder may be changing)."""
    with locked(folder) if launched_as_main() else contextlib.nullcontext():
        yield


def _recorded_config(folder: RunFolder, which: str, trust: bool = False) -> dict[str, Any]:
    """The config of ``config.json`` (without its ``environment``). A damaged or missing
    ``config.json`` is rewritten from the checkpoint ``which`` when that one is intact (or
    ``trust``)."""
    path = folder.checkpoint(which)
    repair = f"the run saved no checkpoint to rebuild it from: delete {folder.root} and train anew"
    try:
        recorded = folder.read_json(folder.config, repair=repair, check=_config_problems)
    except RunFolderError as error:
        if not path.is_file():
            raise
        problem = str(error).removesuffix(f": {repair}") if folder.config.is_file() else f"{folder.config} was missing"
        state = checkpoint.load(path, trust=trust)
        recorded = {**state["config"], ENVIRONMENT: state.get("environment", {})}
        if launched_as_main():
            if trust:
                checkpoint.record_checksum(path)
            write_json_atomic(folder.config, recorded)
            logger.warning("%s; it was rewritten from the checkpoint %s", problem, path)
    recorded.pop(ENVIRONMENT, None)
    return recorded


def _config_problems(recorded: dict[str, Any]) -> list[str]:
    """What makes ``config.json`` not a run's config: a setting missing, unknown or of the
    wrong type (as :meth:`RunConfig.from_mapping` reads it), an environment that is not a
    table."""
    problems = [] if isinstance(recorded.get(ENVIRONMENT, {}), dict) else [f"{ENVIRONMENT!r} is not a table"]
    if "benchmark" not in recorded:
        return [*problems, "'benchmark' is missing"]
    try:
        RunConfig.from_mapping({key: value for key, value in recorded.items() if key != ENVIRONMENT}, "config.json")
    except ConfigError as error:
        problems += error.problems
    return problems


def _set_aside_damaged_last(folder: RunFolder) -> None:
    """Before resuming from ``previous.pt``, rename a ``last.pt`` that positively fails its
    checksum (its record intact) to ``last.damaged.pt``, so that the next checkpoint does
    not rotate it over the good one. A ``last.pt`` that cannot be verified, or whose
    ``previous.pt`` fails its checksum too, is left as it is."""
    last, previous = folder.checkpoint("last"), folder.checkpoint("previous")
    if last.is_file() and previous.is_file() and checkpoint.mismatches(last) and not checkpoint.mismatches(previous):
        aside = last.with_name("last.damaged.pt")
        last.replace(aside)
        logger.warning("%s fails its checksum: kept as %s", last, aside)


def _continue_from(folder: RunFolder, which: str) -> str | None:
    """The checkpoint an unfinished run continues from: ``which``; ``previous`` when
    ``last.pt`` is missing and ``previous.pt`` is there; ``None`` (start over) when neither
    is there (a run stopped before its first checkpoint, or whose checkpoints were
    removed). Each fallback is said in one line."""
    last, previous = folder.checkpoint("last"), folder.checkpoint("previous")
    if folder.checkpoints.exists() and not folder.checkpoints.is_dir():  # not "no checkpoint": the logs are kept
        raise RunFolderError(f"{folder.checkpoints} is not a folder (a file is in its place): move it out of the way "
                             f"(or put the run's checkpoints folder back), then run the same command again")
    if which == "previous" or last.exists():
        return which
    if previous.exists():
        if launched_as_main():
            logger.warning("%s is missing: resuming from %s", last, previous)
        return "previous"
    if launched_as_main():
        aside = last.with_name("last.damaged.pt")
        logger.warning("no usable checkpoint in %s (no last.pt or previous.pt%s): starting the run over from step 0",
                       folder.checkpoints, f"; {aside.name} was set aside as damaged" if aside.exists() else "")
    return None


def _execute(
    checked: RunPlan, folder: RunFolder, display: Display, resume_from: str | None, *, allow_changes: bool = False,
    trust: bool = False,
) -> dict[str, Any]:
    """Run in this process, or in every process that ``torchrun`` launched (rank 0 writing
    the folder, whose lock the caller holds)."""
    with processes(checked.config.device, checked.config.threads) as group:
        try:
            if checked.method.single_task:
                return _train_single_task(checked, folder, display, group)
            return run_session(checked, folder, group, display=display, resume_from=resume_from,
                               allow_changes=allow_changes, trust=trust)
        except KeyboardInterrupt:
            raise RunStopped(_interrupted(folder) if launched_as_main() else "", signal.SIGINT) from None
        except FolderWriteError as error:
            if not error.remedy:
                raise
            then = (f"continue with `{suggested('resume', folder.root)}`" if folder.config.is_file()
                    else f"start it again{f' with: {typed()}' if is_cli() else ''}")
            raise FolderWriteError(f"{error}; {error.remedy}, then {then}") from error


def _interrupted(folder: RunFolder) -> str:
    """What to do after Ctrl-C: resume a run whose folder records it (from its last
    checkpoint, or from the start), run the command again when it was interrupted before
    it recorded anything (while preparing its data)."""
    if folder.config.is_file():
        return (f"interrupted; {folder.root} keeps its last checkpoint, if it had saved one. "
                f"Continue with: {suggested('resume', folder.root)}")
    again = f"start it again with: {typed()}" if is_cli() else "start it again (the same call)"
    return (f"interrupted before the run was recorded in {folder.root} (while preparing its data): nothing to "
            f"resume; {again}")


def _train_single_task(checked: RunPlan, folder: RunFolder, display: Display, group: Processes) -> dict[str, Any]:
    """One Equal-weighting run per primary task, each reused when already done."""
    config = checked.config
    if group.main:
        write_json_atomic(folder.config, config.to_dict())
    runs = {}
    for task in checked.context.primary:
        try:
            runs[task] = train_or_reuse(
                config.replace(method="equal", options={}, tasks=(task,), mode="multi-task", primary=None),
                folder.task_run(task).root,
                progress=display.progress, label=f"{display.label} {task}".strip(),
            )
        except RunStopped as error:
            # the way on is the whole baseline's resume (every task's run), not the one task's
            said = str(error).split(" Continue with: ")[0].split(": nothing to resume")[0].rstrip(".")
            raise RunStopped(f"{said} (the single-task run of {task!r}). Continue with: "
                             f"{suggested('resume', folder.root)}" if said else "", error.signal) from None
    results = {
        "format": RESULTS_FORMAT,
        "benchmark": config.benchmark, "method": config.method, "seed": config.seed, "mode": config.mode,
        "tasks": list(runs), "primary": list(runs), "single_task": True, "best_epoch": None,
        "val": {task: r["val"][task] for task, r in runs.items()},
        "test": {task: r["test"][task] for task, r in runs.items()},
        "metrics": {task: r["metrics"][task] for task, r in runs.items()},
        "final_weights": {}, "delta_mtl": None,
        "steps": sum(r["steps"] for r in runs.values()),
        "skipped_steps": sum(r["skipped_steps"] for r in runs.values()),
        "seconds": {k: sum(r["seconds"][k] for r in runs.values()) for k in ("train", "eval")},
        "runs": {task: str(folder.task_run(task).root.relative_to(folder.root)) for task in runs},
    }
    if group.main:
        write_json_atomic(folder.results, results)
    return results
