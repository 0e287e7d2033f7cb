"""Every problem of a command line is reported at once (exit status 2), with a fix for each:
the values click itself refuses (a wrong type, a choice not offered, a number out of range,
a missing path, an unknown option, an option without its value, an extra argument) are
listed together with the command's own problems (unknown names, bad ``--option`` values,
mode requirements), and nothing is started. The bad values are made for every typed
parameter of every command, read from the commands themselves, so that a parameter added
later is covered too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from dynamtl.cli import main

COMMANDS = ("train", "compare", "resume", "plot")
PROJECT_PROBLEM = {  # one problem that only the command's own checks can find, and how it is reported
    "train": (["--benchmark", "drift", "--method", "nosuch"], "unknown method 'nosuch'"),
    "compare": (["--benchmark", "drift", "--methods", "equal,nosuch"], "nosuch: unknown method 'nosuch'"),
    "resume": (["/nonexistent/run"], "no folder /nonexistent/run"),
    "plot": (["extra"], "unexpected argument 'extra'"),  # after RUN_DIR, refused below
}
ARGUMENTS_REFUSED = {"plot"}
"""The commands whose arguments (not only options) are given refused values below."""


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def problems(output: str) -> list[str]:
    return [line[4:] for line in output.splitlines() if line.startswith("  - ")]


def bad_value(param: click.Parameter, tmp_path: Path) -> str | None:
    """A value click refuses for ``param`` (``None``: it refuses none, e.g. free text)."""
    kind = param.type
    if isinstance(kind, click.Choice):
        return "nosuch-choice"
    if isinstance(kind, click.IntRange):
        assert kind.min is not None
        return str(kind.min - 1)
    if kind in (click.INT, click.FLOAT):
        return "abc"
    if isinstance(kind, click.Path):
        if kind.exists:
            return str(tmp_path / "missing")
        if not kind.dir_okay:
            return str(tmp_path)  # a folder where a file is wanted
        file = tmp_path / "a-file"
        file.write_text("")
        return str(file)  # a file where a folder is wanted
    return None


def refusable(command: str, tmp_path: Path) -> list[tuple[click.Parameter, list[str]]]:
    """Every option of ``command`` that click can refuse, with the tokens that make it do so."""
    params = []
    for param in main.commands[command].params:
        value = bad_value(param, tmp_path)
        if isinstance(param, click.Option) and not param.is_flag and value is not None:
            params.append((param, [param.opts[0], value]))
        elif isinstance(param, click.Argument) and command in ARGUMENTS_REFUSED and value is not None:
            params.append((param, [value]))
    return params


def cases(tmp_path: Path) -> list[tuple[str, click.Parameter, list[str]]]:
    return [(command, param, tokens) for command in COMMANDS for param, tokens in refusable(command, tmp_path)]


def test_every_refusable_option_is_covered(tmp_path):
    names = {(command, param.name) for command, param, _ in cases(tmp_path)}
    # the kinds of refusal present today: ints, floats, ranges, choices, paths, on every command that has them
    assert {("train", "epochs"), ("train", "lr"), ("train", "mode"), ("train", "config_file"), ("train", "out"),
            ("compare", "jobs"), ("compare", "engine"), ("compare", "limit"), ("resume", "which")} <= names
    assert len(names) >= 2 * 19


@pytest.mark.parametrize("command", COMMANDS)
def test_a_refused_value_is_listed_with_the_commands_own_problem(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base, expected = PROJECT_PROBLEM[command]
    for param, tokens in refusable(command, tmp_path):
        code, output = invoke(command, *tokens, *base)
        assert code == 2, output
        listed = problems(output)
        assert len(listed) == 2, (tokens, output)
        flag = param.opts[0] if isinstance(param, click.Option) else param.human_readable_name
        refused = next(line for line in listed if flag in line)
        assert ("give " in refused or "choose one of " in refused), refused  # with the fix
        assert any(expected in line for line in listed), (tokens, output)
        assert output.startswith(f"Usage: main {command}")


@pytest.mark.parametrize("command", COMMANDS)
def test_all_refused_values_of_a_command_at_once(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base, expected = PROJECT_PROBLEM[command]
    refused = refusable(command, tmp_path)
    code, output = invoke(command, *[token for _, tokens in refused for token in tokens], *base)
    assert code == 2
    listed = problems(output)
    assert len(listed) == len(refused) + 1, output
    for param, _ in refused:
        flag = param.opts[0] if isinstance(param, click.Option) else param.human_readable_name
        assert any(flag in line for line in listed), (flag, output)
    assert any(expected in line for line in listed)


def test_the_issues_combination_and_nothing_is_started(tmp_path):
    out = tmp_path / "run"
    code, output = invoke("train", "--benchmark", "drift", "--epochs", "abc", "--method", "nosuch", "--option",
                          "lr=abc", "--out", str(out))
    assert code == 2
    assert problems(output)[:2] == [
        "Invalid value for '--epochs': 'abc' is not a valid integer: give an integer (e.g. --epochs 3)",
        problems(output)[1],
    ] and problems(output)[1].startswith("unknown method 'nosuch'; valid names: equal,")
    assert not out.exists()
    # with a known method, the option's value is checked too, beside click's refusal and a missing mode
    code, output = invoke("train", "--benchmark", "drift", "--epochs", "abc", "--method", "gcs", "--option",
                          "lr=abc", "--tasks", "main,foo", "--precision", "64", "--out", str(out))
    assert code == 2
    listed = problems(output)
    assert len(listed) == 5, output
    for part in ("'--epochs': 'abc'", "'--precision': '64' is not one of '32', 'bf16', 'fp16': choose one of",
                 "unknown selected task(s) ['foo']", "'gcs' weighs auxiliary tasks against primary ones: run it "
                 "with --mode auxiliary"):
        assert any(part in line for line in listed), (part, output)
    assert not out.exists()


def test_compare_lists_every_problem_once_and_starts_nothing(tmp_path):
    out = tmp_path / "cmp"
    code, output = invoke("compare", "--benchmark", "drift", "--epochs", "0", "--methods", "gcs,nosuch,auto-lambda",
                          "--option", "lr=abc", "--jobs", "-1", "--seeds", "0,x", "--engine", "foo", "--out", str(out))
    assert code == 2
    listed = problems(output)
    assert listed.count("epochs must be >= 1, got 0") == 1  # a setting every row shares: once, not per method
    for part in ("'--jobs': -1 is not in the range x>=1: give an integer x>=1", "'--engine': 'foo' is not one of",
                 "--seeds takes a comma-separated list of ints", "gcs: 'gcs' weighs auxiliary tasks",
                 "nosuch: unknown method 'nosuch'", "auto-lambda: option 'lr' of 'auto-lambda' expects a number"):
        assert any(part in line for line in listed), (part, output)
    assert len(listed) == 7, output
    assert not out.exists()


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        (["--epoch", "3"], "no such option --epoch (in '--epoch 3'): did you mean --epochs"),
        (["--epoch=3"], "no such option --epoch (in '--epoch=3'): did you mean --epochs"),
        (["--quiet=1"], "--quiet is a flag and takes no value (in '--quiet=1'): give --quiet alone"),
        (["stray"], "unexpected argument 'stray': `main train` takes no arguments"),
        (["--lr"], "--lr needs a value (in '--lr'): give a number (e.g. --lr 0.01)"),  # the last token
    ],
)
def test_command_line_syntax_problems_are_listed_with_the_others(tokens, expected, tmp_path):
    code, output = invoke("train", "--benchmark", "drift", "--method", "nosuch", "--batch-size", "x",
                          "--out", str(tmp_path / "run"), *tokens)
    assert code == 2
    listed = problems(output)
    assert any(line.startswith(expected) for line in listed), output
    assert any("unknown method 'nosuch'" in line for line in listed)
    assert any("'--batch-size': 'x' is not a valid integer" in line for line in listed)
    assert len(listed) == 3


def test_a_missing_argument_is_listed_with_a_refused_option():
    code, output = invoke("resume", "--checkpoint", "x")
    assert code == 2
    assert problems(output) == [
        "Invalid value for '--checkpoint': 'x' is not one of 'last', 'previous': choose one of last, previous "
        "(e.g. --checkpoint last)",
        "Missing argument 'RUN_DIR': give the path of a folder",
    ]


def test_a_config_files_bad_values_do_not_hide_the_flags_problems(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('benchmark = "drift"\nepochs = "abc"\nmode = "sideways"\n[options]\nlr = "x"\n')
    code, output = invoke("train", "--config", str(config), "--method", "auto-lambda", "--lr", "nan?",
                          "--out", str(tmp_path / "run"))
    assert code == 2
    listed = problems(output)
    for part in ("'--lr': 'nan?' is not a valid float", "epochs expects an integer, got 'abc'",
                 "mode must be one of ['multi-task', 'auxiliary'], got 'sideways'",
                 "option 'lr' of 'auto-lambda' expects a number, got 'x'"):
        assert any(part in line for line in listed), (part, output)
    config.write_text("benchmark = [")
    code, output = invoke("train", "--config", str(config), "--benchmark", "drift", "--method", "nosuch",
                          "--option", "novalue")
    listed = problems(output)
    assert code == 2 and len(listed) == 3
    assert any("is not valid TOML" in line for line in listed)
    assert "--option takes NAME=VALUE (e.g. --option lr=3e-4), got 'novalue'" in listed


def test_list_refuses_arguments_and_errors_while_running_keep_status_1(tmp_path):
    code, output = invoke("list", "extra")
    assert code == 2 and "unexpected argument 'extra': `main list` takes no arguments" in output
    assert "Benchmarks:" not in output  # reported before anything is printed
    folder = tmp_path / "not-a-run"
    folder.mkdir()
    code, output = invoke("resume", str(folder))  # the command line is right; the folder is not a run
    assert code == 1 and "config.json is missing" in output


def test_through_the_installed_command(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "dynamtl.cli", "train", "--benchmark", "drift", "--epochs", "abc", "--method",
         "auto-lambda", "--option", "lr=abc", "--option", "epsilon=xyz", "--jobs", "3"],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    listed = problems(result.stderr)
    assert len(listed) == 4, result.stderr
    assert "no such option --jobs (in '--jobs 3')" in listed[0]
    assert not (tmp_path / "runs").exists()
