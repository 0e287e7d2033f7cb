"""CR-MOGM around any per-batch aggregation from the command line (issue #15): the wrapped
aggregation is chosen by its registry name (``--option aggregation=upgrad``), checked when
the run is planned, recorded in ``config.json`` (so ``resume`` refuses a change) and shown
by ``repr``. Training runs in real subprocesses (``python -m dynamtl.cli``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import dynamtl as dm
from dynamtl.aggregation.cr_mogm import wrappable_names
from dynamtl.cli import main
from dynamtl.registry import AGGREGATIONS, MethodContext, parse_method
from dynamtl.train import RunConfig, TrainingStopped, resume, train
from dynamtl.train.checkpoint import CheckpointError

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SMALL = ["--limit", "2000", "--epochs", "1", "--quiet"]


def train_cli(out: Path, root: Path, *method: str) -> list[dict]:
    result = subprocess.run(
        [sys.executable, "-m", "dynamtl.cli", "train", "--benchmark", "census", "--root", str(root), *SMALL,
         *method, "--out", str(out)],
        check=False, env=ENV, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]


def alphas(step: dict) -> list[float]:
    return [step[f"aggregation_weight/{task}"] for task in ("income", "marital", "education")]


def test_cr_mogm_wraps_upgrad_from_the_command_line_as_the_python_composition(census_root, tmp_path):
    plain = train_cli(tmp_path / "upgrad", census_root, "--method", "upgrad")
    same = train_cli(tmp_path / "beta0", census_root, "--method", "cr-mogm", "--option", "aggregation=upgrad",
                     "--option", "beta=0")
    smoothed = train_cli(tmp_path / "beta08", census_root, "--method", "cr-mogm", "--option", "aggregation=upgrad",
                         "--option", "beta=0.8")
    mgda = train_cli(tmp_path / "mgda", census_root, "--method", "cr-mogm", "--option", "beta=0.8")
    assert len(plain) == len(same) == len(smoothed) >= 3
    for ours, theirs in zip(same, plain):  # β = 0: UPGrad's own weights, step by step
        assert alphas(ours) == pytest.approx(alphas(theirs), rel=1e-5, abs=1e-7)
    # α₁ = α̂₁, so the first update is UPGrad's and the second step sees UPGrad's second Jacobian:
    # α₂ = β α₁ + (1 − β) α̂₂, as CRMOGM(UPGrad(), beta=0.8) computes it in Python
    python = dm.CRMOGM(dm.UPGrad(), beta=0.8)
    assert alphas(smoothed[0]) == pytest.approx(alphas(plain[0]), rel=1e-5, abs=1e-7)
    first, second = (torch.tensor(alphas(s), dtype=torch.float64) for s in plain[:2])
    python._smoothed(first)  # the average CRMOGM keeps, fed UPGrad's weights of the two steps
    assert alphas(smoothed[1]) == pytest.approx(python._smoothed(second).tolist(), rel=1e-5, abs=1e-7)
    assert alphas(smoothed[1]) != pytest.approx(alphas(plain[1]), rel=1e-3)
    assert alphas(mgda[0]) != pytest.approx(alphas(smoothed[0]), rel=1e-3)  # the default is still MGDA
    saved = json.loads((tmp_path / "beta08" / "config.json").read_text())
    assert saved["method"] == "cr-mogm" and saved["options"] == {"aggregation": "upgrad", "beta": 0.8}
    assert json.loads((tmp_path / "mgda" / "config.json").read_text())["options"]["aggregation"] == "mgda"


def test_repr_shows_the_wrapped_aggregation():
    assert repr(dm.CRMOGM()).startswith("CRMOGM(aggregation=MGDA(") and "None" not in repr(dm.CRMOGM()).split(",")[0]
    by_name = dm.CRMOGM("upgrad", beta=0.8)
    assert repr(by_name) == "CRMOGM(aggregation=UPGrad(pref=None, reg_eps=0.0001, max_iters=100), beta=0.8, seed=0)"
    assert repr(by_name) == repr(dm.CRMOGM(dm.UPGrad(), beta=0.8))
    assert isinstance(by_name.aggregation, dm.UPGrad)
    built = parse_method("cr-mogm", {"aggregation": "pcgrad"}).build(MethodContext(("a", "b"), ("a", "b"), False, 0))[1]
    assert isinstance(built, dm.CRMOGM) and isinstance(built.aggregation, dm.PCGrad)


@pytest.mark.parametrize("name", ["pcgrad", "graddrop", "gradvac"])
def test_a_wrapped_aggregation_that_draws_random_numbers_takes_the_run_s_seed(name):
    """Seeds 0, 1 and 2 of a comparison must not share the wrapped aggregation's random draws."""
    built = [parse_method("cr-mogm", {"aggregation": name}).build(MethodContext(("a", "b"), ("a", "b"), False, seed))[1]
             for seed in (3, 4)]
    assert [repr(b.aggregation) for b in built] == [repr(AGGREGATIONS[name].factory(seed=s)) for s in (3, 4)]
    rows = torch.tensor([[1.0, -2.0, 0.5], [-1.0, 1.0, 2.0], [0.3, 0.2, -1.0]])
    draws = [torch.stack([b.combine(rows) for _ in range(8)]) for b in built]
    assert not torch.equal(*draws)


