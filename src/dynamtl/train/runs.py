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
from pathlib import Path
from typing import Any

from dynamtl.train import checkpoint
from dynamtl.train.config import ENVIRONMENT, RunConfig, RunPlan, plan
from dynamtl.train.folder import (
    RESULTS_FORMAT,
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
    ``RunFolderError`` when ``out`` already holds a run, saying what to do with it."""
    checked = plan(config)
    folder = RunFolder(Path(out))
    if folder.finished:
        raise RunFolderError(
            f"{folder.root} holds a finished run (results in {folder.results}): train into another --out, or "
            f"delete {folder.root} to train it anew; to train it longer, start a new run with more --epochs"
        )
    if folder.config.exists():
        raise RunFolderError(
            f"{folder.root} already holds an unfinished run: continue it with `dynamtl resume {folder.root}`, "
            "or choose another --out"
        )
    return _execute(checked, folder, Display(progress), resume_from=None)


def resume(out: Path, *, which: str = "last", progress: bool = True, allow_changes: bool = False) -> dict[str, Any]:
    """Continue the run in ``out`` from its checkpoint ``which`` (``"last"`` or
    ``"previous"``); return its results. A run stopped before its first checkpoint starts
    over; a finished run is left as it is and its results are returned (so that
    ``train`` then ``resume`` always ends with the results). A config or environment that
    differs from the checkpoint's is refused unless ``allow_changes``."""
    folder = RunFolder(Path(out))
    if folder.finished:
        if launched_as_main():
            logger.warning("the run in %s has finished: nothing to resume (results in %s)", folder.root, folder.results)
        return folder.read_json(folder.results)
    recorded = _recorded_config(folder, which)
    checked = plan(RunConfig.from_mapping(recorded, str(folder.config)))
    if which == "previous":
        _set_aside_damaged_last(folder)
    return _execute(checked, folder, Display(progress), _continue_from(folder, which), allow_changes=allow_changes)


def train_or_reuse(config: RunConfig, out: Path, *, progress: bool = True, label: str = "") -> dict[str, Any]:
    """The results of ``config`` in ``out``: read back if that run finished, resumed if it
    was interrupted, trained if the folder holds no run. ``RunFolderError`` if it holds a
    run of another configuration. ``label`` prefixes its progress bar and epoch lines."""
    checked = plan(config)
    folder = RunFolder(Path(out))
    display = Display(progress, label)
    if not folder.config.exists():
        return _execute(checked, folder, display, resume_from=None)
    recorded = _recorded_config(folder, "last")
    differences = checkpoint.config_differences(recorded, checked.config.to_dict())
    if differences:
        raise RunFolderError(
            f"{folder.root} holds a run of another configuration ({'; '.join(differences)}): "
            "choose another output folder"
        )
    if folder.finished:
        return folder.read_json(folder.results, repair=f"delete {folder.root} to train the run again")
    return _execute(checked, folder, display, _continue_from(folder, "last"))


def _recorded_config(folder: RunFolder, which: str) -> dict[str, Any]:
    """The config of ``config.json`` (without its ``environment``). A damaged or missing
    ``config.json`` is rewritten from the checkpoint ``which`` when that one is intact."""
    path = folder.checkpoint(which)
    try:
        recorded = folder.read_json(
            folder.config, repair=f"the run saved no checkpoint to rebuild it from: delete {folder.root} and train anew"
        )
    except RunFolderError as error:
        if not path.is_file():
            raise
        state = checkpoint.load(path)
        recorded = {**state["config"], ENVIRONMENT: state.get("environment", {})}
        write_json_atomic(folder.config, recorded)
        logger.warning("%s; it was rewritten from the checkpoint %s", str(error).split(":")[0], path)
    recorded.pop(ENVIRONMENT, None)
    return recorded


def _set_aside_damaged_last(folder: RunFolder) -> None:
    """Before resuming from ``previous.pt``, rename a ``last.pt`` that fails its checksum to
    ``last.damaged.pt``, so that the next checkpoint does not rotate it over the good one."""
    last = folder.checkpoint("last")
    if last.is_file() and folder.checkpoint("previous").is_file() and not checkpoint.verified(last):
        aside = last.with_name("last.damaged.pt")
        last.replace(aside)
        logger.warning("%s fails its checksum: kept as %s", last, aside)


def _continue_from(folder: RunFolder, which: str) -> str | None:
    """The checkpoint an unfinished run continues from; ``None`` (start over) for a run
    stopped before its first checkpoint."""
    return None if which == "last" and not folder.checkpoint("last").exists() else which


def _execute(
    checked: RunPlan, folder: RunFolder, display: Display, resume_from: str | None, *, allow_changes: bool = False
) -> dict[str, Any]:
    """Run in this process, or in every process that ``torchrun`` launched (rank 0
    holding the folder's lock and writing the folder)."""
    with processes(checked.config.device, checked.config.threads) as group, (
        locked(folder) if group.main else contextlib.nullcontext()
    ):
        try:
            if checked.method.single_task:
                return _train_single_task(checked, folder, display, group)
            return run_session(checked, folder, group, display=display, resume_from=resume_from,
                               allow_changes=allow_changes)
        except KeyboardInterrupt:
            raise RunStopped(
                f"interrupted; {folder.root} keeps its last checkpoint, if it had saved one. "
                f"Continue with: dynamtl resume {folder.root}", 2,
            ) from None


def _train_single_task(checked: RunPlan, folder: RunFolder, display: Display, group: Processes) -> dict[str, Any]:
    """One Equal-weighting run per primary task, each reused when already done."""
    config = checked.config
    if group.main:
        write_json_atomic(folder.config, config.to_dict())
    runs = {
        task: train_or_reuse(
            config.replace(method="equal", options={}, tasks=(task,), mode="multi-task", primary=None),
            folder.task_run(task).root,
            progress=display.progress, label=f"{display.label} {task}".strip(),
        )
        for task in checked.context.primary
    }
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
