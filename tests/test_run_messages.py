"""Messages that lead somewhere: every problem of a command line at once, a finished run
that says what can be done with it, the documented command pairs that work, and a command
that says what it is doing (which run of a comparison, the version, plots titled by what
they show)."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist
from click.testing import CliRunner

import dynamtl
from dynamtl.cli import main

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
DOCS = Path(__file__).resolve().parent.parent / "docs"
TINY = ["--benchmark", "drift", "--limit", "128", "--batch-size", "64", "--epochs", "1"]
needs_matplotlib = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="plots need matplotlib")


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dynamtl.cli", *args], env=ENV, capture_output=True, text=True,
                          timeout=600, check=False, cwd=cwd)


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


# --- every problem at once -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--benchmark", "drift", "--method", "auto-lambda", "--option", "lr=abc", "--option", "epsilon=xyz",
          "--epochs", "0"],
         ["epochs must be >= 1, got 0", "option 'lr' of 'auto-lambda' expects a number, got 'abc'",
          "option 'epsilon' of 'auto-lambda' expects a number, got 'xyz'"]),
        (["--benchmark", "census", "--method", "gcs", "--option", "lr=abc", "--tasks", "income,foo"],
         ["unknown selected task(s) ['foo']", "no part of the method takes option 'lr'",
          "'gcs' weighs auxiliary tasks against primary ones: run it with --mode auxiliary"]),
        (["--benchmark", "drfit", "--method", "auto-lamda", "--lr", "-1"],
         ["unknown benchmark 'drfit'", "unknown method 'auto-lamda'", "lr must be > 0, got -1.0"]),
        (["--benchmark", "drift", "--method", "auto-lambda+cagrad", "--option", "c=x", "--option", "init=y",
          "--option", "nope=1"],
         ["option 'c' of 'cagrad' expects a number", "option 'init' of 'auto-lambda' expects a number",
          "no part of the method takes option 'nope'"]),
    ],
)
def test_every_problem_of_a_command_line_is_listed_at_once(args, expected, tmp_path):
    code, output = invoke("train", *args, "--quiet", "--out", str(tmp_path / "run"))
    assert code == 2
    problems = [line for line in output.splitlines() if line.startswith("  - ")]
    assert len(problems) == len(expected), output
    for wanted in expected:
        assert wanted in output
    assert not (tmp_path / "run").exists()


# --- a finished run ---------------------------------------------------------------------------


def test_a_finished_run_says_how_to_go_on_and_resume_reports_its_results(tmp_path):
    run = tmp_path / "run"
    assert cli("train", *TINY, "--quiet", "--out", str(run)).returncode == 0
    results = (run / "results.json").read_text()

    again = cli("train", *TINY, "--quiet", "--out", str(run))
    assert again.returncode == 1
    assert f"{run} holds a finished run" in again.stderr and "another --out" in again.stderr
    assert f"delete {run} to train it anew" in again.stderr and "more --epochs" in again.stderr
    assert "dynamtl resume" not in again.stderr  # it would lead nowhere

    resumed = cli("resume", str(run), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert f"the run in {run} has finished: nothing to resume" in resumed.stderr
    assert "to train longer, start a new run with more --epochs in another --out" in resumed.stderr
    assert "test metrics:" in resumed.stdout
    assert (run / "results.json").read_text() == results


def test_train_into_an_unfinished_run_leads_to_resume(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    code, output = invoke("train", *TINY, "--quiet", "--out", str(run))
    assert code == 1 and f"continue it with `dynamtl resume {run}`" in output


SCRIPT = shutil.which("dynamtl", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(SCRIPT is None, reason="needs the dynamtl console script (pip install -e .)")
def test_a_suggested_command_is_spelt_as_the_command_was_typed(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    for typed, spelt in (([str(SCRIPT)], "dynamtl"), ([sys.executable, "-m", "dynamtl.cli"],
                                                      f"{sys.executable} -m dynamtl.cli")):
        result = subprocess.run([*typed, "train", *TINY, "--quiet", "--out", str(run)], env=ENV, capture_output=True,
                                text=True, timeout=600, check=False)
        assert result.returncode == 1 and f"continue it with `{spelt} resume {run}`" in result.stderr, result.stderr


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo")
def test_the_pair_of_commands_of_distributed_md_passes(tmp_path):
    """The two command lines of docs/distributed.md, as written, but for a free rendezvous
    port and a smaller run (the documented one takes minutes here)."""
    lines = [line for line in (DOCS / "distributed.md").read_text().splitlines()
             if line.startswith("OMP_NUM_THREADS=1 torchrun") and "dynamtl.cli" in line]
    assert [line.split()[5] for line in lines] == ["train", "resume"]
    for line in lines:
        words = line.split()[1:]  # without OMP_NUM_THREADS=1, which ENV sets
        assert words[:3] == ["torchrun", "--nproc_per_node=2", "-m"]
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--rdzv-backend=c10d",
                   "--rdzv-endpoint=localhost:0", *words[2:]]
        if words[4] == "train":
            command += ["--limit", "256", "--epochs", "1", "--quiet"]
        done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600, check=False,
                              cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.count("test metrics:") == 1
    assert (tmp_path / "runs" / "ddp" / "results.json").is_file()


# --- say what is happening -------------------------------------------------------------------


def test_version():
    code, output = invoke("--version")
    assert code == 0 and output.strip() == f"dynamtl {dynamtl.__version__}"


def test_compare_names_the_method_seed_and_position_of_every_run(tmp_path):
    out = tmp_path / "comparison"
    result = cli("compare", *TINY, "--mode", "auxiliary", "--methods", "equal,dwa", "--seeds", "0,1", "--jobs", "1",
                 "--out", str(out))
    assert result.returncode == 0, result.stderr
    text = result.stdout + result.stderr
    epoch_lines = [line for line in text.splitlines() if re.search(r"epoch \d+/\d+: val", line)]
    assert epoch_lines, text
    assert all(re.match(r"\[\d/6\] \S+ seed \d( \S+)? epoch 1/1: val", line) for line in epoch_lines), epoch_lines
    for position, name in enumerate(["stl seed 0", "equal seed 0", "dwa seed 0", "stl seed 1", "equal seed 1",
                                     "dwa seed 1"], start=1):
        assert any(line.startswith(f"[{position}/6] {name}") for line in epoch_lines), (position, name, epoch_lines)


@needs_matplotlib
def test_plots_of_a_single_task_baseline_and_of_constant_weights_show_what_they_are(tmp_path):
    from dynamtl.report.plots import metrics_figure, plot_run, weights_figure

    stl, equal = tmp_path / "stl", tmp_path / "equal"
    assert cli("train", *TINY, "--mode", "auxiliary", "--noise-task", "--method", "equal", "--quiet",
               "--out", str(equal)).returncode == 0
    assert cli("train", *TINY, "--mode", "auxiliary", "--method", "stl", "--quiet", "--out", str(stl)).returncode == 0

    task_run = stl / "tasks" / "main"
    assert plot_run(task_run) == [task_run / "plots" / "metrics.png"]  # no flat weights plot of one task
    title = metrics_figure(task_run)._suptitle.get_text()
    assert "single-task baseline of main on drift, seed 0" in title and "equal" not in title

    figure = weights_figure(equal)
    lines = figure.axes[0].get_lines()
    assert len(lines) == 1  # three tasks of weight 1: one line, not three drawn over each other
    assert [t.get_text() for t in figure.axes[0].get_legend().get_texts()] == ["main, aux, noise: 1"]
    assert "constant over training" in figure._suptitle.get_text()


@needs_matplotlib
def test_plot_of_a_comparison_redraws_its_figures(tmp_path):
    out = tmp_path / "comparison"
    assert cli("compare", *TINY, "--quiet", "--mode", "auxiliary", "--methods", "equal,dwa", "--out",
               str(out)).returncode == 0
    figure = out / "plots" / "weights_seed0.png"
    figure.unlink()
    code, output = invoke("plot", str(out))
    assert code == 0 and str(figure) in output.split()
    assert figure.is_file()


def test_preparing_data_shows_progress(tmp_path):
    """A data cache that must be built says so, naming the file (its builder's progress
    bar, e.g. Census's reading of its CSV files, follows)."""
    from dynamtl.data._files import load_or_build

    script = ("from pathlib import Path; import torch; from dynamtl.data._files import load_or_build; "
              f"load_or_build(Path({str(tmp_path / 'c.pt')!r}), {{'v': 1}}, lambda: {{'x': torch.zeros(2)}})")
    result = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert f"preparing {tmp_path / 'c.pt'} (done once" in result.stderr
    assert load_or_build(tmp_path / "c.pt", {"v": 1}, lambda: pytest.fail("rebuilt"))["x"].shape == (2,)


# --- messages are well formed ----------------------------------------------------------------

SAYS = ("warning", "info", "error", "echo", "append", "ClickException", "BadParameter", "UsageError")
INTERVAL = re.compile(r"[\[(][^\[\]()]*,[^\[\]()]*[\])]")  # [0, 1), (0, 1]: half-open intervals


def _literal(node: ast.AST) -> str | None:
    """The text of a string, an f-string (its fields as ``{}``) or a sum of them."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _literal(node.left), _literal(node.right)
        if left is not None or right is not None:
            return (left or "{}") + (right or "{}")
    return None


def _messages() -> list[tuple[str, str]]:
    """``(where, text)`` of every string the package gives an exception, a logger, ``click.echo``
    or a list of problems."""
    found = []
    for path in sorted(Path(dynamtl.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if called in SAYS or called.endswith(("Error", "Exception", "Stopped", "Failed")):
                found += [(f"{path.name}:{node.lineno}", text) for arg in node.args if (text := _literal(arg))]
    return found


def test_every_message_closes_the_brackets_it_opens():
    messages = _messages()
    assert len(messages) > 300  # the scan sees the package's messages
    unbalanced = []
    for where, text in messages:
        depth = {"(": 0, "[": 0}
        for char in INTERVAL.sub("", text):
            if char in "([":
                depth[char] += 1
            elif char in ")]":
                depth["(" if char == ")" else "["] -= 1
                if min(depth.values()) < 0:
                    break
        if any(depth.values()):
            unbalanced.append(f"{where}: {text!r}")
    assert not unbalanced, "\n".join(unbalanced)
