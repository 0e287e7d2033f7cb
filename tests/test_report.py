"""dynamtl.report: plots of run folders (written in the format of docs/cli.md, "Run folder")
and comparison tables of results."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import statistics
import struct
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from dynamtl.metrics import ACCURACY, MAE, delta_mtl
from dynamtl.report import (
    compare_table,
    metrics_figure,
    plot_run,
    plot_weights_comparison,
    weights_comparison_figure,
    weights_figure,
)
from dynamtl.report.plots import DPI

needs_matplotlib = pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None, reason="plots need matplotlib: pip install 'dynamtl[report]'"
)

# ---------------------------------------------------------------- run folders


def write_run(
    run_dir: Path,
    weights: dict[str, Sequence[float]],
    *,
    val: Sequence[dict[str, float]] = (),
    best_epoch: int | None = None,
    method: str = "auto-lambda",
    benchmark: str = "toy",
) -> Path:
    """A run folder with one step line per weight (steps 1, 2, …), one epoch line per
    ``val`` entry (``{"task/metric": value}``), and ``results.json`` when ``best_epoch``."""
    run_dir.mkdir(parents=True)
    tasks = list(weights)
    config = {"benchmark": benchmark, "method": method, "seed": 0, "tasks": tasks, "epochs": len(val)}
    (run_dir / "config.json").write_text(json.dumps(config))
    steps = len(next(iter(weights.values())))
    lines = [
        {"step": i + 1, "epoch": 1, "batch": i + 1, "lr": 0.1,
         **{f"loss/{t}": 1.0 for t in tasks}, **{f"weight/{t}": float(weights[t][i]) for t in tasks}, "seconds": 0.01}
        for i in range(steps)
    ]
    (run_dir / "steps.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    if val:
        epochs = [{"epoch": e + 1, "step": steps, **{f"val/{k}": v for k, v in values.items()}}
                  for e, values in enumerate(val)]
        (run_dir / "epochs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in epochs))
    if best_epoch is not None:
        results = {"benchmark": benchmark, "method": method, "seed": 0, "best_epoch": best_epoch, "delta_mtl": None}
        (run_dir / "results.json").write_text(json.dumps(results))
    return run_dir


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels from a PNG's IHDR chunk."""
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


def solid_lines(axes):
    """The data lines of a weights panel that are drawn fully opaque (not the faint raw ones)."""
    return [line for line in axes.get_lines() if line.get_alpha() is None]


# ---------------------------------------------------------------- plots


@needs_matplotlib
def test_plot_run_writes_both_pngs_at_the_figure_size(tmp_path):
    run = write_run(
        tmp_path / "run",
        {"a": [0.1, 0.2, 0.3], "b": [1.0, 0.9, 0.8]},
        val=[{"a/accuracy": 0.5, "a/auc": 0.6, "b/mae": 2.0, "b/rmse": 3.0}] * 2,
        best_epoch=2,
    )
    written = plot_run(run)
    assert written == [run / "plots" / "weights.png", run / "plots" / "metrics.png"]
    assert png_size(written[0]) == (round(9.0 * DPI), round(4.5 * DPI))
    assert png_size(written[1]) == (round(2 * 3.8 * DPI), round((2 * 2.8 + 0.6) * DPI))  # 4 panels: 2 × 2


@needs_matplotlib
def test_weights_figure_draws_the_logged_weights_one_line_per_task(tmp_path):
    weights = {"seg": [0.1, 0.2, 0.4], "depth": [0.5, 0.5, 0.6], "noise": [0.3, 0.2, 0.1]}
    figure = weights_figure(write_run(tmp_path / "run", weights, method="hydalearn", benchmark="nyuv2"))
    (axes,) = figure.axes
    lines = solid_lines(axes)
    assert len(lines) == 3
    for line, values in zip(lines, weights.values()):
        assert list(line.get_xdata()) == [1, 2, 3]
        assert list(line.get_ydata()) == values
    assert len({line.get_color() for line in lines}) == 3
    assert [text.get_text() for text in axes.get_legend().get_texts()] == ["seg", "depth", "noise"]
    title = figure.get_suptitle()
    assert "hydalearn" in title and "nyuv2" in title
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("step", "task weight")


@needs_matplotlib
def test_smoothing_draws_a_trailing_mean_over_the_faint_raw_weights(tmp_path):
    figure = weights_figure(write_run(tmp_path / "run", {"a": [1.0, 2.0, 3.0, 4.0, 5.0]}), smooth=3)
    (axes,) = figure.axes
    raw, smoothed = axes.get_lines()
    assert raw.get_alpha() < 0.5 and smoothed.get_alpha() is None
    assert list(raw.get_ydata()) == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert list(smoothed.get_ydata()) == pytest.approx([1.0, 1.5, 2.0, 3.0, 4.0])
    assert "moving average over 3 steps" in figure.get_suptitle()


