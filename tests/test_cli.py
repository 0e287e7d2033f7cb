"""The ``dynamtl`` command end to end: train (config file and flags), compare with
single-task baselines and the cache of finished runs, plot, list, and the messages for bad
input. Training runs in real subprocesses (``python -m dynamtl.cli``); quick commands and
error cases go through click's test runner, which calls the same command in-process."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dynamtl.cli import main
from dynamtl.cli.main import MAIN_JOB
from dynamtl.metrics import MAE, delta_mtl
from dynamtl.registry import AGGREGATIONS, BENCHMARKS, PUBLISHED_COMPOSITIONS, WEIGHTINGS, MethodContext, parse_method
from dynamtl.train.config import read_config_file

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models: one thread is fastest on a busy machine
TINY = ["--benchmark", "drift", "--limit", "128", "--batch-size", "64", "--epochs", "1", "--quiet"]
needs_matplotlib = pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None, reason="plots need matplotlib: pip install 'dynamtl[report]'"
)


def cli(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "dynamtl.cli", *args], check=False, env=ENV, capture_output=True, text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return result


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_train_reads_a_config_file_and_flags_override_it(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(
        'benchmark = "drift"\nmethod = "hydalearn"\nmode = "auxiliary"\nepochs = 3\nlimit = 128\nbatch_size = 64\n'
        '[options]\ngain = "first_order"\nfloor = 0.05\n[benchmark_options]\ncycles = 2\n'
    )
    out = tmp_path / "run"
    result = cli("train", "--config", str(config), "--epochs", "1", "--option", "floor=0.1", "--quiet",
                 "--out", str(out))
    saved = json.loads((out / "config.json").read_text())
    assert saved["epochs"] == 1 and saved["limit"] == 128 and saved["method"] == "hydalearn"
    assert saved["options"] == {"gain": "first_order", "floor": 0.1, "gain_batch": "current", "normalize": "sum",
                                "step_size": None, "total": None, "smoothing": 0.0}  # every option, defaults included
    assert saved["benchmark_options"] == {"cycles": 2.0}
    results = json.loads((out / "results.json").read_text())
    assert f"test metrics: {json.dumps(results['test'])}" in result.stdout
    assert f"run folder: {out}" in result.stdout
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "plots" / "weights.png").is_file() and (out / "plots" / "metrics.png").is_file()


def test_train_on_census_income(census_root, tmp_path):
    out = tmp_path / "census"
    cli("train", "--benchmark", "census", "--root", str(census_root), "--limit", "300", "--epochs", "1",
        "--method", "uncertainty+pcgrad", "--quiet", "--out", str(out))
    results = json.loads((out / "results.json").read_text())
    assert set(results["test"]) == {"income", "marital", "education"}
    assert all(0.0 <= m["auc"] <= 1.0 and 0.0 <= m["accuracy"] <= 1.0 for m in results["test"].values())
    assert [json.loads(line)["epoch"] for line in (out / "epochs.jsonl").read_text().splitlines()] == [1]


def test_the_main_job_weights_a_useful_and_a_noise_auxiliary_task_with_controls(census_root, tmp_path):
    job = read_config_file(MAIN_JOB)
    assert job["mode"] == "auxiliary" and job["noise_task"] is True and job.get("controls", True) is not False
    named = {job.get("variants", {}).get(label, {}).get("method", label) for label in job["methods"]}
    assert {"equal", "auto-lambda", "hydalearn", "gcs", "ol-aux"} <= named and len(job["seeds"]) >= 1
    out = tmp_path / "main"
    # the main job itself (no --config, no --benchmark), shrunk: one method, one seed, two steps
    result = cli("compare", "--root", str(census_root), "--methods", "hydalearn", "--seeds", "0", "--limit", "300",
                 "--epochs", "1", "--quiet", "--out", str(out))
    assert f"running the main job ({MAIN_JOB})" in result.stdout
    header, _, *rows = (out / "table.md").read_text().splitlines()
    assert [cell.strip() for cell in header.strip("|").split("|")][-2:] == ["Σλ", "noise share"]
    assert [row.split("|")[1].strip() for row in rows] == ["stl", "hydalearn", "hydalearn.static"]
    saved = json.loads((out / "runs" / "hydalearn" / "seed0" / "config.json").read_text())
    assert saved["primary"] == ["income"] and saved["noise_task"] is True
    if importlib.util.find_spec("matplotlib") is not None:
        figure = out / "plots" / "noise-share.png"
        assert f"which methods down-weighted the noise task: {figure}" in result.stdout and figure.is_file()


def test_compare_tabulates_methods_over_seeds_against_single_task_baselines(tmp_path):
    out = tmp_path / "comparison"
    args = [*TINY, "--mode", "auxiliary", "--methods", "equal,auto-lambda+pcgrad", "--seeds", "0,1",
            "--option", "lr=1e-2", "--no-controls", "--out", str(out)]
    result = cli("compare", *args)
    for method in ("stl", "equal", "auto-lambda+pcgrad"):
        for seed in (0, 1):
            assert (out / "runs" / method / f"seed{seed}" / "results.json").is_file()
    table = (out / "table.md").read_text()
    assert table in result.stdout + "\n"
    assert [line.split("|")[1].strip() for line in table.splitlines()[2:]] == ["stl", "equal", "auto-lambda+pcgrad"]
    assert "Δ_MTL (%) ↑" in table.splitlines()[0] and "main/mae ↓" in table.splitlines()[0]
    rows = {row["method"]: row for row in csv.DictReader(io.StringIO((out / "table.csv").read_text()))}

    def test_mae(method: str, seed: int) -> dict:
        return json.loads((out / "runs" / method / f"seed{seed}" / "results.json").read_text())["test"]

    for method in ("equal", "auto-lambda+pcgrad"):
        deltas = [delta_mtl({"main": test_mae(method, s)["main"]}, test_mae("stl", s), {"main": [MAE]}) for s in (0, 1)]
        assert float(rows[method]["delta_mtl mean"]) == pytest.approx(statistics.fmean(deltas))
        maes = [test_mae(method, s)["main"]["mae"] for s in (0, 1)]
        assert float(rows[method]["main/mae mean"]) == pytest.approx(statistics.fmean(maes))
    assert float(rows["stl"]["delta_mtl mean"]) == 0.0
    saved = json.loads((out / "runs" / "auto-lambda+pcgrad" / "seed0" / "config.json").read_text())
    assert saved["options"]["lr"] == 0.01 and saved["options"]["epsilon"] == 0.01  # given, and the defaults
    assert json.loads((out / "runs" / "equal" / "seed0" / "config.json").read_text())["options"] == {}

    events = {p: p.read_text() for p in out.rglob("events.jsonl")}
    code, again = invoke("compare", *args)  # every run is reused, none retrained
    assert code == 0 and table in again
    assert {p: p.read_text() for p in out.rglob("events.jsonl")} == events
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "plots" / "weights_seed0.png").is_file()
        code, printed = invoke("plot", str(out))
        assert code == 0
        drawn = sorted(printed.split())
        # weights and metrics of 4 runs; PCGrad's changing aggregation weights of its 2 runs;
        # the metrics (one task: no weights) of the 2 stl runs; the comparison's 2
        assert len(drawn) == 2 * 2 * 2 + 2 + 2 + 2
        assert str(out / "plots" / "weights_seed1.png") in drawn
        assert sum(p.endswith("aggregation-weights.png") for p in drawn) == 2
        assert all(Path(p).is_file() and p.endswith(".png") for p in drawn)


def test_list_names_every_benchmark_and_method():
    code, output = invoke("list")
    assert code == 0
    for name in [*BENCHMARKS, *WEIGHTINGS, *AGGREGATIONS]:
        assert f"  {name} " in output
    assert "auto-lambda  meta-learning; extra 3" in output and "options: init=0.1, lr=0.0001" in output
    for name in PUBLISHED_COMPOSITIONS:  # each a composition the command line takes
        assert f"  {name} " in output
        weighting, aggregation = parse_method(name).build(MethodContext(("a", "b"), ("a",), False, 0))
        assert aggregation is not None and weighting is not None


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["train", "--benchmark", "nope"], "unknown benchmark 'nope'; valid benchmarks: census, drift,"),
        (["train", "--benchmark", "drift", "--method", "lambda"], "unknown method 'lambda'; valid names: equal, dwa"),
        (["train", "--benchmark", "drift", "--tasks", "main,depth"], "unknown selected task(s) ['depth']"),
        (["train", "--benchmark", "drift", "--option", "lr"], "--option takes NAME=VALUE (e.g. --option lr=3e-4)"),
        (
            ["train", "--benchmark", "drift", "--method", "dwa", "--option", "lr=1"],
            "no part of the method takes option 'lr'",
        ),
        (
            ["train", "--benchmark", "drift", "--epochs", "0", "--lr", "-1"],
            "epochs must be >= 1, got 0\n  - lr must be > 0",
        ),
        (["train", "--benchmark", "drift", "--optimizer", "rmsprop"], "'rmsprop' is not one of 'sgd', 'adam', 'adamw'"),
        (["train"], "no benchmark given: give --benchmark NAME"),
        (["compare", "--benchmark", "drift"], "give the methods to compare: --methods"),
        (["compare", "--benchmark", "drift", "--methods", "dwa,nope"], "nope: unknown method 'nope'"),
        (
            ["compare", "--benchmark", "drift", "--methods", "dwa", "--option", "c=1"],
            "no compared method takes the option(s) ['c']",
        ),
        (
            ["resume", "/nonexistent/run"],
            "no folder /nonexistent/run: give the folder of a run",
        ),
        (["plot", "."], "no run folder (with the config.json and logs that `dynamtl train` writes) in ."),
    ],
)
def test_bad_input_names_the_problem_and_the_valid_choices(args, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, output = invoke(*args, "--quiet") if args[0] in ("train", "compare") else invoke(*args)
    assert code != 0
    assert expected in output


def test_a_config_file_with_an_unknown_key_or_bad_syntax_is_rejected(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('benchmark = "drift"\nepoch = 3\n')
    code, output = invoke("train", "--config", str(config))
    assert code == 2 and f"unknown key(s) ['epoch'] in {config} and the flags; valid keys: benchmark" in output
    config.write_text('benchmark = "drift\n')
    code, output = invoke("train", "--config", str(config))
    assert code == 2 and f"{config} is not valid TOML" in output


def test_an_incomplete_data_folder_surfaces_the_loader_message(tmp_path):
    (tmp_path / "census").mkdir()
    (tmp_path / "census" / "census-income.data").write_text("73, Not in universe\n")
    code, output = invoke("train", "--benchmark", "census", "--root", str(tmp_path), "--out", str(tmp_path / "run"))
    assert code == 1
    assert f"cannot load the data of benchmark 'census' from {tmp_path}" in output
    assert "'census-income.test' (plain or .gz) missing from" in output


def test_a_runs_own_config_json_with_list_and_table_options_trains_again(tmp_path):
    """A run's config.json records list options as lists ("pref": [1.0, 2.0]) and tables as
    tables; given back as --config it trains with the same options, and a TOML config may
    write them so too (each value parsed by the type its option declares)."""
    first, second = tmp_path / "first", tmp_path / "second"
    cli("train", *TINY, "--method", "upgrad", "--option", "pref=1,2", "--threads", "1", "--out", str(first))
    cli("train", "--config", str(first / "config.json"), "--quiet", "--threads", "1", "--out", str(second))
    saved = [json.loads((run / "config.json").read_text()) for run in (first, second)]
    assert saved[0]["options"]["pref"] == [1.0, 2.0] and saved[1]["options"] == saved[0]["options"]
    config = tmp_path / "static.toml"
    config.write_text('benchmark = "drift"\nmethod = "static+upgrad"\nlimit = 128\nbatch_size = 64\nepochs = 1\n'
                      "[options]\npref = [1, 2.5]\n[options.weights]\nmain = 1.0\naux = 0.5\n")
    third = tmp_path / "third"
    cli("train", "--config", str(config), "--quiet", "--threads", "1", "--out", str(third))
    options = json.loads((third / "config.json").read_text())["options"]
    assert options["pref"] == [1.0, 2.5] and options["weights"] == {"main": 1.0, "aux": 0.5}


def test_a_config_refuses_option_values_no_option_takes(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('benchmark = "drift"\nmethod = "upgrad"\n[options]\npref = [[1.0], [2.0]]\n')
    code, output = invoke("train", "--config", str(config), "--out", str(tmp_path / "run"))
    assert code == 2 and "pref" in output and not (tmp_path / "run").exists(), output


@pytest.mark.parametrize("options", ["c = 1" + "0" * 400, "pref = [1" + "0" * 400 + ", 1]"])
def test_a_config_with_a_huge_integer_for_a_float_option_exits_2(options, tmp_path):
    method = "cagrad" if options.startswith("c ") else "upgrad"
    config = tmp_path / "huge.toml"
    config.write_text(f'benchmark = "drift"\nmethod = "{method}"\n[options]\n{options}\n')
    code, output = invoke("train", "--config", str(config), "--out", str(tmp_path / "run"))
    assert code == 2 and "too large for a float" in output and "Traceback" not in output, output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("weights", ["main:1,aux:2,main:3", "main:1,main:2"])
def test_a_task_given_twice_in_a_mapping_option_is_refused(weights, tmp_path):
    code, output = invoke("train", "--benchmark", "drift", "--method", "static", "--option", f"weights={weights}",
                          "--out", str(tmp_path / "run"))
    assert code == 2 and "task 'main' is given twice" in output and "has no weight" not in output, output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("options", ['pref = [1, [2]]\n[options.weights]\nmain = 1.0\naux = 0.5\n',
                                     'pref = [1, 2]\n[options.weights]\nmain = [1.0]\naux = 0.5\n'])
def test_a_bad_option_in_a_config_does_not_make_another_look_missing(options, tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text(f'benchmark = "drift"\nmethod = "static+upgrad"\n[options]\n{options}')
    code, output = invoke("train", "--config", str(config), "--out", str(tmp_path / "run"))
    bad = "pref" if "[2]" in options else "weights"
    assert code == 2 and f"'{bad}'" in output and "needs the option" not in output, output
    assert not (tmp_path / "run").exists()


def test_a_list_option_may_be_written_as_config_json_writes_it(tmp_path):
    """``--option pref=[1, 2]`` (the form a run's config.json shows) is ``pref=1,2``."""
    from dynamtl.registry import parse_method

    assert parse_method("upgrad", {"pref": "[1, 2]"}).aggregation_options["pref"] == [1.0, 2.0]
    assert parse_method("upgrad", {"pref": " [0.5,1.5] "}).aggregation_options["pref"] == [0.5, 1.5]


@pytest.mark.parametrize(
    ("method", "options", "expected"),
    [
        # a value that does not parse, one out of range, a per-task list of the wrong length
        ("upgrad", ["max_iters=0.5", "reg_eps=-1", "pref=1,2,3"],
         ["'max_iters' of 'upgrad' expects an integer", "reg_eps must be >= 0", "pref has 3 value(s)"]),
        # both halves, and a task name the weighting that cannot be built does not know
        ("stch+config", ["mu=nan", "preference=main:1,foo:2", "pref=0,0"],
         ["mu must be > 0", "preference names task(s) ['foo']", "ConFIG's option pref holds relative task weights"]),
        # an option no half takes beside the values of those it does
        ("moco", ["beta=0", "radius=0", "gamma=inf", "eta=1"],
         ["no part of the method takes option 'eta'", "beta must be in (0, 1]", "gamma must be > 0",
          "radius must be > 0"]),
        ("db-mtl+sdmgrad", ["beta=2", "sigma=-1", "momentum=1", "iterations=0"],
         ["DBMTL's option beta", "DBMTL's option sigma", "SDMGrad's option momentum", "SDMGrad's option iterations"]),
    ],
)
def test_every_wrong_option_of_a_method_is_reported_at_once(method, options, expected, tmp_path):
    arguments = [part for option in options for part in ("--option", option)]
    code, output = invoke("train", "--benchmark", "drift", "--method", method, *arguments, "--out", str(tmp_path / "r"))
    assert code == 2 and f"Error: {len(expected)} problems:" in output, output
    for text in expected:
        assert text in output, (text, output)
    assert "Traceback" not in output and not (tmp_path / "r").exists()
