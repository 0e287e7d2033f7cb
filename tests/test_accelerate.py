"""MultiTask with a model, optimizer and data loader from ``accelerate``'s
``Accelerator.prepare``: ``accelerate launch --num_processes 2`` (CPU, gloo) against one
process, in float32, bfloat16 mixed precision and with gradient accumulation."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

pytest.importorskip("accelerate", reason="the accelerate integration needs pip install 'dynamtl[accelerate]'")
from tests import accelerate_worker as worker

WORKER_PATH = Path(__file__).with_name("accelerate_worker.py")


def launch(processes: int, out: Path) -> dict:
    """``accelerate launch`` of the worker on ``processes`` CPU processes (torchrun under
    accelerate's multi-process launcher; the worker's Accelerator runs on the CPU)."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    mode = ["--multi_gpu"] if processes > 1 else ["--cpu"]
    command = [accelerate, "launch", *mode, "--num_processes", str(processes), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
               str(WORKER_PATH), str(out)]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.fail(f"accelerate launch exited with {done.returncode}:\n{done.stderr[-6000:]}")
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[dict, dict]:
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("needs torch.distributed with gloo")
    folder = tmp_path_factory.mktemp("accelerate")
    return launch(1, folder / "one.json"), launch(2, folder / "two.json")


def flat(params: list) -> list[float]:
    return [x for p in params for x in (p if isinstance(p[0], float) else itertools.chain(*p))]


@pytest.mark.parametrize("case", list(worker.CASES))
def test_two_processes_equal_one_process_on_the_global_batch(runs, case: str) -> None:
    one, two = runs[0][case], runs[1][case]
    assert "error" not in one and "error" not in two, one.get("error", "") + two.get("error", "")
    assert one["processes"] == 1 and two["processes"] == 2 and two["ranks_equal"]
    # float32: rounding of the all-reduce; bfloat16: 16-bit products of different shard sizes
    tolerance = 2e-2 if "bf16" in case else 1e-5
    assert max(abs(a - b) for a, b in zip(flat(one["params"]), flat(two["params"]))) < tolerance
    assert max(abs(a - b) for a, b in zip(one["weights"], two["weights"])) < tolerance


def test_mixed_precision_and_accumulation_change_the_training(runs) -> None:
    """The bf16 and accumulation cases really ran differently from float32 (the settings
    reached the Accelerator): accumulation of 2 halves the steps, bf16 rounds."""
    one = runs[0]
    assert flat(one["equal"]["params"]) != flat(one["equal-accumulate"]["params"])
    assert flat(one["uncertainty-bf16"]["params"]) != pytest.approx(flat(one["equal"]["params"]), abs=1e-6)
