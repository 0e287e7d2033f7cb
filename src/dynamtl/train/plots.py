"""Plots of run folders, drawn by :mod:`dynamtl.report` where matplotlib is installed;
without it, training goes on and says once how to get the plots."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from dynamtl.report.shares import Share

logger = logging.getLogger("dynamtl")
_told_about_matplotlib = False


def draw_run_plots(run_dir: Path) -> list[Path]:
    """``run_dir/plots/*.png`` (task weights over steps, validation metrics over epochs)."""
    try:
        from dynamtl.report.plots import plot_run

        return plot_run(run_dir)
    except ModuleNotFoundError as error:
        _tell_once(error)
        return []


def draw_weights_comparison(run_dirs: Mapping[str, Path], out: Path) -> list[Path]:
    """One figure with the task weights of every run of ``run_dirs`` (label -> folder)."""
    try:
        from dynamtl.report.plots import plot_weights_comparison

        return [plot_weights_comparison(run_dirs, out)]
    except ModuleNotFoundError as error:
        _tell_once(error)
        return []


def draw_share_comparison(shares: Mapping[str, Sequence[Share]], task: str, out: Path) -> list[Path]:
    """One figure of ``task``'s share of the helper weight per method (label -> its seeds' shares)."""
    try:
        from dynamtl.report.plots import plot_share_comparison

        return [plot_share_comparison(shares, task, out)]
    except ModuleNotFoundError as error:
        _tell_once(error)
        return []


def _tell_once(error: ModuleNotFoundError) -> None:
    global _told_about_matplotlib
    if not _told_about_matplotlib:
        logger.warning("plots skipped: %s", error)
        _told_about_matplotlib = True
