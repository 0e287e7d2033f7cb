"""``dynamtl train`` and ``dynamtl resume`` under ``torchrun --nproc_per_node=2`` (gloo, CPU)
reproduce the single-process run of the same seed: each process takes its half of every
global batch and meta batch, and rank 0 alone writes the run folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from click.testing import CliRunner

from dynamtl.cli import main
from dynamtl.train.config import ConfigError, RunConfig, plan
from dynamtl.train.folder import RunFolder
from dynamtl.train.processes import Processes
from dynamtl.train.session import Display, run_session

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo"
)

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
RUN = ["--benchmark", "drift", "--limit", "256", "--epochs", "2", "--batch-size", "32", "--method", "auto-lambda",
       "--quiet"]  # fmt: skip
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--rdzv-backend=c10d",
            "--rdzv-endpoint=localhost:0"]  # fmt: skip
TOLERANCE = 1e-5  # float32 sums over 32 rows against two sums over 16


def launch(*command: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(list(command), check=False, env=ENV, capture_output=True, text=True, timeout=300)
    if check and done.returncode != 0:
        pytest.fail(f"{command} exited with {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
    return done


def assert_same_run(expected: Path, actual: Path) -> None:
    one: dict[str, Any] = json.loads((expected / "results.json").read_text())
    two: dict[str, Any] = json.loads((actual / "results.json").read_text())
    assert one["best_epoch"] == two["best_epoch"] and one["steps"] == two["steps"]
    for split in ("val", "test"):
        for task, metrics in one[split].items():
            for name, value in metrics.items():
                assert two[split][task][name] == pytest.approx(value, abs=TOLERANCE), (split, task, name)
    for task, weight in one["final_weights"].items():
        assert two["final_weights"][task] == pytest.approx(weight, abs=TOLERANCE), task
    model_one, model_two = torch.load(expected / "model.pt"), torch.load(actual / "model.pt")
    assert model_one.keys() == model_two.keys()  # no "module." prefix: one process can load it
    for key, tensor in model_one.items():
        torch.testing.assert_close(model_two[key], tensor, atol=TOLERANCE, rtol=0)


def test_two_processes_train_and_resume_as_one(tmp_path: Path) -> None:
    single, double = tmp_path / "single", tmp_path / "double"
    launch(sys.executable, "-m", "dynamtl.cli", "train", *RUN, "--out", str(single))
    done = launch(*TORCHRUN, "-m", "dynamtl.cli", "train", *RUN, "--out", str(double))
    assert done.stdout.count("test metrics:") == 1  # told by rank 0 only
    assert sorted(p.name for p in tmp_path.iterdir()) == ["double", "single"]
    assert len((double / "steps.jsonl").read_text().splitlines()) == 16  # 2 epochs of 8 global batches, once
    assert_same_run(single, double)

    # An interrupted run (as if stopped after epoch 1) resumes with 2 processes, and only with 2.
    resumed = tmp_path / "resumed"
    shutil.copytree(double, resumed, ignore=shutil.ignore_patterns("results.json", "model.pt"))
    refused = CliRunner().invoke(main, ["resume", str(resumed), "--checkpoint", "previous", "--quiet"])
    assert refused.exit_code == 1 and "made by 2 process(es), this run has 1" in refused.output
    launch(*TORCHRUN, "-m", "dynamtl.cli", "resume", str(resumed), "--checkpoint", "previous", "--quiet")
    assert_same_run(single, resumed)
    assert len((resumed / "steps.jsonl").read_text().splitlines()) == 16


def test_a_global_batch_that_does_not_divide_is_refused(tmp_path: Path) -> None:
    checked = plan(RunConfig(benchmark="drift", limit=64, epochs=1, batch_size=33))
    with pytest.raises(ConfigError, match="--batch-size 33 is the global batch, shared by 2 processes"):
        run_session(checked, RunFolder(tmp_path / "run"), Processes(torch.device("cpu"), 0, 2),
                    display=Display(progress=False), resume_from=None)  # fmt: skip
    assert not (tmp_path / "run").exists()


def test_each_process_takes_its_contiguous_rows() -> None:
    batch = (torch.arange(8), {"main": torch.arange(8) * 10})
    inputs, targets = Processes(torch.device("cpu"), 1, 2).shard(batch)
    assert inputs.tolist() == [4, 5, 6, 7] and targets["main"].tolist() == [40, 50, 60, 70]
    with pytest.raises(ConfigError, match="a batch of 7 samples cannot be shared equally by 2 processes"):
        Processes(torch.device("cpu"), 0, 2).shard(torch.arange(7))


def test_a_stopped_torchrun_run_says_once_how_to_continue_and_that_command_works(tmp_path: Path) -> None:
    """SIGINT to torchrun (Ctrl-C): the stop message comes once, from rank 0, and suggests
    the torchrun form of resume (a run resumes with its process count), which works."""
    import signal
    import time

    run = tmp_path / "run"
    args = ["--benchmark", "drift", "--limit", "2048", "--epochs", "2", "--batch-size", "32", "--method",
            "auto-lambda", "--quiet", "--out", str(run)]
    process = subprocess.Popen([*TORCHRUN, "-m", "dynamtl.cli", "train", *args], env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        steps = run / "steps.jsonl"
        while not (steps.is_file() and len(steps.read_text().splitlines()) >= 10):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    told = [line for line in stderr.splitlines() if "Continue with:" in line]
    assert len(told) == 1, stderr
    assert told[0].endswith(f"Continue with: torchrun --nproc_per_node=2 -m dynamtl.cli resume {run}"), told
    words = told[0].split("Continue with: torchrun ")[1].split()
    assert words[:2] == ["--nproc_per_node=2", "-m"]
    launch(*TORCHRUN, *words[1:])  # the suggested command (torchrun as this interpreter's module)
    assert json.loads((run / "results.json").read_text())["steps"] == 128