def test_the_wrappable_names_are_the_per_batch_gradient_aggregations():
    assert set(wrappable_names()) == {
        name for name, method in AGGREGATIONS.items()
        if name not in ("sum", "cr-mogm") and not method.factory.rows_across_batches
    }
    assert {"moco", "sdmgrad", "modo"} <= set(AGGREGATIONS) - set(wrappable_names())


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


@pytest.mark.parametrize(("name", "why"), [
    ("moco", "carries its weights (or gradients) across batches itself: run it alone (--method moco)"),
    ("sdmgrad", "carries its weights (or gradients) across batches itself: run it alone (--method sdmgrad)"),
    ("modo", "across batches itself"),
    ("sum", "nothing to smooth"),
    ("cr-mogm", "which is CR-MOGM itself"),
    ("famo", "which is a weighting, not a gradient aggregation: combine them as --method famo+cr-mogm"),
    ("upgard", "which is not the name of an aggregation"),
])
def test_a_name_that_cannot_be_wrapped_is_refused_when_the_run_is_planned(tmp_path, name, why):
    out = tmp_path / "run"
    code, output = invoke("train", "--benchmark", "drift", "--limit", "128", "--method", "cr-mogm",
                          "--option", f"aggregation={name}", "--option", "beta=2", "--out", str(out))
    assert code == 2 and not out.exists() and "Traceback" not in output
    allowed = ", ".join(wrappable_names())
    assert (f"CRMOGM's option aggregation names the gradient aggregation whose weights it smooths, one of "
            f"{allowed}; got {name!r}") in output
    assert why in output and "Give e.g. --option aggregation=upgrad" in output
    assert "CRMOGM's option beta must be in [0, 1], got 2" in output  # every wrong option at once


def test_a_config_file_variant_naming_a_cross_batch_aggregation_is_refused_before_anything_runs(tmp_path):
    config = tmp_path / "job.toml"
    config.write_text('methods = ["equal", "smoothed"]\ncontrols = false\n'
                      '[variants.smoothed]\nmethod = "cr-mogm"\naggregation = "moco"\n')
    out = tmp_path / "cmp"
    code, output = invoke("compare", "--config", str(config), "--benchmark", "drift", "--limit", "128",
                          "--epochs", "1", "--seeds", "0", "--quiet", "--out", str(out))
    assert code == 2 and "Traceback" not in output
    assert "got 'moco', which carries its weights (or gradients) across batches itself" in output
    assert not (out / "runs").exists()


def stopped_run(out: Path, aggregation: str) -> Path:
    """An unfinished run of CR-MOGM around ``aggregation``: SGD at an absurd learning rate
    stops it after a few steps, with a checkpoint after every step."""
    config = RunConfig(benchmark="drift", limit=256, batch_size=64, epochs=1, optimizer="sgd", lr=1e12,
                       checkpoint_every=1, method="cr-mogm", options={"aggregation": aggregation})
    with pytest.raises(TrainingStopped):
        train(config, out, progress=False)
    return out


def test_resume_keeps_the_wrapped_aggregation_and_refuses_a_change(tmp_path):
    run = stopped_run(tmp_path / "run", "upgrad")
    recorded = json.loads((run / "config.json").read_text())
    assert recorded["options"] == {"aggregation": "upgrad", "beta": 0.9}
    with pytest.raises(TrainingStopped):  # unchanged: resumes (and stops again at the same absurd step)
        resume(run, progress=False)
    recorded["options"]["aggregation"] = "dualproj"
    (run / "config.json").write_text(json.dumps(recorded))
    with pytest.raises(CheckpointError) as error:
        resume(run, progress=False)
    assert "options.aggregation: 'upgrad' before, 'dualproj' now" in str(error.value)