@needs_matplotlib
@pytest.mark.parametrize(
    ("weights", "scale"),
    [
        ({"a": [1.0, 1.0, 1.0], "b": [0.001, 0.002, 0.001]}, "log"),  # b would sit flat on 0
        ({"a": [0.5, 1.0, 1.5], "b": [0.9, 1.2, 1.1]}, "linear"),
        ({"a": [1.0, 1.0, 1.0], "b": [0.0, 0.001, 0.001]}, "linear"),  # a zero cannot be drawn on a log axis
        ({"a": [1.0, 0.0001, 1.0, 1.0], "b": [1.0, 1.0, 1.0, 1.0]}, "linear"),  # one dip (RLW) is no reason
    ],
)
def test_log_scale_only_when_the_weights_span_orders_of_magnitude(tmp_path, weights, scale):
    (axes,) = weights_figure(write_run(tmp_path / "run", weights)).axes
    assert axes.get_yscale() == scale


@needs_matplotlib
def test_skipped_batches_and_a_line_being_written_are_left_out(tmp_path):
    run = write_run(tmp_path / "run", {"a": [0.1, 0.2, 0.3]})
    with (run / "steps.jsonl").open("a") as log:
        log.write(json.dumps({"step": 4, "epoch": 1, "batch": 4, "skipped": True, "error": "nan loss"}) + "\n")
        log.write(json.dumps({"step": 5, "epoch": 1, "batch": 5, "weight/a": 0.5}) + "\n")
        log.write('{"step": 6, "epoch": 1, "weig')
    (axes,) = weights_figure(run).axes
    (line,) = axes.get_lines()
    assert list(line.get_xdata()) == [1, 2, 3, 5]
    assert list(line.get_ydata()) == [0.1, 0.2, 0.3, 0.5]


@needs_matplotlib
def test_metrics_figure_has_a_panel_per_task_metric_and_marks_the_selected_epoch(tmp_path):
    val = [{"a/accuracy": 0.5, "b/mae": 2.0, "b/rmse": 3.0}, {"a/accuracy": 0.7, "b/mae": 1.5, "b/rmse": 2.5}]
    figure = metrics_figure(write_run(tmp_path / "run", {"a": [1.0], "b": [1.0]}, val=val, best_epoch=2))
    assert [axes.get_title() for axes in figure.axes] == ["a · accuracy", "b · mae", "b · rmse"]
    curve, selected = figure.axes[1].get_lines()
    assert list(curve.get_xdata()) == [1, 2] and list(curve.get_ydata()) == [2.0, 1.5]
    assert list(selected.get_xdata()) == [2, 2]
    assert "epoch 2" in figure.get_suptitle()


@needs_matplotlib
def test_a_live_run_gets_no_selected_epoch_and_no_metrics_before_its_first_epoch(tmp_path):
    live = write_run(tmp_path / "live", {"a": [1.0]}, val=[{"a/accuracy": 0.5}])
    assert [len(axes.get_lines()) for axes in metrics_figure(live).axes] == [1]
    starting = write_run(tmp_path / "starting", {"a": [1.0], "b": [0.5]})
    assert metrics_figure(starting) is None
    assert plot_run(starting) == [starting / "plots" / "weights.png"]


@needs_matplotlib
def test_weights_comparison_has_a_panel_per_method_with_shared_task_colours(tmp_path):
    runs = {
        "Auto-Lambda": write_run(tmp_path / "al", {"a": [0.1, 0.2], "b": [0.1, 0.3]}),
        "DWA": write_run(tmp_path / "dwa", {"a": [1.0, 1.1], "b": [1.0, 0.9]}, method="dwa"),
        "RLW": write_run(tmp_path / "rlw", {"a": [0.7, 1.3], "b": [1.3, 0.7]}, method="rlw"),
    }
    figure = weights_comparison_figure(runs)
    assert [axes.get_title() for axes in figure.axes] == ["Auto-Lambda", "DWA", "RLW"]
    colours = [[line.get_color() for line in solid_lines(axes)] for axes in figure.axes]
    assert colours[0] == colours[1] == colours[2] and colours[0][0] != colours[0][1]
    assert "toy, seed 0" in figure.get_suptitle()
    out = plot_weights_comparison(runs, tmp_path / "compare" / "weights.png")
    assert out == tmp_path / "compare" / "weights.png"
    assert png_size(out) == (round((3 * 4.2 + 1.6) * DPI), round((3.0 + 0.6) * DPI))


