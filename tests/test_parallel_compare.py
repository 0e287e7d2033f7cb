"""Threads and parallel comparisons: the thread count chosen, applied and recorded; a
comparison's grid trained in worker processes (or as submitit jobs) gives the table of the
sequential one byte for byte, reuses finished runs, reports a failed run by name without
stopping the others, and stops its workers on a real SIGINT. Runs are real, in real
processes (``python -m dynamtl.cli`` and submitit's local executor)."""

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
from click.testing import CliRunner

from dynamtl.cli import main
from dynamtl.train import RunConfig
from dynamtl.train.compare import compare
from dynamtl.train.grid import LocalEngine, SubmititEngine
from dynamtl.train.processes import processes
from dynamtl.train.threads import choose_threads, usable_cpus

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY = ["--benchmark", "drift", "--limit", "128", "--batch-size", "64", "--epochs", "1", "--quiet"]
GRID = ["--mode", "auxiliary", "--methods", "equal,auto-lambda,rlw", "--seeds", "0,1", "--option", "lr=1e-2"]
"""A grid with a seeded random method (RLW) and the matched controls (a second grid) of Auto-Lambda."""


def dynamtl(*args: str, expect: int = 0) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "dynamtl.cli", *args], check=False, env=ENV,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == expect, result.stdout + result.stderr
    return result


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def events(out: Path) -> dict[Path, str]:
    return {path: path.read_text() for path in sorted(out.rglob("events.jsonl"))}


@pytest.mark.parametrize(
    ("cpus", "load", "jobs", "threads"),
    [
        (2, 0.2, 1, 2),  # an idle machine: the CPUs go to the one run
        (2, 1.0, 1, 1),  # one CPU busy elsewhere: not counted
        (2, 0.0, 2, 1),  # two runs share two CPUs
        (2, 7.5, 1, 1),  # overloaded: never fewer than one thread
        (2, 0.0, 5, 1),  # more runs than CPUs
        (16, 3.4, 2, 6),  # (16 - 3) // 2
        (16, 0.49, 4, 4),
        (1, 0.0, 1, 1),
    ],
)
def test_threads_share_the_idle_cpus_between_the_runs(cpus, load, jobs, threads):
    choice = choose_threads(jobs, cpus=cpus, load=load)
    assert choice.threads == threads
    assert f"{cpus} usable CPU(s)" in choice.reason and f"load average {load:.1f}" in choice.reason


def test_threads_of_this_machine_never_oversubscribe_it():
    cpus = usable_cpus()
    assert 1 <= cpus <= (os.cpu_count() or 1)
    for jobs in range(1, cpus + 2):
        assert 1 <= choose_threads(jobs).threads * jobs <= max(cpus, jobs)
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        choose_threads(0)


def test_a_run_applies_its_thread_count_and_puts_the_previous_one_back():
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    with processes("cpu", other):
        assert torch.get_num_threads() == other
    assert torch.get_num_threads() == before
    with processes("cpu", None):
        assert torch.get_num_threads() == before


def test_train_chooses_prints_and_records_the_threads_and_resume_keeps_them(tmp_path):
    chosen = dynamtl("train", *TINY, "--out", str(tmp_path / "chosen"))
    line = next(line for line in chosen.stdout.splitlines() if line.startswith("torch threads: "))
    recorded = json.loads((tmp_path / "chosen" / "config.json").read_text())["threads"]
    assert line.startswith(f"torch threads: {recorded} (") and "usable CPU(s)" in line
    assert 1 <= recorded <= usable_cpus()

    given = dynamtl("train", *TINY, "--threads", "2", "--out", str(tmp_path / "given"))
    assert "torch threads: 2 (--threads)" in given.stdout
    assert json.loads((tmp_path / "given" / "config.json").read_text())["threads"] == 2

    bad = dynamtl("train", *TINY, "--threads", "0", "--out", str(tmp_path / "bad"), expect=2)
    assert "threads must be >= 1, got 0" in bad.stderr


def test_compare_with_two_jobs_gives_the_sequential_table_byte_for_byte(tmp_path):
    sequential, parallel = tmp_path / "sequential", tmp_path / "parallel"
    one = dynamtl("compare", *TINY, *GRID, "--threads", "1", "--jobs", "1", "--out", str(sequential))
    two = dynamtl("compare", *TINY, *GRID, "--threads", "1", "--jobs", "2", "--out", str(parallel))
    assert "torch threads: 1 per run, 1 run(s) at once" in one.stdout
    assert "torch threads: 1 per run, 2 run(s) at once" in two.stdout
    for name in ("table.md", "table.csv"):
        assert (parallel / name).read_bytes() == (sequential / name).read_bytes()
    for results in sequential.rglob("results.json"):  # every run, bit for bit (JSON floats are repr)
        assert json.loads(results.read_text())["test"] == json.loads(
            (parallel / results.relative_to(sequential)).read_text())["test"]
    assert (parallel / "table.md").read_text() in two.stdout

    before = events(parallel)  # again, without --threads: the comparison keeps its count, reuses every run
    again = dynamtl("compare", *TINY[:-1], *GRID, "--jobs", "2", "--out", str(parallel))  # not --quiet
    assert f"torch threads: 1 per run, 2 run(s) at once on this machine (kept from {parallel / 'comparison.json'})" \
        in again.stdout
    runs = list(parallel.glob("runs/*/seed*/results.json"))
    assert len(runs) > 8 and (parallel / "runs" / "auto-lambda.static" / "seed1" / "results.json") in runs
    assert again.stdout.count("finished before, reused") == len(runs) and events(parallel) == before
    assert (parallel / "table.md").read_bytes() == (sequential / "table.md").read_bytes()


