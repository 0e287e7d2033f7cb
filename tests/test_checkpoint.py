"""Checkpoints and resume: a run killed with SIGKILL mid-epoch and resumed ends bit for bit
like one never interrupted; damaged and foreign checkpoints are refused, named, and left
as they are."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dynamtl.train import CheckpointError, RunConfig, TrainingStopped, resume, train
from dynamtl.train.checkpoint import load

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models: one thread is fastest on a busy machine
PER_EPOCH = 63  # 1000 samples in batches of 16
RUN = [
    "--benchmark", "drift", "--method", "auto-lambda", "--mode", "auxiliary", "--noise-task", "--limit", "1000",
    "--batch-size", "16", "--epochs", "2", "--option", "lr=1e-2", "--quiet",
]  # fmt: skip


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dynamtl.cli", *args], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(process: subprocess.Popen) -> None:
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr


def lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def records(path: Path) -> list[dict]:
    """The complete lines of a JSON-lines log (a live run may be writing the last one)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")] if path.exists() else []


def wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the run ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


def without_seconds(results: dict) -> dict:
    return {key: value for key, value in results.items() if key != "seconds"}


def test_a_run_killed_mid_epoch_and_resumed_ends_bit_for_bit_like_an_uninterrupted_one(tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    uninterrupted = start("train", *RUN, "--out", str(reference))
    process = start("train", *RUN, "--out", str(killed))
    try:
        wait_for(lambda: lines(killed / "steps.jsonl") >= PER_EPOCH + 10, process, "a step in epoch 2")
        process.send_signal(signal.SIGUSR1)  # a checkpoint on demand
        events = killed / "events.jsonl"
        wait_for(lambda: any(e.get("reason") == "signal" for e in records(events)), process, "the checkpoint")
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.communicate()
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "results.json").exists()
    saved = load(killed / "checkpoints" / "last.pt")["position"]
    assert saved["epoch"] == 1 and 0 < saved["batch"] < PER_EPOCH  # in the middle of the second epoch

    finish(start("resume", str(killed), "--quiet"))
    resume_event = next(e for e in records(killed / "events.jsonl") if e["event"] == "resume")
    assert resume_event["step"] == saved["step"] and resume_event["epoch"] == 2
    finish(uninterrupted)
    ours, theirs = (json.loads((run / "results.json").read_text()) for run in (killed, reference))
    assert without_seconds(ours) == without_seconds(theirs)
    ours_steps, theirs_steps = (records(run / "steps.jsonl") for run in (killed, reference))
    assert len(ours_steps) == 2 * PER_EPOCH  # each step once: the log was cut back to the checkpoint
    assert [without_seconds(s) for s in ours_steps] == [without_seconds(s) for s in theirs_steps]
    ours_state, theirs_state = (load(run / "checkpoints" / "last.pt") for run in (killed, reference))
    lambdas = ours_state["multitask"]["weighting"]["lambdas"]
    assert torch.equal(lambdas, theirs_state["multitask"]["weighting"]["lambdas"])
    assert not torch.equal(lambdas, torch.full_like(lambdas, 0.1))  # λ did move
    for name, value in ours_state["model"].items():
        assert torch.equal(value, theirs_state["model"][name]), name


def stopped_run(out: Path, **changes) -> Path:
    """An unfinished run: SGD at an absurd learning rate stops it at its third step, with
    checkpoints after steps 1 (previous.pt) and 2 (last.pt)."""
    config = RunConfig(benchmark="drift", limit=256, batch_size=64, epochs=1, optimizer="sgd", lr=1e12,
                       checkpoint_every=1, **changes)
    with pytest.raises(TrainingStopped):
        train(config, out, progress=False)
    return out


def test_a_damaged_checkpoint_is_named_left_as_it_is_and_the_previous_one_still_resumes(tmp_path):
    run = stopped_run(tmp_path / "run")
    last = run / "checkpoints" / "last.pt"
    damaged = last.read_bytes()[: last.stat().st_size // 2]
    last.write_bytes(damaged)
    with pytest.raises(CheckpointError) as error:
        resume(run, progress=False)
    message = str(error.value)
    assert f"the checkpoint {last} is damaged: its SHA-256 matches none recorded" in message
    assert f"resume from it with `dynamtl resume {run} --checkpoint previous`" in message
    assert last.read_bytes() == damaged
    with pytest.raises(TrainingStopped):  # the same divergence at the same step: it did resume
        resume(run, which="previous", progress=False)
    assert (run / "checkpoints" / "last.damaged.pt").read_bytes() == damaged  # set aside, not rotated out
    resume_event = [e for e in records(run / "events.jsonl") if e["event"] == "resume"][-1]
    assert resume_event["checkpoint"] == "previous" and resume_event["step"] == 1


def test_a_checkpoint_of_another_run_is_refused_naming_the_differences(tmp_path):
    run = stopped_run(tmp_path / "run")
    other = stopped_run(tmp_path / "other", method="dwa", tasks=("main",))
    last = run / "checkpoints" / "last.pt"
    for name in ("last.pt", "checksums.json"):  # copied with its checksum: intact, but another run's
        (run / "checkpoints" / name).write_bytes((other / "checkpoints" / name).read_bytes())
    foreign = last.read_bytes()
    with pytest.raises(CheckpointError) as error:
        resume(run, progress=False)
    message = str(error.value)
    assert f"the checkpoint {last} was made under another configuration or environment" in message
    assert "method: 'dwa' before, 'equal' now" in message and "tasks: ['main'] before, ['main', 'aux'] now" in message
    assert "options.temperature: 2.0 before, '(absent)' now" in message  # every option is recorded
    assert last.read_bytes() == foreign
