"""The noise task's share of the helper weight: its definition on hand-written run folders,
its table column, its figure, and a comparison with a noise task drawing and redrawing it."""

from __future__ import annotations

import csv
import importlib.util
import io
import json

import pytest

from dynamtl.metrics import MAE
from dynamtl.report.shares import Share, helper_share
from dynamtl.report.tables import compare_table
from dynamtl.train.compare import compare, draw_comparison_plots
from dynamtl.train.config import RunConfig
from dynamtl.train.grid import LocalEngine

needs_matplotlib = pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None, reason="plots need matplotlib: pip install 'dynamtl[report]'"
)


def _run(run_dir, rows, primary=("main",), tail=""):
    """A run folder whose steps have the weights (and aggregation weights) of ``rows``."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"primary": list(primary) if primary else None}))
    lines = [json.dumps({"step": i + 1, **row}) for i, row in enumerate(rows)]
    (run_dir / "steps.jsonl").write_text("\n".join(lines) + "\n" + tail)
    return run_dir


def _weights(**weights):
    return {f"weight/{task}": value for task, value in weights.items()}


def test_the_share_is_the_noise_tasks_mean_effective_weight_over_the_helpers(tmp_path):
    rows = [
        {**_weights(main=1.0, aux=0.4, noise=0.2), "aggregation_weight/main": 1.0, "aggregation_weight/aux": 0.5,
         "aggregation_weight/noise": 2.0},  # effective: aux 0.2, noise 0.4
        _weights(main=3.0, aux=-0.6, noise=0.1),  # no aggregation weights: |λ| itself
    ]
    skipped = json.dumps({"step": 3, "skipped": True, "error": "nan"}) + "\n" + '{"step": 4, "weight/no'
    share = helper_share(_run(tmp_path / "aux", rows, tail=skipped), "noise")
    assert share == Share(pytest.approx(0.25 / 0.65), 0.5)  # means: aux 0.4, noise 0.25; main is primary
    everything = helper_share(_run(tmp_path / "mt", rows, primary=None), "noise")  # multi-task: every task helps
    assert everything == Share(pytest.approx(0.25 / (2.0 + 0.4 + 0.25)), pytest.approx(1 / 3))
    # the share does not depend on the scale of the weights
    scaled = [{k: 10 * v if k.startswith("weight/") else v for k, v in row.items()} for row in rows]
    assert helper_share(_run(tmp_path / "scaled", scaled), "noise").value == pytest.approx(share.value)


def test_no_share_without_weights_or_without_the_task_as_a_helper(tmp_path):
    assert helper_share(tmp_path / "missing", "noise") is None
    run = _run(tmp_path / "r", [_weights(main=1.0, aux=1.0)])
    assert helper_share(run, "noise") is None
    assert helper_share(run, "main") is None  # primary: not a helper
    with pytest.raises(ValueError, match=r"helper tasks' mean weights sum to 0\.0, so 'noise' has no share"):
        helper_share(_run(tmp_path / "zero", [_weights(main=1.0, aux=0.0, noise=0.0)]), "noise")


def test_noise_share_column_is_described_not_ranked_and_absent_without_a_noise_task():
    rows = [{"benchmark": "b", "method": m, "seed": 0, "test": {"main": {"mae": v}}, "delta_mtl": None,
             "noise_share": s} for m, v, s in (("stl", 1.0, None), ("equal", 2.0, 0.5), ("hydalearn", 3.0, 0.125))]
    markdown, text = compare_table(rows, {"main": [MAE]})
    assert [c.strip() for c in markdown.splitlines()[0].strip("|").split("|")][-1] == "noise share"
    assert [line.rstrip(" |").rsplit("|", 1)[1].strip() for line in markdown.splitlines()[2:]] == [
        "–", "0.50", "0.12"]
    assert {r["method"]: r["noise_share mean"] for r in csv.DictReader(io.StringIO(text))}["hydalearn"] == "0.125"
    without = compare_table([{**row, "noise_share": None} for row in rows], {"main": [MAE]})[0]
    assert "noise share" not in without


@needs_matplotlib
def test_share_figure_has_a_bar_per_method_at_its_seeds_mean_and_the_even_share_dashed():
    from dynamtl.report.plots import share_comparison_figure

    shares = {"equal": [Share(0.5, 0.5)] * 2, "hydalearn": [Share(0.1, 0.5), Share(0.2, 0.5)]}
    axes = share_comparison_figure(shares, "noise").axes[0]
    assert [bar.get_width() for bar in axes.patches] == pytest.approx([0.5, 0.15])
    assert [tick.get_text() for tick in axes.get_yticklabels()] == ["equal", "hydalearn"]
    dashed = [line for line in axes.get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 1 and list(dashed[0].get_xdata()) == [0.5, 0.5]
    dots = [list(line.get_xdata()) for line in axes.get_lines() if line.get_marker() == "o"]
    assert dots == [[0.5, 0.5], [0.1, 0.2]]
    with pytest.raises(ValueError, match="different numbers of helper tasks"):
        share_comparison_figure({"a": [Share(0.5, 0.5)], "b": [Share(0.3, 1 / 3)]}, "noise")
    with pytest.raises(ValueError, match=r"none for \['b'\]"):
        share_comparison_figure({"a": [Share(0.5, 0.5)], "b": []}, "noise")


@needs_matplotlib
def test_a_comparison_with_a_noise_task_tabulates_draws_and_redraws_the_share(tmp_path):
    base = RunConfig(benchmark="drift", mode="auxiliary", noise_task=True, limit=128, batch_size=64, epochs=1)
    out, said = tmp_path / "cmp", []
    result = compare(base, ["equal", "hydalearn"], [0], out, progress=False, say=said.append, engine=LocalEngine(1))
    shares = {r["method"]: r["noise_share"] for r in result.results}
    assert shares["stl"] is None and shares["equal"] == 0.5
    assert shares["hydalearn"] == helper_share(out / "runs" / "hydalearn" / "seed0", "noise").value != 0.5
    assert "hydalearn.static" in shares  # the controls are in the table
    figure = out / "plots" / "noise-share.png"
    assert figure in result.files and f"which methods down-weighted the noise task: {figure}" in said
    figure.unlink()
    assert figure in draw_comparison_plots(out) and figure.is_file()  # `dynamtl plot` redraws it