def test_a_failed_run_is_reported_by_name_and_the_others_finish(tmp_path):
    out = tmp_path / "comparison"
    squatter = out / "runs" / "equal" / "seed1"  # a folder holding a run of another configuration
    dynamtl("train", *TINY, "--epochs", "2", "--out", str(squatter))
    result = dynamtl("compare", *TINY, "--methods", "equal,dwa", "--seeds", "0,1", "--jobs", "2",
                     "--out", str(out), expect=1)
    assert "[" in result.stdout and "equal seed 1: FAILED: RunFolderError" in result.stdout
    assert "1 run(s) failed:" in result.stderr and "equal seed 1: RunFolderError" in result.stderr
    assert "epochs: 2 before, 1 now" in result.stderr
    for run in ("stl/seed0", "stl/seed1", "equal/seed0", "dwa/seed0", "dwa/seed1"):
        assert (out / "runs" / run / "results.json").is_file()
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in
            (out / "table.md").read_text().splitlines()[2:]}
    assert rows == {"stl": "2", "equal": "1", "dwa": "2"}  # seeds per row
    assert (out / "table.md").read_text() in result.stdout


def _as_in_a_terminal() -> None:
    """Ctrl-C as a terminal user has it: a test suite started in the background (nohup, some
    CI runners) passes SIGINT on ignored, and a program rightly keeps an ignored SIGINT."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _descendants(pid: int) -> set[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _still_running(pids: set[int], seconds: float) -> dict[int, str]:
    deadline = time.monotonic() + seconds
    while True:
        alive = {}
        for pid in pids:
            try:
                alive[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="lists the worker processes from /proc")
def test_ctrl_c_stops_the_workers_and_the_comparison_goes_on_when_run_again(tmp_path):
    out = tmp_path / "comparison"
    args = ["compare", "--benchmark", "drift", "--limit", "6000", "--batch-size", "8", "--epochs", "8",
            "--checkpoint-every", "100", "--methods", "equal", "--threads", "1", "--jobs", "2", "--quiet",
            "--out", str(out)]
    parent = subprocess.Popen([sys.executable, "-m", "dynamtl.cli", *args], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=_as_in_a_terminal)
    try:
        deadline = time.monotonic() + 300
        while len(list(out.rglob("checkpoints/last.pt"))) < 2:  # both workers are training
            assert parent.poll() is None and time.monotonic() < deadline, parent.communicate()
            time.sleep(0.2)
        workers = _descendants(parent.pid)
        assert workers
        os.kill(parent.pid, signal.SIGINT)  # Ctrl-C, to the parent alone
        stdout, stderr = parent.communicate(timeout=60)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    assert parent.returncode == 128 + signal.SIGINT, stdout + stderr
    assert "interrupted: run the same command again to go on" in stderr
    assert "Traceback" not in stderr
    alive = _still_running(workers, seconds=10)  # the resource tracker may take a moment after its parent
    assert not alive, f"outlived Ctrl-C: {alive}"
    assert not list(out.rglob("table.md"))

    dynamtl(*args)
    assert (out / "table.md").is_file()
    resumed = [path for path, text in events(out).items() if '"event": "resume"' in text]
    assert resumed, "no interrupted run was resumed"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="lists the worker processes from /proc")
def test_a_worker_that_dies_fails_its_run_alone_and_is_replaced(tmp_path):
    out = tmp_path / "comparison"
    args = ["compare", "--benchmark", "drift", "--limit", "6000", "--batch-size", "8", "--epochs", "2",
            "--checkpoint-every", "100", "--methods", "equal,dwa", "--threads", "1", "--jobs", "2",
            "--out", str(out)]
    parent = subprocess.Popen([sys.executable, "-m", "dynamtl.cli", *args], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=_as_in_a_terminal)
    try:
        deadline = time.monotonic() + 300
        while len(list(out.rglob("checkpoints/last.pt"))) < 2:
            assert parent.poll() is None and time.monotonic() < deadline, parent.communicate()
            time.sleep(0.2)
        workers = {pid: cmd for pid, cmd in _still_running(_descendants(parent.pid), 0).items() if "spawn_main" in cmd}
        assert len(workers) == 2
        os.kill(min(workers), signal.SIGKILL)  # as the out-of-memory killer would
        stdout, stderr = parent.communicate(timeout=600)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    assert parent.returncode == 1, stdout + stderr
    assert stdout.count("FAILED: its worker process died (killed by signal 9)") == 1
    assert "1 run(s) failed:" in stderr and ": its worker process died (killed by signal 9)" in stderr
    finished = sorted(str(p.parent.relative_to(out / "runs")) for p in out.glob("runs/*/seed0/results.json"))
    assert len(finished) == 2  # the two other runs, one of them by the worker that replaced the dead one
    assert (out / "table.md").is_file()


def test_jobs_and_engine_options_are_checked(tmp_path):
    code, output = invoke("compare", *TINY, "--methods", "equal", "--jobs", "0", "--out", str(tmp_path / "a"))
    assert code == 2 and "0 is not in the range x>=1" in output
    code, output = invoke("compare", *TINY, "--methods", "equal", "--engine-option", "timeout_min=5",
                          "--out", str(tmp_path / "b"))
    assert code == 2 and "--engine-option is for --engine submitit" in output
    assert not (tmp_path / "b").exists()


def test_submitit_with_two_workers_gives_the_local_table(tmp_path):
    pytest.importorskip("submitit")
    base = RunConfig(benchmark="drift", mode="auxiliary", limit=128, batch_size=64, epochs=1, threads=1,
                     options={"lr": 1e-2})
    methods, seeds = ["equal", "auto-lambda"], [0, 1]
    local = compare(base, methods, seeds, tmp_path / "local", progress=False, controls=False,
                    engine=LocalEngine(jobs=1))
    said: list[str] = []
    engine = SubmititEngine(jobs=2, cluster="local")
    jobs = compare(base, methods, seeds, tmp_path / "submitit", progress=True, controls=False, engine=engine,
                   say=said.append)
    assert "2 run(s) at once as submitit jobs (local executor)" in said[0]
    assert sum("done in" in line for line in said) == 6
    assert jobs.markdown == local.markdown and jobs.csv == local.csv
    assert (tmp_path / "submitit" / "table.md").read_bytes() == (tmp_path / "local" / "table.md").read_bytes()
    assert len(list((tmp_path / "submitit" / "submitit").glob("*_result.pkl"))) == 6  # one job per run


def _events(run: Path, name: str) -> list[dict]:
    path = run / "events.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [e for e in (json.loads(line) for line in lines if line.endswith("}")) if e["event"] == name]


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="lists the worker processes from /proc")
def test_sigusr1_to_compare_checkpoints_every_worker_and_sigterm_stops_it_as_ctrl_c_does(tmp_path):
    """The only PID a user sees is compare's: SIGUSR1 to it is passed on to the workers,
    each of whose runs checkpoints and goes on; SIGTERM (``kill``, ``timeout``, SLURM)
    checkpoints and stops the workers, and says to run the same command again."""
    out = tmp_path / "comparison"
    args = ["compare", "--benchmark", "drift", "--limit", "6000", "--batch-size", "8", "--epochs", "40",
            "--checkpoint-every", "100", "--methods", "equal,dwa", "--seeds", "0", "--threads", "1", "--jobs", "2",
            "--quiet", "--out", str(out)]  # runs long enough to be stopped, as both start (one may start late)
    parent = subprocess.Popen([sys.executable, "-m", "dynamtl.cli", *args], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while len(runs := [p.parent.parent for p in out.rglob("checkpoints/last.pt")]) < 2:  # both are training
            assert parent.poll() is None and time.monotonic() < deadline, parent.communicate()
            time.sleep(0.2)
        workers = _descendants(parent.pid)
        os.kill(parent.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 120
        while not all(any(e["reason"] == "signal" for e in _events(run, "checkpoint")) for run in runs):
            assert parent.poll() is None, parent.communicate()  # not killed by it
            assert time.monotonic() < deadline, "no run checkpointed on SIGUSR1"
            time.sleep(0.2)
        os.kill(parent.pid, signal.SIGTERM)
        stdout, stderr = parent.communicate(timeout=60)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    assert parent.returncode == 128 + signal.SIGTERM, stdout + stderr
    assert "SIGUSR1 passed on to 2 worker process(es)" in stderr
    assert "interrupted: run the same command again to go on" in stderr and "Traceback" not in stderr
    alive = _still_running(workers, seconds=10)
    assert not alive, f"outlived SIGTERM: {alive}"
    for run in runs:  # each run checkpointed and stopped; none went on alone
        assert [e["reason"] for e in _events(run, "stop")] == ["SIGTERM"]
        assert not (run / "results.json").exists()