@needs_matplotlib
def test_runs_with_constant_weights_are_named_under_the_comparison_instead_of_drawn(tmp_path):
    runs = {
        "DWA": write_run(tmp_path / "dwa", {"a": [1.0, 1.1], "b": [1.0, 0.9]}, method="dwa"),
        "Equal": write_run(tmp_path / "eq", {"a": [1.0, 1.0], "b": [1.0, 1.0]}, method="equal"),
        "Static": write_run(tmp_path / "st", {"a": [1.0, 1.0], "b": [0.5, 0.5]}, method="static"),
        "PCGrad": write_run(tmp_path / "pc", {"a": [1.0, 1.0], "b": [1.0, 1.0]}, method="pcgrad"),
    }
    figure = weights_comparison_figure(runs)
    assert [axes.get_title() for axes in figure.axes] == ["DWA"]
    assert figure.get_supxlabel().replace("\n", " ") == (
        "constant over training, not drawn — Equal, PCGrad: 1 for every task; Static: a 1, b 0.5"
    )
    only_constant = weights_comparison_figure({"Equal": runs["Equal"]})
    assert [axes.get_title() for axes in only_constant.axes] == ["Equal"] and only_constant.get_supxlabel() == ""


@needs_matplotlib
def test_plot_errors_name_the_fix(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="not a dynamtl run folder"):
        plot_run(tmp_path)
    stl = tmp_path / "stl"
    (stl / "tasks" / "a").mkdir(parents=True)
    (stl / "config.json").write_text(json.dumps({"benchmark": "toy", "method": "stl", "seed": 0}))
    with pytest.raises(FileNotFoundError, match="per-task runs under"):
        plot_run(stl)
    run = write_run(tmp_path / "run", {"a": [1.0]})
    with pytest.raises(ValueError, match="smooth"):
        weights_figure(run, smooth=0)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'dynamtl\[report\]'"):
        weights_figure(run)


# ---------------------------------------------------------------- tables


def result(method: str, seed: int, test: dict, delta: float | None = None, benchmark: str = "toy") -> dict:
    return {"benchmark": benchmark, "method": method, "seed": seed, "test": test, "val": {}, "delta_mtl": delta}


def markdown_rows(markdown: str) -> dict[str, list[str]]:
    """Method -> its cells (seeds first), from the Markdown table."""
    lines = markdown.splitlines()
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}


def csv_rows(text: str) -> dict[str, dict[str, str]]:
    return {row["method"]: row for row in csv.DictReader(io.StringIO(text))}


METRICS = {"a": [ACCURACY], "b": [MAE]}


def test_cells_are_mean_and_sample_std_over_seeds_in_the_given_order():
    results = [
        result("uncertainty", 0, {"a": {"accuracy": 0.70}, "b": {"mae": 2.0}}),
        result("equal", 0, {"a": {"accuracy": 0.80}, "b": {"mae": 1.2}}),
        result("equal", 1, {"a": {"accuracy": 0.90}, "b": {"mae": 1.0}}),
        result("equal", 2, {"a": {"accuracy": 0.85}, "b": {"mae": 1.1}}),
    ]
    markdown, text = compare_table(results, METRICS)
    header = [c.strip() for c in markdown.splitlines()[0].strip("|").split("|")]
    assert header == ["method", "seeds", "a/accuracy ↑", "b/mae ↓"]  # no Δ_MTL: none given
    rows = markdown_rows(markdown)
    assert list(rows) == ["uncertainty", "equal"]
    assert rows["uncertainty"] == ["1", "0.7000", "2.0000"]
    assert rows["equal"] == ["3", "**0.8500 ± 0.0500**", "**1.1000 ± 0.1000**"]
    row = csv_rows(text)["equal"]
    assert int(row["seeds"]) == 3
    assert float(row["a/accuracy mean"]) == pytest.approx(0.85)
    assert float(row["a/accuracy std"]) == pytest.approx(statistics.stdev([0.80, 0.90, 0.85]))
    assert csv_rows(text)["uncertainty"]["b/mae std"] == ""  # one seed: no std


