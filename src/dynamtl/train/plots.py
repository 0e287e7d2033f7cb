"""Plots of run folders, drawn by :mod:`dynamtl.report` where matplotlib is installed;
without it, training goes on and says once how to get the plots."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from dynamtl.report.shares import Share
from dynamtl.train.folder import FolderWriteError

logger = logging.getLogger("dynamtl")
_told_about_matplotlib = False


def draw_run_plots(run_dir: Path) -> list[Path]:
    """``run_dir/plots/*.png`` (task weights over steps, validation metrics over epochs)."""
    from dynamtl.report import plots

    return _drawn(lambda: plots.plot_run(run_dir))


def draw_weights_comparison(run_dirs: Mapping[str, Path], out: Path) -> list[Path]:
    """One figure with the task weights of every run of ``run_dirs`` (label -> folder)."""
    from dynamtl.report import plots

    return _drawn(lambda: [plots.plot_weights_comparison(run_dirs, out)])


def draw_share_comparison(shares: Mapping[str, Sequence[Share]], task: str, out: Path) -> list[Path]:
    """One figure of ``task``'s share of the helper weight per method (label -> its seeds' shares)."""
    from dynamtl.report import plots

    return _drawn(lambda: [plots.plot_share_comparison(shares, task, out)])


def _drawn(draw: Callable[[], list[Path]]) -> list[Path]:
    """The figures ``draw`` wrote; none, with a one-line warning, when matplotlib is
    missing (said once), a figure cannot be written (the run's results are kept: plots
    come after them, and ``dynamtl plot`` draws them again), or the files it reads are
    missing or damaged (the warning names them)."""
    global _told_about_matplotlib
    try:
        return draw()
    except ModuleNotFoundError as error:
        if not _told_about_matplotlib:
            logger.warning("plots skipped: %s", error)
            _told_about_matplotlib = True
    except FolderWriteError as error:
        logger.warning("plots not drawn: %s (the results are written; `dynamtl plot` draws them again)", error)
    except (FileNotFoundError, ValueError) as error:  # a log or config.json missing or damaged: named
        logger.warning("plots not drawn: %s (the results are written)", error)
    return []
