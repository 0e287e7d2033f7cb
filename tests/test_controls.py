"""Comparison rows: named variants of methods, and the matched controls of weightings whose
weights do not average 1 (Static at the mean weights, Equal at the learning-rate scale)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import tomllib

from dynamtl.metrics import MAE
from dynamtl.registry import parse_method
from dynamtl.report.tables import compare_table
from dynamtl.train.compare import compare
from dynamtl.train.config import ConfigError, RunConfig
from dynamtl.train.controls import RunSpec, matched_controls, method_specs, read_weights

CLAIMS = Path(__file__).parents[1] / "src" / "dynamtl" / "cli" / "claims"

AUX = RunConfig(benchmark="drift", mode="auxiliary", limit=128, batch_size=64, epochs=1, lr=0.01, optimizer="sgd")


def _steps(run_dir, rows, tail=""):
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps({"step": i + 1, **{f"loss/{t}": 1.0 for t in row}, **{f"weight/{t}": w for t, w in row.items()}})
        for i, row in enumerate(rows)
    ]
    (run_dir / "steps.jsonl").write_text("\n".join(lines) + "\n" + tail)
    return run_dir


def test_read_weights_averages_each_task_over_the_steps_and_leaves_out_skips(tmp_path):
    run = _steps(tmp_path / "r", [{"main": 0.1, "aux": 0.3}, {"main": 0.3, "aux": 0.1}, {"main": 0.5, "aux": 0.5}],
                 tail=json.dumps({"step": 4, "skipped": True, "error": "nan"}) + "\n" + '{"step": 5, "weight/ma')
    summary = read_weights(run)
    assert summary.mean == pytest.approx({"main": 0.3, "aux": 0.3})
    assert summary.mean_sum == pytest.approx(0.6)
    assert not summary.constant
    assert read_weights(_steps(tmp_path / "c", [{"main": 2.0, "aux": 0.5}] * 3)).constant
    assert read_weights(tmp_path / "none") is None


def test_controls_match_the_mean_weights_and_the_counted_tasks_learning_rate_scale(tmp_path):
    run = _steps(tmp_path / "r", [{"main": 0.1, "aux": 0.7}, {"main": 0.3, "aux": 0.5}])
    static, equal = matched_controls(RunSpec("auto-lambda", AUX.replace(method="auto-lambda")), 3, run)
    assert static.label == "auto-lambda.static" and equal.label == "auto-lambda.equal-lr"
    assert static.config.method == "static" and static.config.options["weights"] == pytest.approx(
        {"main": 0.2, "aux": 0.6})
    assert equal.config.method == "equal" and equal.config.options == {}
    assert equal.config.lr == pytest.approx(0.01 * 0.2)  # auxiliary mode: the primary task's mean weight
    assert static.config.seed == equal.config.seed == 3 and static.config.lr == 0.01
    multi = matched_controls(RunSpec("x", AUX.replace(method="auto-lambda", mode="multi-task")), 0, run)
    assert multi[1].config.lr == pytest.approx(0.01 * 0.4)  # multi-task mode: every task's
    for optimizer in ("adam", "adamw"):  # invariant to a common factor on the loss: Equal is the matched one
        adam = matched_controls(RunSpec("x", AUX.replace(method="auto-lambda", optimizer=optimizer)), 0, run)
        assert [c.label for c in adam] == ["x.static"]


@pytest.mark.parametrize(
    ("rows", "labels"),
    [
        ([{"main": 1.0, "aux": 1.0}] * 2, []),  # Equal: weights average 1
        ([{"main": 0.1, "aux": 0.1}] * 2, []),  # constant: it is its own static control
        ([{"main": 1.02, "aux": 0.97}, {"main": 0.98, "aux": 1.01}], []),  # within the 5 % tolerance
        ([{"main": 1.5, "aux": 0.1}, {"main": 1.7, "aux": 0.3}], ["m.static", "m.equal-lr"]),
        ([{"main": 0.9, "aux": 1.9}, {"main": 1.1, "aux": 0.5}], ["m.static"]),  # the primary averages 1
    ],
)
def test_controls_are_added_only_where_weights_change_and_do_not_average_one(tmp_path, rows, labels):
    run = _steps(tmp_path / "r", rows)
    assert [c.label for c in matched_controls(RunSpec("m", AUX.replace(method="hydalearn")), 0, run)] == labels


def test_variants_carry_their_own_options_on_top_of_the_shared_ones():
    base = AUX.replace(options={"lr": 1e-3, "floor": 0.1})
    specs = method_specs(base, ["equal", "auto-lambda", "hy", "fixed"], {
        "hy": {"method": "hydalearn", "normalize": "main"},
        "fixed": {"method": "static", "weights": {"main": 1.0, "aux": 0.5}},
    })
    assert [(s.label, s.config.method, dict(s.config.options)) for s in specs] == [
        ("equal", "equal", {}),
        ("auto-lambda", "auto-lambda", {"lr": 1e-3}),
        ("hy", "hydalearn", {"floor": 0.1, "normalize": "main"}),
        ("fixed", "static", {"weights": {"main": 1.0, "aux": 0.5}}),
    ]


@pytest.mark.parametrize(
    ("methods", "variants", "message"),
    [
        (["x"], {"x": {"lr": 1e-3}}, "variant 'x' names no method"),
        (["x"], {"x": {"method": "equal", "lr": 1e-3}}, "variant 'x': method 'equal' takes no option 'lr'"),
        (["equal"], {"x": {"method": "equal"}}, r"variant\(s\) \['x'\] are defined but not in methods"),
    ],
)
def test_bad_variants_are_refused_by_name(methods, variants, message):
    with pytest.raises(ConfigError, match=message):
        method_specs(AUX, methods, variants)


def test_weight_sum_column_is_described_not_ranked():
    rows = [{"benchmark": "b", "method": m, "seed": 0, "test": {"main": {"mae": v}}, "delta_mtl": None,
             "mean_weight_sum": s} for m, v, s in (("stl", 1.0, None), ("equal", 2.0, 2.0), ("al", 3.0, 0.2))]
    markdown, text = compare_table(rows, {"main": [MAE]})
    assert [c.strip() for c in markdown.splitlines()[0].strip("|").split("|")][-1] == "Σλ"
    cells = [line.rstrip(" |").rsplit("|", 1)[1].strip() for line in markdown.splitlines()[2:]]
    assert cells == ["–", "2.00", "0.20"]  # no bold: a larger or smaller sum is not better
    assert {r["method"]: r["mean_weight_sum mean"] for r in csv.DictReader(io.StringIO(text))} == {
        "stl": "", "equal": "2.0", "al": "0.2"}


def test_compare_runs_the_controls_after_the_method_and_tabulates_them(tmp_path):
    out = tmp_path / "cmp"
    result = compare(AUX, ["equal", "auto-lambda"], [0, 1], out, progress=False)
    labels = [line.split("|")[1].strip() for line in result.markdown.splitlines()[2:]]
    assert labels == ["stl", "equal", "auto-lambda", "auto-lambda.static", "auto-lambda.equal-lr"]
    for seed in (0, 1):
        weights = read_weights(out / "runs" / "auto-lambda" / f"seed{seed}").mean
        static = json.loads((out / "runs" / "auto-lambda.static" / f"seed{seed}" / "config.json").read_text())
        assert static["method"] == "static" and static["options"]["weights"] == pytest.approx(weights)
        equal = json.loads((out / "runs" / "auto-lambda.equal-lr" / f"seed{seed}" / "config.json").read_text())
        assert equal["lr"] == pytest.approx(0.01 * weights["main"]) and equal["seed"] == seed
    sums = {r["method"]: r["mean_weight_sum"] for r in result.results if r["seed"] == 0}
    assert sums["equal"] == 2.0 and sums["stl"] is None and sums["auto-lambda"] == pytest.approx(0.2, abs=0.01)
    plain = compare(AUX, ["equal", "auto-lambda"], [0], tmp_path / "plain", progress=False, controls=False)
    assert [r["method"] for r in plain.results] == ["stl", "equal", "auto-lambda"]


@pytest.mark.parametrize("config", sorted(p.name for p in CLAIMS.glob("*.toml")))
def test_every_shipped_claims_config_builds_its_rows(config):
    """Each experiment of docs/claims.md parses: known keys, variants whose methods take their options."""
    from dynamtl.cli.main import COMPARE_KEYS

    with (CLAIMS / config).open("rb") as file:
        values = tomllib.load(file)
    listed = {key: values.pop(key, None) for key in COMPARE_KEYS}
    base = RunConfig.from_mapping(values, config)
    rows = method_specs(base, listed["methods"], listed["variants"])
    assert [r.label for r in rows] == listed["methods"] and len(listed["seeds"]) >= 3
    for row in rows:
        parse_method(row.config.method, row.config.options)
