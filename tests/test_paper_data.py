"""The paper-scale data sets, read from miniature copies written in their published layouts:
NYUv2 (MTAN's .npy files), CityScapes (the official release folders and the prepared
arrays), CIFAR-100 (the python pickles); the augmentation maths; the benchmarks' splits
and loaders."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dynamtl.benchmarks.cifar100 import MEAN, STD, SUPERCLASSES, CIFAR100MultiDomain, random_crop_flip
from dynamtl.benchmarks.cityscapes import CityScapes
from dynamtl.benchmarks.nyuv2 import NYUv2
from dynamtl.data.cifar100 import CIFAR100
from dynamtl.data.cityscapes import CityScapesDataset, prepare_cityscapes
from dynamtl.data.dense_transforms import DenseAugmentation, nearest_indices, noise_map
from dynamtl.data.nyuv2 import NYUv2Dataset
from tests.paper_layouts import (
    DISPARITY_PNG,
    GREEN,
    PART_CLASSES,
    PART_UIDS,
    RED,
    TRAIN_IDS,
    H,
    W,
    pixels,
    write_cifar100,
    write_cityscapes_release,
    write_nyuv2,
)

# --------------------------------------------------------------------------- NYUv2


def test_nyuv2_reads_the_mtan_layout_and_its_conventions(tmp_path):
    written = write_nyuv2(tmp_path, "train", 3)
    data = NYUv2Dataset(tmp_path, "train", indices=[2, 0])
    assert len(data) == 2
    image, targets = data[0]
    assert image.dtype == torch.float32 and image.shape == (3, H, W)
    assert torch.allclose(image, torch.from_numpy(written["image"][2]).permute(2, 0, 1).float())
    assert set(targets) == {"seg", "depth", "normal"}
    seg = targets["seg"]
    assert seg.dtype == torch.int64 and seg.shape == (H, W)
    assert seg[0, 0] == -1  # 255 is read as unlabelled
    expected = torch.from_numpy(written["label"][2]).long()
    assert torch.equal(seg[1:], expected[1:]) and bool((seg == -1).any())
    assert targets["depth"].shape == (1, H, W)
    assert torch.equal(targets["depth"][0], torch.from_numpy(written["depth"][2][..., 0]))
    assert targets["normal"].shape == (3, H, W)
    assert torch.allclose(targets["normal"][:, 10, 20], torch.from_numpy(written["normal"][2][10, 20]).float())
    with pytest.raises(IndexError, match=r"0\.\.2"):
        NYUv2Dataset(tmp_path, "train", indices=[3])


def test_nyuv2_errors_name_the_file_the_layout_and_the_source(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nyuv2/val/image is missing.*MTAN"):
        NYUv2Dataset(tmp_path, "val")
    write_nyuv2(tmp_path, "train", 2)
    (tmp_path / "nyuv2/train/depth/1.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"depth/1\.npy is missing.*\{train,val\}/\{image,label,depth,normal\}"):
        NYUv2Dataset(tmp_path, "train")
    np.save(tmp_path / "nyuv2/train/depth/1.npy", np.zeros((H, W), np.float32))  # no channel axis
    data = NYUv2Dataset(tmp_path, "train")
    with pytest.raises(ValueError, match=r"depth/1\.npy holds float32 \[288, 384\].*\[288, 384, 1\]"):
        data[1]
    np.save(tmp_path / "nyuv2/train/label/0.npy", np.full((H, W), 13.0))
    with pytest.raises(ValueError, match=r"label/0\.npy holds values other than the classes 0..12"):
        data[0]
    (tmp_path / "nyuv2/train/image/0.npy").write_bytes(b"not an array")
    with pytest.raises(ValueError, match=r"image/0\.npy is not a readable \.npy file"):
        data[0]


# --------------------------------------------------------------------------- augmentation


def _coded(height: int, width: int) -> torch.Tensor:
    """A label map whose value tells the source pixel: row * width + column."""
    return torch.arange(height)[:, None] * width + torch.arange(width)[None, :]


def test_scale_crop_resamples_nearest_divides_depth_and_resizes_the_image_bilinearly():
    code = _coded(H, W)
    depth = (code.float() + 1.0)[None]
    image = torch.rand(3, H, W, generator=torch.Generator().manual_seed(0))
    augment = DenseAugmentation({"seg": "plain", "depth": "depth"}, scales=(1.5,), flip=0.0)
    out_image, out = augment(image, {"seg": code, "depth": depth}, generator=torch.Generator().manual_seed(1))
    top, left = divmod(int(out["seg"][0, 0]), W)
    assert 0 <= top <= H - 192 and 0 <= left <= W - 256  # window 288/1.5 x 384/1.5
    rows = torch.tensor([top + (2 * i + 1) * 192 // (2 * H) for i in range(H)])
    cols = torch.tensor([left + (2 * j + 1) * 256 // (2 * W) for j in range(W)])
    assert out["seg"].dtype == torch.int64 and torch.equal(out["seg"], code[rows][:, cols])
    assert torch.allclose(out["depth"], depth[:, rows][:, :, cols] / 1.5)
    window = image[None, :, top : top + 192, left : left + 256]
    assert torch.allclose(out_image, F.interpolate(window, size=(H, W), mode="bilinear", align_corners=False)[0])


def test_flip_mirrors_everything_and_negates_the_normal_x_component_disparity_scales_up():
    code = _coded(H, W)
    normal = torch.stack([code.float(), 2 * code.float(), 3 * code.float()])
    image = torch.rand(3, H, W)
    flip = DenseAugmentation({"seg": "plain", "normal": "normal"}, flip=1.0)
    out_image, out = flip(image, {"seg": code, "normal": normal})
    assert torch.equal(out_image, image.flip(-1)) and torch.equal(out["seg"], code.flip(-1))
    assert torch.equal(out["normal"], torch.stack([-normal[0].flip(-1), normal[1].flip(-1), normal[2].flip(-1)]))
    zoom = DenseAugmentation({"disparity": "disparity", "seg": "plain"}, scales=(1.2,), flip=0.0)
    _, out = zoom(image, {"disparity": (code.float() + 1)[None], "seg": code})
    top, left = divmod(int(out["seg"][0, 0]), W)
    assert out["disparity"][0, 0, 0] == pytest.approx((top * W + left + 1) * 1.2)


def test_random_scales_windows_and_flips_are_all_drawn():
    code = _coded(H, W)
    augment = DenseAugmentation({"seg": "plain"}, scales=(1.0, 1.2, 1.5))
    generator = torch.Generator().manual_seed(0)
    windows, flips = set(), set()
    for _ in range(60):
        _, out = augment(torch.zeros(3, H, W), {"seg": code}, generator=generator)
        first, last = int(out["seg"][0, 0]) // W, int(out["seg"][-1, 0]) // W
        windows.add(last - first + 1)
        flips.add(bool(out["seg"][0, 0] > out["seg"][0, -1]))
    assert windows == {288, 240, 192} and flips == {True, False}


def test_plain_random_crop_of_cityscapes_takes_an_exact_window():
    code = _coded(256, 512)
    crop = DenseAugmentation({"seg": "plain"}, crop=(256, 256), flip=0.0)
    image = torch.rand(3, 256, 512)
    out_image, out = crop(image, {"seg": code}, generator=torch.Generator().manual_seed(3))
    left = int(out["seg"][0, 0])
    assert torch.equal(out["seg"], code[:, left : left + 256])
    assert torch.equal(out_image, image[:, :, left : left + 256])


def test_augmentation_rejects_what_it_cannot_do():
    with pytest.raises(ValueError, match="unknown target kinds"):
        DenseAugmentation({"seg": "label"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="larger than the 256x512 input"):
        DenseAugmentation({}, crop=(300, 300))(torch.zeros(3, 256, 512), {})
    with pytest.raises(KeyError, match="no target kind for task"):
        DenseAugmentation({})(torch.zeros(3, 4, 4), {"depth": torch.zeros(1, 4, 4)})
    assert nearest_indices(8, 4).tolist() == [1, 3, 5, 7]  # centres of pairs, as Pillow's NEAREST


def test_noise_maps_are_fixed_per_sample_and_seed_and_lie_in_0_1():
    a = noise_map(0, 0, 5, 16, 24)
    assert a.shape == (1, 16, 24) and torch.equal(a, noise_map(0, 0, 5, 16, 24))
    assert bool((a > 0).all() and (a <= 1).all())
    assert not torch.equal(a, noise_map(0, 0, 6, 16, 24)) and not torch.equal(a, noise_map(1, 0, 5, 16, 24))
    assert not torch.equal(a, noise_map(0, 1, 5, 16, 24))


def test_nyuv2_benchmark_splits_augment_add_noise_and_hold_out(tmp_path):
    write_nyuv2(tmp_path, "train", 3)
    write_nyuv2(tmp_path, "val", 2, seed=1)
    bench = NYUv2(width=8, noise=True, val_size=1)
    assert set(bench.specs) == {"seg", "depth", "normal", "noise"}
    assert set(NYUv2().specs) == {"seg", "depth", "normal"}
    splits = bench.splits(tmp_path, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (2, 1, 2)
    assert not set(splits.train.indices) & set(splits.val.indices)
    image, targets = splits.val[0]
    assert torch.equal(targets["noise"], splits.val[0][1]["noise"])  # fixed per image
    assert image.shape == (3, H, W) and targets["noise"].shape == (1, H, W)
    loader = bench.loader(splits.train, 2, True, torch.Generator().manual_seed(0))
    images, batch = next(iter(loader))
    assert images.shape == (2, 3, H, W) and batch["seg"].shape == (2, H, W) and batch["noise"].shape == (2, 1, H, W)
    assert len(NYUv2().splits(tmp_path, seed=0, limit=2).val) == 2  # without val_size: the training images
    with pytest.raises(ValueError, match="network must be one of"):
        NYUv2("segnet")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- CityScapes

@pytest.fixture(scope="module")
def cityscapes_release(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cityscapes_release")
    write_cityscapes_release(
        root, {"train": ["bochum_000000_000313", "aachen_000001_000019"], "val": ["frankfurt_000000_000294"]}
    )
    return root


def _stored_block(array: np.ndarray, row: int, col: int) -> np.ndarray:
    """Block (row, col) of a 256x512 prepared plane (64x64 pixels per block)."""
    return array[..., row * 64 : (row + 1) * 64, col * 64 : (col + 1) * 64]


def test_prepare_cityscapes_maps_labels_parts_and_disparity(cityscapes_release, tmp_path):
    root = tmp_path
    shutil.copytree(cityscapes_release / "cityscapes", root / "cityscapes")
    out = prepare_cityscapes(root)
    frames = (out / "train" / "frames.txt").read_text().split()
    assert frames == ["aachen/aachen_000001_000019", "bochum/bochum_000000_000313"]
    seg, part, disparity = (np.load(out / "train" / f"{n}.npy") for n in ("seg", "part_seg", "disparity"))
    image = np.load(out / "train" / "image.npy")
    assert image.shape == (2, 256, 512, 3) and image.dtype == np.uint8 and seg.shape == (2, 256, 512)
    for r in range(4):
        for c in range(8):
            assert (_stored_block(seg[1], r, c) == TRAIN_IDS[c]).all()
            assert (_stored_block(part[1], r, c) == PART_CLASSES[(r * 8 + c) % len(PART_UIDS)]).all()
            expected = 0.0 if DISPARITY_PNG[r] == 0 else (DISPARITY_PNG[r] - 1) / 256 / 4
            assert np.allclose(_stored_block(disparity[0], r, c), expected)
    for r, c in ((0, 0), (1, 3), (3, 7)):  # block centres keep their colour through the antialiased downsampling
        k = r * 8 + c
        assert tuple(image[0, r * 64 + 32, c * 64 + 32]) == (RED[k % 3], GREEN[k % 2], 250)
    data = CityScapesDataset(root, "val")
    x, targets = data[0]
    assert x.shape == (3, 256, 512) and x.dtype == torch.float32 and float(x.max()) <= 1.0
    assert targets["seg"].dtype == torch.int64 and int(targets["seg"][0, 64 * 3]) == -1  # void block
    assert int(targets["part_seg"][0, 64]) == -1 and int(targets["part_seg"][0, 64 * 4]) == 1
    assert targets["disparity"].shape == (1, 256, 512) and float(targets["disparity"][0, 100, 0]) == pytest.approx(0.25)


def test_cityscapes_errors_name_the_missing_file_and_the_preparation(cityscapes_release, tmp_path):
    missing = r"prepared/train/image\.npy is missing.*prepare_cityscapes.*gtFinePanopticParts"
    with pytest.raises(FileNotFoundError, match=missing):
        CityScapesDataset(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match=r"cityscapes/leftImg8bit/train is missing.*Cityscapes"):
        prepare_cityscapes(tmp_path)
    shutil.copytree(cityscapes_release / "cityscapes", tmp_path / "cityscapes")
    (tmp_path / "cityscapes/disparity/val/frankfurt/frankfurt_000000_000294_disparity.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"frankfurt_000000_000294_disparity\.png is missing"):
        prepare_cityscapes(tmp_path, ["val"])
    assert not CityScapesDataset.is_prepared(tmp_path, "val")  # nothing half-written is taken for data
    label = tmp_path / "cityscapes/gtFine/train/aachen/aachen_000001_000019_gtFine_labelIds.png"
    Image.fromarray(np.full((1024, 2048), 40, np.uint8)).save(label)
    with pytest.raises(ValueError, match=r"aachen_000001_000019_gtFine_labelIds\.png holds label ids outside 0..33"):
        prepare_cityscapes(tmp_path, ["train"])
    folder = tmp_path / "cityscapes/prepared/val"
    folder.mkdir(parents=True)
    for name in ("image", "seg", "part_seg"):
        np.save(folder / f"{name}.npy", np.zeros((1, 256, 512, 3) if name == "image" else (1, 256, 512), np.uint8))
    np.save(folder / "disparity.npy", np.zeros((1, 256, 512), np.float64))
    with pytest.raises(ValueError, match=r"disparity\.npy holds float64 \[1, 256, 512\], expected float32"):
        CityScapesDataset(tmp_path, "val")


def test_cityscapes_benchmark_prepares_once_and_crops_training_images(cityscapes_release, tmp_path):
    shutil.copytree(cityscapes_release / "cityscapes", tmp_path / "cityscapes")
    bench = CityScapes(width=8)
    assert set(bench.specs) == {"seg", "part_seg", "disparity"}
    assert bench.specs["part_seg"].out_features == 10 and bench.specs["seg"].out_features == 19
    splits = bench.splits(tmp_path, seed=0)
    assert CityScapesDataset.is_prepared(tmp_path, "train") and CityScapesDataset.is_prepared(tmp_path, "val")
    image, targets = splits.train[0]
    assert image.shape == (3, 256, 256) and targets["disparity"].shape == (1, 256, 256)
    image, targets = splits.test[0]
    assert image.shape == (3, 256, 512) and targets["part_seg"].shape == (256, 512)
    assert pickle.loads(pickle.dumps(splits.test)).__dict__.get("_arrays") is None  # reopened in a worker


# --------------------------------------------------------------------------- CIFAR-100


def test_cifar100_reads_the_python_pickles(tmp_path):
    write_cifar100(tmp_path)
    data = CIFAR100(tmp_path)
    images, fine, coarse = data.load("train")
    assert images.shape == (200, 3, 32, 32) and images.dtype == torch.uint8
    assert int(images[7, 2, 5, 9]) == (7 + 6 + 5 + 18) % 256  # 1024 red, then green, then blue, row-major
    assert fine.tolist()[:4] == [0, 0, 1, 1] and coarse.tolist()[:4] == [0, 0, 1, 1]
    fine_names, coarse_names = data.names()
    assert fine_names[3] == "fine_3" and tuple(coarse_names) == SUPERCLASSES
    assert data.superclasses(fine, coarse)[4] == [4, 24, 44, 64, 84]


def test_cifar100_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python/train is missing.*cifar-100-python\.tar\.gz"):
        CIFAR100(tmp_path).load("train")
    folder = write_cifar100(tmp_path)
    (folder / "test").write_bytes(pickle.dumps({b"data": shutil.rmtree}, protocol=2))
    with pytest.raises(ValueError, match=r"test is not a CIFAR-100 python pickle.*shutil\.rmtree"):
        CIFAR100(tmp_path).load("test")
    (folder / "test").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8)}, protocol=2))
    with pytest.raises(ValueError, match=r"'data' must be a uint8 array \[N, 3072\], found uint8 \[2, 100\]"):
        CIFAR100(tmp_path).load("test")
    write_cifar100(tmp_path, coarse_of=lambda f: 1 if f == 0 else f % 20)
    with pytest.raises(ValueError, match=r"superclasses hold 5 fine classes each.*0: \[20, 40, 60, 80\]"):
        CIFAR100MultiDomain().splits(tmp_path, seed=0)


def test_cifar100_domains_loader_yields_one_normalised_batch_per_domain(tmp_path):
    write_cifar100(tmp_path)
    bench = CIFAR100MultiDomain(val_size=2)
    splits = bench.splits(tmp_path, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 2, 5)
    assert bench.tasks().multi_input and bench.tasks().names == SUPERCLASSES
    loader = bench.loader(splits.test, 2, False, torch.Generator())
    assert len(loader) == 3
    batches = list(loader)
    assert [len(b["people"][1]) for b in batches] == [2, 2, 1]
    x, y = batches[0]["people"]  # superclass 14: fine classes 14, 34, 54, 74, 94 -> labels 0..4
    assert x.shape == (2, 3, 32, 32) and y.tolist() == [0, 1]
    raw = torch.from_numpy(pixels(14).reshape(3, 32, 32)).float() / 255  # test image k has fine class k
    assert torch.allclose(x[0], (raw - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None], atol=1e-6)
    seen = torch.cat([b["fish"][1] for b in bench.loader(splits.test, 2, True, torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == [0, 1, 2, 3, 4]  # every image of the domain once per epoch
    train_x, _ = next(iter(bench.loader(splits.train, 4, True, torch.Generator().manual_seed(0))))["trees"]
    assert train_x.shape == (4, 3, 32, 32)
    assert len(CIFAR100MultiDomain().splits(tmp_path, seed=0, limit=40).train) == 2  # 40 // 20 per domain


def test_random_crop_flip_takes_a_window_of_the_zero_padded_image():
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32) + 1
    padded = F.pad(images, (4, 4, 4, 4))
    generator = torch.Generator().manual_seed(0)
    offsets, flips = set(), set()
    for _ in range(100):
        out = random_crop_flip(images, 4, generator)
        for k in range(2):
            windows = {(dy, dx): padded[k, :, dy : dy + 32, dx : dx + 32] for dy in range(9) for dx in range(9)}
            matches = [
                (dy, dx, flip)
                for (dy, dx), window in windows.items()
                for flip in (False, True)
                if torch.equal(out[k], window.flip(-1) if flip else window)
            ]
            assert len(matches) == 1
            offsets.add(matches[0][:2])
            flips.add(matches[0][2])
    assert len(offsets) > 60 and flips == {False, True}
