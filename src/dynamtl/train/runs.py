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

from pathlib import Path
from typing import Any

from dynamtl.train import checkpoint
from dynamtl.train.config import RunConfig, RunPlan, plan
from dynamtl.train.folder import (
    RESULTS_FORMAT,
    RunFolder,
    RunFolderError,
    write_json_atomic,
)
from dynamtl.train.processes import Processes, processes
from dynamtl.train.session import run_session


def train(config: RunConfig, out: Path, *, progress: bool = True) -> dict[str, Any]:
    """Train ``config`` in the new run folder ``out``; return its ``results.json`` dict."""
    checked = plan(config)
    folder = RunFolder(Path(out))
    if folder.config.exists():
        raise RunFolderError(
            f"{folder.root} already holds a run: continue it with `dynamtl resume {folder.root}`, "
            "or choose another --out"
        )
    return _execute(checked, folder, progress, resume_from=None)


def resume(out: Path, *, which: str = "last", progress: bool = True) -> dict[str, Any]:
    """Continue the run in ``out`` from its checkpoint ``which`` (``"last"`` or
    ``"previous"``); return its results. A run stopped before its first checkpoint starts
    over."""
    folder = RunFolder(Path(out))
    checked = plan(RunConfig.from_mapping(folder.read_json(folder.config), str(folder.config)))
    if folder.finished:
        raise RunFolderError(f"the run in {folder.root} has finished; its results are in {folder.results}")
    return _execute(checked, folder, progress, _continue_from(folder, which))


def train_or_reuse(config: RunConfig, out: Path, *, progress: bool = True) -> dict[str, Any]:
    """The results of ``config`` in ``out``: read back if that run finished, resumed if it
    was interrupted, trained if the folder holds no run. ``RunFolderError`` if it holds a
    run of another configuration."""
    checked = plan(config)
    folder = RunFolder(Path(out))
    if not folder.config.exists():
        return _execute(checked, folder, progress, resume_from=None)
    differences = checkpoint.config_differences(folder.read_json(folder.config), checked.config.to_dict())
    if differences:
        raise RunFolderError(
            f"{folder.root} holds a run of another configuration ({'; '.join(differences)}): "
            "choose another output folder"
        )
    if folder.finished:
        return folder.read_json(folder.results)
    return _execute(checked, folder, progress, _continue_from(folder, "last"))


def _continue_from(folder: RunFolder, which: str) -> str | None:
    """The checkpoint an unfinished run continues from; ``None`` (start over) for a run
    stopped before its first checkpoint."""
    return None if which == "last" and not folder.checkpoint("last").exists() else which


def _execute(checked: RunPlan, folder: RunFolder, progress: bool, resume_from: str | None) -> dict[str, Any]:
    """Run in this process, or in every process that ``torchrun`` launched (rank 0
    writing the folder)."""
    with processes(checked.config.device, checked.config.threads) as group:
        if checked.method.single_task:
            return _train_single_task(checked, folder, progress, group)
        return run_session(checked, folder, group, progress=progress, resume_from=resume_from)


def _train_single_task(checked: RunPlan, folder: RunFolder, progress: bool, group: Processes) -> dict[str, Any]:
    """One Equal-weighting run per primary task, each reused when already done."""
    config = checked.config
    if group.main:
        write_json_atomic(folder.config, config.to_dict())
    runs = {
        task: train_or_reuse(
            config.replace(method="equal", options={}, tasks=(task,), mode="multi-task", primary=None),
            folder.task_run(task).root,
            progress=progress,
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
