"""Readers of a finished run folder given files of the wrong shape or missing: ``compare``
reusing the run, ``resume`` of a finished run, ``dynamtl plot`` and ``scripts/claims.py``.
Valid JSON with missing keys, wrong types, a list for an object, NaN and null — and logs
deleted after the run finished — are named (file and line) and left out, rebuilt, or
refused in one line with the way on; never a traceback. A real comparison is trained once
(real subprocesses); each test damages a copy of it as a user's editor or a bad copy would."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
COMPARE = ["compare", "--benchmark", "drift", "--limit", "128", "--batch-size", "64", "--epochs", "1", "--quiet",
           "--mode", "auxiliary", "--noise-task", "--methods", "auto-lambda", "--seeds", "0", "--option", "lr=1e-2",
           "--threads", "1", "--jobs", "1"]  # fmt: skip
RUN = Path("runs") / "auto-lambda" / "seed0"
needs_matplotlib = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="plots need matplotlib")


def dynamtl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dynamtl.cli", *args], env=ENV, capture_output=True, text=True,
                          timeout=600, check=False)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished comparison: stl, auto-lambda (with a noise task) and its matched control."""
    out = tmp_path_factory.mktemp("finished") / "comparison"
    result = dynamtl(*COMPARE, "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture
def out(finished, tmp_path) -> Path:
    copy = tmp_path / "comparison"
    shutil.copytree(finished, copy)
    return copy


def again(out: Path) -> subprocess.CompletedProcess:
    return dynamtl(*COMPARE, "--out", str(out))


def no_traceback(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stderr and "KeyError" not in result.stderr, result.stderr


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines()


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def without(line: str, *keys: str) -> str:
    return json.dumps({k: v for k, v in json.loads(line).items() if k not in keys})


def with_value(line: str, key: str, value: str) -> str:
    """``line`` with ``key`` set to ``value`` as JSON text (``NaN``, ``null``, ``"abc"``)."""
    record = json.loads(line)
    record[key] = "@@"
    return json.dumps(record).replace('"@@"', value)


# --- G1: records of the wrong shape -------------------------------------------------------------


def test_step_records_of_the_wrong_shape_are_named_and_left_out_by_compare_plot_and_claims(out, finished):
    steps = out / RUN / "steps.jsonl"
    intact = lines_of(steps)
    first = intact[0]
    bad = {  # line -> why it is left out
        '{"step": 3}': "lacks 'weight/main', 'weight/aux', 'weight/noise'",
        without(first, "weight/aux"): "lacks 'weight/aux'",
        with_value(first, "weight/main", "NaN"): "'weight/main' not finite",
        with_value(first, "weight/noise", "Infinity"): "'weight/noise' not finite",
        with_value(first, "weight/main", "null"): "'weight/main' is null, not a number",
        with_value(first, "weight/main", '"0.5"'): "'weight/main' is \"0.5\", not a number",
        with_value(first, "step", '"1"'): "'step' is \"1\", not a whole number",
        without(first, "step"): "lacks 'step'",
        json.dumps([json.loads(first)]): "not a record but",
        "null": "not a record but null",
        "3.5": "not a record but 3.5",
    }
    write_lines(steps, [intact[0], *bad, *intact[1:]])
    result = again(out)
    assert result.returncode == 0, result.stderr
    no_traceback(result)
    for number, why in enumerate(bad.values(), start=2):
        assert f"line {number}: {why}" in result.stderr, (number, why, result.stderr)
    assert f"{steps}: left out 4 step record(s) without every task's weight" in result.stderr
    assert f"{steps}: left out 7 damaged line(s)" in result.stderr
    assert (out / "table.md").read_text() == (finished / "table.md").read_text()  # the intact records, as before

    if importlib.util.find_spec("matplotlib") is not None:
        plotted = dynamtl("plot", str(out))
        assert plotted.returncode == 0, plotted.stderr
        no_traceback(plotted)
        assert plotted.stderr.count(f"{steps}: left out 7 damaged line(s)") == 1, plotted.stderr

    spec = importlib.util.spec_from_file_location("claims", Path(__file__).parent.parent / "scripts" / "claims.py")
    claims = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(claims)
    assert len(claims.steps(out / RUN)) == len(intact)
    assert all(len(tensor) == len(intact) for tensor in claims.weights(claims.steps(out / RUN)).values())


@needs_matplotlib
def test_epoch_records_of_the_wrong_shape_are_named_and_left_out_by_plot(out):
    epochs = out / RUN / "epochs.jsonl"
    intact = lines_of(epochs)
    bad = {'{"step": 2, "val/main/mae": 0.5}': "lacks 'epoch'",
           with_value(intact[0], "epoch", '"1"'): "'epoch' is \"1\", not a whole number",
           with_value(intact[0], "val/main/mae", "null"): "'val/main/mae' is null, not a number",
           "[]": "not a record but []"}
    write_lines(epochs, [*intact, *bad])
    result = dynamtl("plot", str(out / RUN))
    assert result.returncode == 0, result.stderr
    no_traceback(result)
    for number, why in enumerate(bad.values(), start=len(intact) + 1):
        assert f"line {number}: {why}" in result.stderr, result.stderr


RESULTS_DAMAGE = {  # what is done to results.json: (edit, named)
    "a list": (lambda r: [r], "it holds a list, not a table"),
    "test of a task a string": (lambda r: {**r, "test": {**r["test"], "main": "abc"}},
                                "'test' is not a table task -> metric -> number"),
    "a metric null": (lambda r: {**r, "test": {**r["test"], "main": {"mae": None}}},
                      "'test' is not a table task -> metric -> number"),
    "a primary metric missing": (lambda r: {**r, "test": {**r["test"], "main": {}}}, "'test' lacks main/mae"),
    "steps missing": (lambda r: {k: v for k, v in r.items() if k != "steps"}, "'steps' is missing"),
    "seed a string": (lambda r: {**r, "seed": "0"}, "'seed' is \"0\", not a whole number"),
}


@pytest.mark.parametrize("damage", list(RESULTS_DAMAGE))
def test_a_results_json_of_the_wrong_shape_is_refused_naming_it_and_the_fix_rebuilds_it(out, finished, damage):
    edit, named = RESULTS_DAMAGE[damage]
    results = out / RUN / "results.json"
    before = json.loads(results.read_text())
    results.write_text(json.dumps(edit(before)))
    result = again(out)
    assert result.returncode == 1, result.stderr
    no_traceback(result)
    failed = next(line for line in result.stderr.splitlines() if "auto-lambda seed 0: " in line)
    assert f"{results} is damaged (" in failed and named in failed, failed
    assert f"delete {results} and run the same command again: the run's results are then rebuilt from its last " \
           "checkpoint" in failed

    resumed = dynamtl("resume", str(out / RUN))  # resume of a finished run reports its results: the same refusal
    assert resumed.returncode == 1 and named in resumed.stderr and len(resumed.stderr.strip().splitlines()) == 1, \
        resumed.stderr

    results.unlink()  # the fix the message gives
    fixed = again(out)
    assert fixed.returncode == 0, fixed.stderr
    rebuilt = json.loads(results.read_text())
    assert {k: v for k, v in rebuilt.items() if k != "seconds"} == {k: v for k, v in before.items() if k != "seconds"}
    assert (out / "table.md").read_text() == (finished / "table.md").read_text()


CONFIG_DAMAGE = {
    "seed a string": (lambda c: {**c, "seed": "zero"}, "seed expects an integer, got 'zero'"),
    "options a list": (lambda c: {**c, "options": [1]}, "options expects"),
    "benchmark missing": (lambda c: {k: v for k, v in c.items() if k != "benchmark"}, "'benchmark' is missing"),
    "a list": (lambda c: [c], "it holds a list, not a table"),
}


@pytest.mark.parametrize("damage", list(CONFIG_DAMAGE))
def test_a_config_json_of_the_wrong_shape_is_named_and_rewritten_from_the_checkpoint_on_reuse(out, finished,
                                                                                              damage):
    edit, named = CONFIG_DAMAGE[damage]
    config = out / RUN / "config.json"
    before = json.loads(config.read_text())
    config.write_text(json.dumps(edit(before)))
    if importlib.util.find_spec("matplotlib") is not None:
        plotted = dynamtl("plot", str(out / RUN))  # plot reads it: named, with the command that rewrites it
        assert "Traceback" not in plotted.stderr, plotted.stderr
        if damage != "options a list":  # (plot reads only benchmark, method, seed, primary)
            assert plotted.returncode == 1, plotted.stderr
            assert f"{config} is damaged" in plotted.stderr and " resume " in plotted.stderr, plotted.stderr
    result = again(out)
    assert result.returncode == 0, result.stderr
    no_traceback(result)
    assert f"{config} is damaged (" in result.stderr and named in result.stderr, result.stderr
    assert "rewritten from the checkpoint" in result.stderr and "another configuration" not in result.stderr
    assert json.loads(config.read_text()) == before
    assert (out / "table.md").read_text() == (finished / "table.md").read_text()


# --- G6: a finished run's logs deleted -----------------------------------------------------------


def test_a_finished_run_without_its_step_log_is_refused_by_compare_naming_it_and_the_fix_works(out, finished):
    steps = out / RUN / "steps.jsonl"
    steps.unlink()
    result = again(out)
    assert result.returncode == 1, result.stderr
    no_traceback(result)
    failed = next(line for line in result.stderr.splitlines() if "auto-lambda seed 0: " in line)
    assert f"{steps} is missing" in failed and f"delete {out / RUN} and run the same command again" in failed
    assert "| stl " in result.stdout  # the others are tabulated

    shutil.rmtree(out / RUN)  # the fix the message gives
    fixed = again(out)
    assert fixed.returncode == 0, fixed.stderr
    assert (out / "table.md").read_text() == (finished / "table.md").read_text()


@pytest.mark.parametrize("log", ["epochs.jsonl", "events.jsonl"])
def test_a_finished_run_without_a_history_log_is_reused_saying_so(out, finished, log):
    (out / RUN / log).unlink()
    result = again(out)
    assert result.returncode == 0, result.stderr
    no_traceback(result)
    assert f"{out / RUN / log} is missing: that history of auto-lambda seed 0 is lost" in result.stderr
    assert (out / "table.md").read_text() == (finished / "table.md").read_text()


def test_a_finished_run_without_its_results_is_rebuilt_from_its_last_checkpoint(out, finished):
    results = out / RUN / "results.json"
    before = json.loads(results.read_text())
    results.unlink()
    result = again(out)
    assert result.returncode == 0, result.stderr
    no_traceback(result)
    rebuilt = json.loads(results.read_text())
    assert {k: v for k, v in rebuilt.items() if k != "seconds"} == {k: v for k, v in before.items() if k != "seconds"}
    assert (out / "table.md").read_text() == (finished / "table.md").read_text()


@needs_matplotlib
def test_plot_of_a_run_without_a_log_says_which_and_draws_the_rest(out):
    run = out / RUN
    (run / "steps.jsonl").unlink()
    result = dynamtl("plot", str(run))
    assert result.returncode == 0, result.stderr
    no_traceback(result)
    assert result.stdout.split() == [str(run / "plots" / "metrics.png")]
    assert f"weights.png not drawn: {run / 'steps.jsonl'} is missing; drawn: metrics.png" in result.stderr

    whole = dynamtl("plot", str(out))  # the comparison: the other runs, and its figures without this run
    assert whole.returncode == 0, whole.stderr
    assert str(out / "plots" / "weights_seed0.png") in whole.stdout.split()
    assert f"leaves out auto-lambda ({run / 'steps.jsonl'} is missing)" in whole.stderr

    (run / "epochs.jsonl").unlink()
    nothing = dynamtl("plot", str(run))
    assert nothing.returncode == 1 and "Traceback" not in nothing.stderr, nothing.stderr
    assert f"nothing to draw in {run}: weights.png not drawn: {run / 'steps.jsonl'} is missing; metrics.png not " \
           f"drawn: {run / 'epochs.jsonl'} is missing" in nothing.stderr


def test_resume_of_a_finished_run_with_damaged_results_says_so_and_the_same_command_then_rebuilds_them(out):
    results = out / RUN / "results.json"
    before = json.loads(results.read_text())
    results.write_text("[]")
    result = dynamtl("resume", str(out / RUN))
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"delete {results} and run the same command again" in result.stderr
    results.unlink()
    resumed = dynamtl("resume", str(out / RUN))  # the same command again
    assert resumed.returncode == 0, resumed.stderr
    rebuilt = json.loads(results.read_text())
    assert {k: v for k, v in rebuilt.items() if k != "seconds"} == {k: v for k, v in before.items() if k != "seconds"}
