"""The paper-scale suites end to end through the command line, on CPU: one epoch of NYUv2
and CityScapes with the Split and the MTAN network and of multi-domain CIFAR-100 with the
VGG, each read from a miniature copy in its published layout (:mod:`tests.paper_layouts`)
and shrunk by the benchmarks' ``width`` option; the saved model and the metrics of
``results.json`` are checked, and a run resumed from its previous checkpoint ends as the
uninterrupted one."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dynamtl.benchmarks.base import Benchmark
from dynamtl.benchmarks.cifar100 import SUPERCLASSES, CIFAR100MultiDomain
from dynamtl.benchmarks.cityscapes import CityScapes
from dynamtl.benchmarks.nyuv2 import NYUv2
from tests.paper_layouts import write_cifar100, write_cityscapes_release, write_nyuv2

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
WIDTH = 4
RANGES = {  # metric -> (lowest, highest) possible value
    "miou": (0.0, 1.0),
    "pixel_accuracy": (0.0, 1.0),
    "accuracy": (0.0, 1.0),
    "abs_error": (0.0, math.inf),
    "rel_error": (0.0, math.inf),
    "mean_angle": (0.0, 180.0),
    "median_angle": (0.0, 180.0),
    "within_11.25": (0.0, 1.0),
    "within_22.5": (0.0, 1.0),
    "within_30": (0.0, 1.0),
}
SEGMENTATION, ERRORS = ["miou", "pixel_accuracy"], ["abs_error", "rel_error"]
ANGLES = ["mean_angle", "median_angle", "within_11.25", "within_22.5", "within_30"]


def cli(*args: str) -> None:
    """Run ``dynamtl ARGS`` in a fresh interpreter; fail with its error output."""
    done = subprocess.run(
        [sys.executable, "-m", "dynamtl.cli", *args], env=ENV, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr


def train(root: Path, out: Path, benchmark: str, *options: str, epochs: int = 1) -> dict:
    """Train ``benchmark`` on ``root`` into ``out`` with batches of 2; its ``results.json``."""
    flags = [arg for option in options for arg in ("--benchmark-option", option)]
    cli(
        "train", "--benchmark", benchmark, "--root", str(root), "--out", str(out), "--epochs", str(epochs),
        "--batch-size", "2", "--seed", "0", "--quiet", *flags,
    )  # fmt: skip
    return json.loads((out / "results.json").read_text())


def check_results(results: dict, metrics: dict[str, list[str]], steps: int) -> None:
    """``results`` name every task's metrics in order and hold values within their ranges."""
    assert results["tasks"] == list(metrics) and results["steps"] == steps and results["best_epoch"] >= 1
    assert {task: [m["name"] for m in listed] for task, listed in results["metrics"].items()} == metrics
    for split in ("val", "test"):
        for task, names in metrics.items():
            for name in names:
                low, high = RANGES[name]
                assert low <= results[split][task][name] <= high, (split, task, name, results[split][task][name])


def saved_model(bench: Benchmark, run: Path) -> torch.nn.Module:
    """The benchmark's network with the run's ``model.pt`` loaded into it (strictly), for evaluation."""
    model = bench.model({task: spec.out_features for task, spec in bench.specs.items()})
    model.load_state_dict(torch.load(run / "model.pt", weights_only=True))
    return model.eval()


@pytest.fixture(scope="module")
def nyuv2_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nyuv2")
    write_nyuv2(root, "train", 2)
    write_nyuv2(root, "val", 1, seed=1)
    return root


@pytest.fixture(scope="module")
def cityscapes_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cityscapes")
    write_cityscapes_release(
        root, {"train": ["bochum_000000_000313", "aachen_000001_000019"], "val": ["frankfurt_000000_000294"]}
    )
    return root


@pytest.mark.parametrize("network", ["split", "mtan"])
def test_one_epoch_of_nyuv2(nyuv2_root, tmp_path, network):
    results = train(nyuv2_root, tmp_path / "run", "nyuv2", f"network={network}", f"width={WIDTH}")
    check_results(results, {"seg": SEGMENTATION, "depth": ERRORS, "normal": ANGLES}, steps=1)
    model = saved_model(NYUv2(network, width=WIDTH), tmp_path / "run")
    with torch.no_grad():
        out = model(torch.rand(1, 3, 288, 384))
    assert {task: tuple(y.shape) for task, y in out.items()} == {
        "seg": (1, 13, 288, 384),
        "depth": (1, 1, 288, 384),
        "normal": (1, 3, 288, 384),
    }
    assert torch.allclose(out["normal"].norm(dim=1), torch.ones(1, 288, 384), atol=1e-4)  # unit normals


@pytest.mark.parametrize("network", ["split", "mtan"])
def test_one_epoch_of_cityscapes(cityscapes_root, tmp_path, network):
    results = train(cityscapes_root, tmp_path / "run", "cityscapes", f"network={network}", f"width={WIDTH}")
    check_results(results, {"seg": SEGMENTATION, "part_seg": SEGMENTATION, "disparity": ERRORS}, steps=1)
    model = saved_model(CityScapes(network, width=WIDTH), tmp_path / "run")
    with torch.no_grad():
        out = model(torch.rand(1, 3, 256, 512))
    assert {task: tuple(y.shape) for task, y in out.items()} == {
        "seg": (1, 19, 256, 512),
        "part_seg": (1, 10, 256, 512),
        "disparity": (1, 1, 256, 512),
    }


def test_cifar100_vgg_trains_and_resumes_from_its_previous_checkpoint_like_an_uninterrupted_run(tmp_path):
    write_cifar100(tmp_path)  # 10 training and 5 test images per domain
    run = tmp_path / "run"
    results = train(tmp_path, run, "cifar100", f"width={WIDTH}", epochs=2)
    check_results(results, {domain: ["accuracy"] for domain in SUPERCLASSES}, steps=10)  # 5 steps per epoch
    model = saved_model(CIFAR100MultiDomain(width=WIDTH), run)
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32), "people").shape == (2, 5)
    (run / "results.json").unlink()
    cli("resume", str(run), "--checkpoint", "previous", "--quiet")  # from the end of epoch 1
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert [(e["checkpoint"], e["step"]) for e in events if e["event"] == "resume"] == [("previous", 5)]
    resumed = json.loads((run / "results.json").read_text())
    assert {**resumed, "seconds": None} == {**results, "seconds": None}
