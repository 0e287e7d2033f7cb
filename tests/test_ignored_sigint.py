"""SIGINT inherited ignored: a command started with ``&`` from a non-interactive shell (a
script, ``nohup cmd &``, some job launchers) gets SIGINT as ``SIG_IGN``, and Python then
installs no ``KeyboardInterrupt`` handler. ``train``, ``resume`` and ``compare`` (its
parent process and its runs, with ``--jobs 1`` and ``--jobs 2``) must all still stop on
``kill -INT PID`` as documented: checkpoint, a ``stop`` record, the way on, status 130.
Real processes, real signals, started exactly as such a shell starts them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
DYNAMTL = [sys.executable, "-m", "dynamtl.cli"]
LONG = ["--benchmark", "drift", "--limit", "6000", "--batch-size", "8", "--epochs", "8", "--checkpoint-every", "100",
        "--threads", "1", "--quiet"]  # fmt: skip


def as_started_in_the_background() -> None:
    """What ``cmd &`` in a non-interactive shell does before it runs ``cmd``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([*DYNAMTL, *args], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=as_started_in_the_background)


def events(run: Path, name: str) -> list[dict]:
    path = run / "events.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [e for e in (json.loads(line) for line in lines if line.endswith("}")) if e.get("event") == name]


def interrupt_once(process: subprocess.Popen, ready, what: str) -> tuple[str, str]:
    """Send SIGINT to ``process`` (alone, as ``kill -INT PID`` does) once ``ready()``; its output."""
    try:
        deadline = time.monotonic() + 300
        while not ready():
            assert process.poll() is None, f"ended before {what}: {process.communicate()}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        return process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def steps_logged(run: Path) -> int:
    path = run / "steps.jsonl"
    return path.read_text().count("\n") if path.is_file() else 0


def test_train_and_resume_stop_on_sigint_inherited_ignored(tmp_path):
    run = tmp_path / "run"
    for command in (["train", *LONG, "--out", str(run)], ["resume", str(run), "--quiet"]):
        before = steps_logged(run)
        process = start(*command)
        _, stderr = interrupt_once(process, lambda b=before: steps_logged(run) >= b + 20, f"{command[0]}'s steps")
        assert process.returncode == 128 + signal.SIGINT, stderr
        assert "Traceback" not in stderr
        assert f"Continue with: {' '.join(DYNAMTL)} resume {run}" in stderr, stderr
        assert events(run, "stop")[-1]["reason"] == "SIGINT"
    assert len(events(run, "stop")) == 2 and len(events(run, "resume")) == 1


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_compare_stops_on_sigint_inherited_ignored_and_goes_on_when_run_again(tmp_path, jobs):
    out = tmp_path / "comparison"
    args = ["compare", *LONG, "--methods", "equal", "--seeds", "0", "--jobs", jobs, "--out", str(out)]
    process = start(*args)
    training = lambda: any(steps_logged(p.parent) >= 20 for p in out.rglob("steps.jsonl"))  # noqa: E731
    stdout, stderr = interrupt_once(process, training, "a run's steps")
    assert process.returncode == 128 + signal.SIGINT, stdout + stderr
    assert "interrupted: run the same command again to go on" in stderr and "Traceback" not in stderr
    stopped = [p.parent for p in out.rglob("events.jsonl") if events(p.parent, "stop")]
    assert stopped, "no run of the comparison checkpointed and recorded its stop"
    # the parent passes the stop on as SIGTERM to its workers; in its own process the run gets SIGINT itself
    assert {events(run, "stop")[-1]["reason"] for run in stopped} == {"SIGINT" if jobs == "1" else "SIGTERM"}
    assert all((run / "checkpoints" / "last.pt").is_file() for run in stopped)
    assert not (out / "table.md").exists()