def test_the_best_cell_follows_each_metrics_direction():
    results = [
        result("dwa", 0, {"a": {"accuracy": 0.90}, "b": {"mae": 3.0}}, delta=-1.0),
        result("famo", 0, {"a": {"accuracy": 0.80}, "b": {"mae": 1.0}}, delta=0.5),
        result("rlw", 0, {"a": {"accuracy": 0.85}, "b": {"mae": 2.0}}, delta=-0.25),
    ]
    rows = markdown_rows(compare_table(results, METRICS, decimals=2)[0])
    assert rows["dwa"] == ["1", "**0.90**", "3.00", "-1.00"]  # higher accuracy is better
    assert rows["famo"] == ["1", "0.80", "**1.00**", "**+0.50**"]  # lower mae, higher Δ_MTL
    assert rows["rlw"] == ["1", "0.85", "2.00", "-0.25"]


def test_ties_after_rounding_are_all_bold():
    results = [result("x", 0, {"a": {"accuracy": 0.90001}}), result("y", 0, {"a": {"accuracy": 0.89999}})]
    rows = markdown_rows(compare_table(results, {"a": [ACCURACY]})[0])
    assert rows["x"][1] == rows["y"][1] == "**0.9000**"


def test_delta_mtl_column_shows_mean_and_std_of_the_runs_values():
    single_task = {"a": {"accuracy": 0.8}, "b": {"mae": 2.0}}
    tests = [{"a": {"accuracy": 0.9}, "b": {"mae": 1.0}}, {"a": {"accuracy": 0.8}, "b": {"mae": 2.0}}]
    deltas = [delta_mtl(test, single_task, METRICS) for test in tests]
    assert deltas == [31.25, 0.0]
    results = [result("auto-lambda", seed, test, delta) for seed, (test, delta) in enumerate(zip(tests, deltas))]
    results.append(result("stl", 0, single_task))  # the baseline has no Δ_MTL of its own
    markdown, text = compare_table(results, METRICS)
    assert markdown.splitlines()[0].rstrip(" |").endswith("Δ_MTL (%) ↑")
    rows = markdown_rows(markdown)
    assert rows["auto-lambda"][-1] == f"**+15.62 ± {statistics.stdev(deltas):.2f}**"  # 15.625 rounds to even
    assert rows["stl"][-1] == "–"
    assert float(csv_rows(text)["auto-lambda"]["delta_mtl mean"]) == 15.625
    assert csv_rows(text)["stl"]["delta_mtl mean"] == ""


def test_split_chooses_the_results_read():
    run = result("equal", 0, {"a": {"accuracy": 0.5}})
    run["val"] = {"a": {"accuracy": 0.75}}
    assert markdown_rows(compare_table([run], {"a": [ACCURACY]}, split="val")[0])["equal"][1] == "**0.7500**"
    with pytest.raises(ValueError, match="split="):
        compare_table([run], {"a": [ACCURACY]}, split="train")


@pytest.mark.parametrize(
    ("results", "message"),
    [
        ([result("x", 0, {}, benchmark="census"), result("x", 1, {}, benchmark="drift")], "one table per benchmark"),
        ([result("x", 0, {"a": {"accuracy": 0.5}}), result("x", 0, {"a": {"accuracy": 0.6}})], "one run per seed"),
        ([result("x", 0, {"a": {"accuracy": 0.5}}), result("x", 1, {})], r"not for seeds \[1\]"),
        ([result("x", 0, {"a": {"accuracy": 0.5}}, delta=1.0), result("x", 1, {"a": {"accuracy": 0.5}})],
         r"Δ_MTL \(%\) for some seeds"),
        ([], "at least one result"),
    ],
)
def test_table_errors_name_the_fix(results, message):
    with pytest.raises(ValueError, match=message):
        compare_table(results, {"a": [ACCURACY]})


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@needs_matplotlib
@pytest.mark.parametrize(
    ("method", "weights"),
    [
        ("upgrad", {"income": [1.0] * 3, "marital": [1.0] * 3, "education": [1.0] * 3}),
        ("excess-mtl+cr-mogm", {"income": [0.9, 1.1, 1.0], "marital_status_long": [1.0, 0.8, 1.2],
                                "education": [1.0, 1.0, 0.7]}),
    ],
)
def test_the_weights_title_and_legend_do_not_overlap(tmp_path, method, weights):
    """A constant-weight run (an aggregation alone) labels its legend with every task: the
    figure title must not run under that legend (it did: "… (constant over training)")."""
    import matplotlib.backends.backend_agg as agg

    figure = weights_figure(write_run(tmp_path / "run", weights, method=method, benchmark="census"))
    renderer = agg.FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    title = figure._suptitle.get_window_extent(renderer)
    every = figure.legends + [a.get_legend() for a in figure.axes if a.get_legend()]
    legends = [legend.get_window_extent(renderer) for legend in every]
    assert legends and not any(_overlap(title, legend) for legend in legends)
