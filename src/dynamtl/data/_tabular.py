"""Shared helpers of the tabular benchmarks (Census-Income, QM9): filling a data folder from
a pip package, seeded hold-out splits, standardisation fitted on training rows, and the
shared-bottom MLP with one head per task."""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

import torch
from torch import Tensor, nn

from dynamtl._helpers import seeded_permutation
from dynamtl.data._files import copy_files, find_file, package_file


def fill_from_package(folder: Path, files: Mapping[str, str], package: str, pip_name: str) -> None:
    """Copy ``files`` (name in ``folder`` -> path inside the installed ``package``) into
    ``folder`` when none of them is there yet (plain or ``.gz``); leave a folder holding some
    of them alone, so that the caller's check names what is missing. ``FileNotFoundError``
    naming the files and ``pip install pip_name`` when the package is absent."""
    if any(find_file(folder, name) is not None for name in files):
        return
    try:
        sources = {name: package_file(package, relative, pip_name) for name, relative in files.items()}
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"{folder} holds none of the files {list(files)} (plain or .gz), and they cannot be filled "
            f"offline: {error}; or put the published files there"
        ) from error
    copy_files(sources, folder, f"copying {package}'s files")


def open_text(path: Path) -> TextIO:
    """``path`` opened for reading ASCII/UTF-8 text, decompressed when it ends in ``.gz``."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def file_digests(paths: Mapping[str, Path]) -> dict[str, str]:
    """``name -> SHA-256`` of the files ``paths``: the part of a cache recipe that notices a
    replaced or altered source file (even one of the same size)."""
    digests = {}
    for name, path in paths.items():
        digest = hashlib.sha256()
        with path.open("rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
        digests[f"sha256:{name}"] = digest.hexdigest()
    return digests


def hold_out(pool: Tensor, n_val: int, seed: int, limit: int | None) -> tuple[Tensor, Tensor]:
    """``(train, val)`` row indices: ``n_val`` rows of ``pool`` drawn by ``seed`` for
    validation, the others (in seeded order, the first ``limit`` of them when given) for
    training."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit caps the number of training samples and must be at least 1, got {limit}")
    if not 0 < n_val < len(pool):
        raise ValueError(f"cannot hold out {n_val} validation rows from {len(pool)}")
    shuffled = pool[seeded_permutation(len(pool), seed)]
    return shuffled[n_val:][:limit], shuffled[:n_val]


def fit_standardisation(train: Tensor) -> tuple[Tensor, Tensor]:
    """Column means and standard deviations of ``train`` [N, D] (float64); a constant column
    gets a standard deviation of 1, so that ``(x - mean) / std`` is always finite."""
    train = train.double()
    mean, std = train.mean(dim=0), train.std(dim=0)
    return mean, torch.where(std > 0, std, torch.ones_like(std))


class MultiHeadMLP(nn.Module):
    """A shared bottom of ``Linear -> ReLU`` layers and one linear head per task.

    ``model(x)`` returns ``{task: head(trunk(x))}``; a head of width 1 (a scalar regression)
    returns a vector ``[N]``, a wider head ``[N, width]``.

    Args:
        in_features: the width of the inputs.
        hidden: the widths of the shared layers (at least one).
        heads: task -> output width.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], heads: Mapping[str, int]) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("MultiHeadMLP needs at least one shared layer: give hidden=(width, ...)")
        if not heads:
            raise ValueError("MultiHeadMLP needs at least one head: give heads={'task': width, ...}")
        bad = {task: width for task, width in heads.items() if width < 1}
        if bad:
            raise ValueError(f"head widths must be at least 1, got {bad}")
        layers: list[nn.Module] = []
        for width_in, width_out in zip([in_features, *hidden[:-1]], hidden):
            layers += [nn.Linear(width_in, width_out), nn.ReLU()]
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({task: nn.Linear(hidden[-1], width) for task, width in heads.items()})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        shared = self.trunk(x)
        outputs = {task: head(shared) for task, head in self.heads.items()}
        return {task: out.squeeze(-1) if out.shape[-1] == 1 else out for task, out in outputs.items()}
