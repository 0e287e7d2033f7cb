"""A single-task baseline (``--method stl``) is one run folder holding one run per task
(``RUN/tasks/TASK``). Stopped by SIGINT, its way on must be the whole baseline's
``resume RUN`` (resuming ``RUN/tasks/TASK`` alone finishes one task and leaves the
baseline without results), and that resume must not claim that the run starts over (the
baseline's folder has no checkpoint of its own; each task's run continues from its own).
Real processes, a real signal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
DYNAMTL = [sys.executable, "-m", "dynamtl.cli"]
ARGS = ["--benchmark", "drift", "--method", "stl", "--limit", "800", "--batch-size", "8", "--epochs", "2",
        "--checkpoint-every", "10", "--threads", "1", "--quiet"]  # fmt: skip


def test_stopped_single_task_baseline_says_resume_the_baseline_and_resume_finishes_it(tmp_path):
    run = tmp_path / "stl"
    process = subprocess.Popen([*DYNAMTL, "train", *ARGS, "--out", str(run)], env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not any(p.read_text().count("\n") >= 20 for p in run.glob("tasks/*/steps.jsonl")):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "timed out waiting for the first task's steps"
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 128 + signal.SIGINT, stderr
    assert stderr.rstrip().endswith(f"Continue with: {' '.join(DYNAMTL)} resume {run}"), stderr
    assert "single-task run of" in stderr
    resumed = subprocess.run([*DYNAMTL, "resume", str(run), "--quiet"], env=ENV, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "starting the run over" not in resumed.stderr, resumed.stderr
    assert "no usable checkpoint" not in resumed.stderr, resumed.stderr
    results = json.loads((run / "results.json").read_text())
    assert results["single_task"] and results["tasks"]
    stopped = [t for t in run.glob("tasks/*/events.jsonl") if '"event": "stop"' in t.read_text()]
    assert stopped and all('"event": "resume"' in t.read_text() for t in stopped)
