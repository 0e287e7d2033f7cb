"""Fashion-MNIST: the IDX reader on files written in the published layout, the Debian
fill, the benchmark's splits and tasks, and the real files when the package is installed."""

from __future__ import annotations

import gzip

import pytest
import torch

from dynamtl.benchmarks.fashion_mnist import GROUP_OF_CLASS, FashionMNIST
from dynamtl.data._files import write_idx
from dynamtl.data.fashion_mnist import DEBIAN_FOLDER
from dynamtl.data.fashion_mnist import FashionMNIST as Files
from dynamtl.registry import benchmark

NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def _indexed(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images whose pixels (0, 0) and (0, 1) spell their index, labels index % 10."""
    images = torch.zeros(n, 28, 28, dtype=torch.uint8)
    index = torch.arange(n)
    images[:, 0, 0], images[:, 0, 1] = (index // 256).to(torch.uint8), (index % 256).to(torch.uint8)
    return images, (index % 10).to(torch.uint8)


def _index_of(images: torch.Tensor) -> torch.Tensor:
    pixels = (images[:, 0, 0, :2] * 255).round().long()
    return pixels[:, 0] * 256 + pixels[:, 1]


def _write(folder, sizes, compress=True):
    folder.mkdir(parents=True, exist_ok=True)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = _indexed(sizes[split])
        for kind, data in (("images-idx3", images), ("labels-idx1", labels)):
            write_idx(folder / f"{prefix}-{kind}-ubyte", data)
            if compress:
                plain = folder / f"{prefix}-{kind}-ubyte"
                (folder / f"{plain.name}.gz").write_bytes(gzip.compress(plain.read_bytes(), compresslevel=1))
                plain.unlink()


class _Small(Files):
    SIZES = {"train": 30, "test": 12}  # noqa: RUF012 (as in MNIST)


def test_fill_copies_the_package_files_and_reads_them(tmp_path):
    source = tmp_path / "deb" / "usr/share/datasets/fashion-mnist"
    _write(source, _Small.SIZES)
    files = _Small(tmp_path / "root", source=source)
    images, labels = files.load("train")
    assert sorted(p.name for p in (tmp_path / "root" / "fashion-mnist").iterdir()) == sorted(f"{n}.gz" for n in NAMES)
    expected_images, expected_labels = _indexed(30)
    assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels.long())
    assert labels.dtype == torch.int64
    assert files.load("test")[0].shape == (12, 28, 28)


def test_files_already_in_root_are_read_without_the_package(tmp_path):
    _write(tmp_path / "fashion-mnist", _Small.SIZES, compress=False)
    images, _ = _Small(tmp_path, source=tmp_path / "nowhere").load("test")
    assert torch.equal(images, _indexed(12)[0])


def test_empty_root_without_the_package_says_how_to_install_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        _Small(tmp_path, source=tmp_path / "nowhere").load("train")


def test_partial_root_names_the_missing_files_and_the_package(tmp_path):
    _write(tmp_path / "fashion-mnist", _Small.SIZES)
    (tmp_path / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte.*dataset-fashion-mnist"):
        _Small(tmp_path, source=tmp_path / "nowhere").load("train")


def test_wrong_sample_counts_and_labels_are_rejected(tmp_path):
    _write(tmp_path / "a" / "fashion-mnist", {"train": 29, "test": 12})
    with pytest.raises(ValueError, match=r"Fashion-MNIST train files .* \[30, 28, 28\]"):
        _Small(tmp_path / "a").load("train")
    _write(tmp_path / "b" / "fashion-mnist", _Small.SIZES)
    write_idx(tmp_path / "b" / "fashion-mnist" / "t10k-labels-idx1-ubyte", torch.full((12,), 10, dtype=torch.uint8))
    (tmp_path / "b" / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ValueError, match="labels above 9"):
        _Small(tmp_path / "b").load("test")


def test_groups_are_the_documented_grouping():
    names = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
    groups = {"tops": {"T-shirt/top", "Pullover", "Coat", "Shirt"}, "bottoms": {"Trouser", "Dress"},
              "footwear": {"Sandal", "Sneaker", "Ankle boot"}, "bags": {"Bag"}}
    for group, members in enumerate(groups.values()):
        assert {names[c] for c in range(10) if GROUP_OF_CLASS[c] == group} == members


@pytest.fixture(scope="module")
def full_root(tmp_path_factory):
    """A root with published-size files whose images spell their index."""
    root = tmp_path_factory.mktemp("fashion")
    _write(root / "fashion-mnist", Files.SIZES, compress=False)
    return root


def test_splits_are_disjoint_seeded_and_carry_matching_targets(full_root):
    bench = benchmark("fashion-mnist", {"val_size": 1000})
    splits = bench.splits(full_root, seed=3, limit=500)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (500, 1000, 10_000)
    train, val = _index_of(splits.train.inputs), _index_of(splits.val.inputs)
    assert not set(train.tolist()) & set(val.tolist())
    for data, index in ((splits.train, train), (splits.val, val)):
        assert torch.equal(data.targets["label"], index % 10)
        assert torch.equal(data.targets["group"], torch.tensor(GROUP_OF_CLASS)[index % 10])
        assert data.inputs.shape[1:] == (1, 28, 28) and data.inputs.dtype == torch.float32
    again = bench.splits(full_root, seed=3, limit=500)
    other = bench.splits(full_root, seed=4, limit=500)
    assert torch.equal(again.train.inputs, splits.train.inputs)
    assert not torch.equal(other.train.inputs, splits.train.inputs)
    assert torch.equal(other.test.inputs, splits.test.inputs)
    assert torch.equal(_index_of(splits.test.inputs), torch.arange(10_000))


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="val_size"):
        FashionMNIST(val_size=0)
    with pytest.raises(ValueError, match="limit"):
        FashionMNIST().splits("unused", 0, limit=0)
    with pytest.raises(ValueError, match="at least one head"):
        FashionMNIST().model({})


def test_model_gives_one_output_per_head():
    out = FashionMNIST().model({"label": 10, "group": 4, "noise": 10})(torch.zeros(3, 1, 28, 28))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"label": (3, 10), "group": (3, 4), "noise": (3, 10)}


@pytest.mark.skipif(not DEBIAN_FOLDER.is_dir(), reason="the Debian package dataset-fashion-mnist is not installed "
                    "(apt-get install dataset-fashion-mnist, or bash scripts/setup.sh)")
def test_the_published_files(tmp_path):
    splits = FashionMNIST().splits(tmp_path, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (50_000, 10_000, 10_000)
    for data in (splits.train, splits.test):
        counts = torch.bincount(data.targets["label"], minlength=10)
        assert counts.min() > 0.08 * len(data) and counts.max() < 0.12 * len(data)
        assert float(data.inputs.min()) >= 0.0 and float(data.inputs.max()) == 1.0
    assert torch.bincount(splits.test.targets["group"]).tolist() == [4000, 2000, 3000, 1000]
