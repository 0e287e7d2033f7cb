"""dynamtl inside a real ``lightning.Trainer`` (CPU): one process equals the plain MultiTask
loop step for step; two DDP processes (gloo, under torchrun) equal one process on the global
batch; weights reach the logger; the method's state is checkpointed with the module;
mixed precision runs through Lightning's precision plugins."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import dynamtl as dm

pytest.importorskip("lightning", reason="the Lightning integration needs pip install 'dynamtl[lightning]'")
import lightning.pytorch as pl

from dynamtl.lightning import MultiTaskModule
from tests import lightning_worker as worker

WORKER_PATH = Path(__file__).with_name("lightning_worker.py")


def plain_run(case: str, order: list[int] | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Parameters after every step and the weights of every step of the plain loop, one
    process, global batches (of the samples in ``order``)."""
    torch.manual_seed(0)
    model = worker.Net()
    mtl = dm.MultiTask(model, worker.tasks(), worker.optimizer(model.parameters()), **worker.CASES[case]())
    loaders = worker.loaders(worker.GLOBAL_BATCH, order)
    params, weights = [], []
    for batch, meta in zip(loaders["train"], loaders["meta"]):
        weights.append(mtl.step(batch, meta).weights)
        params.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    return params, weights


class Recorder(pl.Callback):
    """The flat parameters after every training step."""

    def __init__(self) -> None:
        self.params: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.params.append(torch.cat([p.detach().reshape(-1) for p in module.model.parameters()]))


def trainer(**settings) -> pl.Trainer:
    defaults = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
                "enable_progress_bar": False, "enable_model_summary": False, "max_epochs": 1}
    return pl.Trainer(**{**defaults, **settings})


@pytest.mark.parametrize("case", list(worker.CASES))
def test_one_process_equals_the_plain_loop_step_for_step(case: str) -> None:
    expected, expected_weights = plain_run(case)
    recorder = Recorder()
    torch.manual_seed(0)
    module = MultiTaskModule(worker.Net(), worker.tasks(), worker.optimizer, **worker.CASES[case]())
    trainer(callbacks=[recorder]).fit(module, worker.loaders(worker.GLOBAL_BATCH))
    assert len(recorder.params) == len(expected) == 4
    for found, reference in zip(recorder.params, expected):
        torch.testing.assert_close(found, reference, rtol=0, atol=1e-6)
    torch.testing.assert_close(module.last_step.weights, expected_weights[-1], rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory) -> dict:
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("needs torch.distributed with gloo")
    out = tmp_path_factory.mktemp("lightning") / "results.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--rdzv-backend=c10d",
               "--rdzv-endpoint=localhost:0", str(WORKER_PATH), str(out)]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.fail(f"torchrun exited with {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
    return json.loads(out.read_text())


@pytest.mark.parametrize("case", list(worker.CASES))
def test_two_ddp_processes_equal_one_process_on_the_global_batch(ddp_results, case: str) -> None:
    found = ddp_results[case]
    assert "error" not in found, found.get("error")
    assert found["ranks_equal"]
    expected, expected_weights = plain_run(case, worker.ddp_order())
    params = torch.cat([torch.tensor(p).reshape(-1) for p in found["params"]])
    torch.testing.assert_close(params, expected[-1], rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.tensor(found["weights"]), expected_weights[-1], rtol=0, atol=1e-5)


def test_weights_reach_the_logger_and_the_state_is_checkpointed(tmp_path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    torch.manual_seed(0)
    module = MultiTaskModule(worker.Net(), worker.tasks(), worker.optimizer, **worker.CASES["auto-lambda"]())
    run = trainer(logger=CSVLogger(tmp_path), log_every_n_steps=1, num_sanity_val_steps=0)
    loaders = worker.loaders(worker.GLOBAL_BATCH)
    run.fit(module, loaders, val_dataloaders=loaders["meta"])
    with open(Path(run.logger.log_dir) / "metrics.csv") as f:
        every = list(csv.DictReader(f))
    rows = [r for r in every if r.get("train/weight/a")]
    assert len(rows) == 4
    # validation_step: the task losses over the validation loader at the end of the epoch
    validation = [r for r in every if r.get("val/loss/a")]
    objective = dm.Objective(module.model, worker.tasks())
    with torch.no_grad():
        expected = torch.stack([objective.losses(b) for b in loaders["meta"]]).mean(0)
    assert len(validation) == 1
    found = torch.tensor([float(validation[0][f"val/loss/{t}"]) for t in worker.TASKS])
    torch.testing.assert_close(found, expected, rtol=0, atol=1e-5)
    lambdas = module.multitask.weighting.lambdas.detach()
    last = [float(rows[-1][f"train/weight/{t}"]) for t in worker.TASKS]
    torch.testing.assert_close(torch.tensor(last), module.last_step.weights, rtol=0, atol=1e-6)
    assert all(f"train/loss/{t}" in rows[0] for t in worker.TASKS)

    path = tmp_path / "module.ckpt"
    run.save_checkpoint(path)
    torch.manual_seed(1)
    restored = MultiTaskModule(worker.Net(), worker.tasks(), worker.optimizer, **worker.CASES["auto-lambda"]())
    resumed = trainer(max_epochs=2)
    resumed.fit(restored, worker.loaders(worker.GLOBAL_BATCH), ckpt_path=path)
    # the resumed run continued from λ (and its Adam state): equal to two epochs in one go
    torch.manual_seed(0)
    straight = MultiTaskModule(worker.Net(), worker.tasks(), worker.optimizer, **worker.CASES["auto-lambda"]())
    trainer(max_epochs=2).fit(straight, worker.loaders(worker.GLOBAL_BATCH))
    assert not torch.equal(lambdas, straight.multitask.weighting.lambdas.detach())
    torch.testing.assert_close(restored.multitask.weighting.lambdas, straight.multitask.weighting.lambdas)
    for p, q in zip(restored.model.parameters(), straight.model.parameters()):
        torch.testing.assert_close(p, q)


def test_a_meta_learned_weighting_without_meta_batches_names_the_fix() -> None:
    module = MultiTaskModule(worker.Net(), worker.tasks(), worker.optimizer, **worker.CASES["auto-lambda"]())
    with pytest.raises(ValueError, match="'meta': meta_loader"):
        trainer().fit(module, worker.loaders(worker.GLOBAL_BATCH)["train"])


def test_a_per_task_option_of_the_wrong_length_is_refused_when_the_module_is_built() -> None:
    tasks = worker.tasks()
    pref = [1.0] * (len(tasks.names) + 1)
    with pytest.raises(ValueError, match=rf"UPGrad's option pref has {len(pref)} value\(s\) but there are"):
        MultiTaskModule(worker.Net(), tasks, worker.optimizer, aggregation=dm.CRMOGM(dm.UPGrad(pref=pref)))


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_lightning_mixed_precision_is_close_to_float32(precision: str) -> None:
    """Lightning's autocast reaches every forward pass; with 16-mixed, Lightning's GradScaler
    scales dynamtl's losses and Lightning's optimizer step unscales them."""
    expected, _ = plain_run("hydalearn")
    torch.manual_seed(0)
    module = MultiTaskModule(worker.Net(), worker.tasks(), worker.optimizer, **worker.CASES["hydalearn"]())
    if precision == "16-mixed":  # Lightning turns precision="16-mixed" into bf16 on CPU: give the plugin itself
        from lightning.pytorch.plugins import MixedPrecision

        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        run = trainer(plugins=[MixedPrecision("16-mixed", "cpu", scaler)])
    else:
        run = trainer(precision=precision)
    run.fit(module, worker.loaders(worker.GLOBAL_BATCH))
    assert (module.multitask.precision.scaler is not None) == (precision == "16-mixed")
    found = torch.cat([p.detach().reshape(-1) for p in module.model.parameters()])
    start = torch.cat([p.detach().reshape(-1) for p in (torch.manual_seed(0), worker.Net())[1].parameters()])
    error = (found - expected[-1]).norm() / (expected[-1] - start).norm()
    assert error < 0.05, float(error)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("case", ["auto-lambda", "cagrad"])
def test_lightning_16_mixed_on_a_gpu_is_close_to_float32(case: str) -> None:
    """Lightning's own precision="16-mixed" plugin on CUDA: its GradScaler scales dynamtl's losses."""
    expected, _ = plain_run(case)
    torch.manual_seed(0)
    start = torch.cat([p.detach().reshape(-1) for p in worker.Net().parameters()])
    torch.manual_seed(0)
    module = MultiTaskModule(worker.Net(), worker.tasks(), worker.optimizer, **worker.CASES[case]())
    trainer(accelerator="gpu", precision="16-mixed").fit(module, worker.loaders(worker.GLOBAL_BATCH))
    assert module.multitask.precision.scaler is not None
    found = torch.cat([p.detach().cpu().reshape(-1) for p in module.model.parameters()])
    assert float((found - expected[-1]).norm() / (expected[-1] - start).norm()) < 0.05


def test_an_aggregation_that_reads_three_batches_takes_them_from_the_extra_loaders() -> None:
    """{"train": ..., "extra": [loader_1, loader_2]}: step for step the plain loop with
    ``step(batch, extra_batches=[b1, b2])``; without them the step names the fix."""
    from torch.utils.data import DataLoader

    def loaders():
        return {"train": worker.loaders(worker.GLOBAL_BATCH)["train"],
                "extra": [DataLoader(worker.Samples(seed), batch_size=worker.GLOBAL_BATCH) for seed in (5, 6)]}

    torch.manual_seed(0)
    model = worker.Net()
    mtl = dm.MultiTask(model, worker.tasks(), worker.optimizer(model.parameters()), aggregation=dm.SDMGrad())
    plain = loaders()
    expected = []
    for batch, first, second in zip(plain["train"], *plain["extra"]):
        mtl.step(batch, extra_batches=[first, second])
        expected.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    torch.manual_seed(0)
    module = MultiTaskModule(worker.Net(), worker.tasks(), worker.optimizer, aggregation=dm.SDMGrad())
    recorder = Recorder()
    trainer(callbacks=[recorder]).fit(module, loaders())
    assert len(recorder.params) == len(expected) == 4
    for ours, theirs in zip(recorder.params, expected):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    alone = MultiTaskModule(worker.Net(), worker.tasks(), worker.optimizer, aggregation=dm.MoDo())
    with pytest.raises(ValueError, match=r"'extra': \[2 more loaders"):
        trainer().fit(alone, loaders()["train"])


def test_the_weighting_s_and_the_aggregation_s_misfits_are_named_together():
    """As MultiTask does: every per-task option of both methods that does not fit the tasks."""
    tasks = worker.tasks()
    with pytest.raises(dm.OptionsError) as both:
        MultiTaskModule(worker.Net(), tasks, worker.optimizer, weighting=dm.STCH(ideal={"nope": 0.0}),
                        aggregation=dm.UPGrad(pref=[1.0] * (len(tasks.names) + 1)))
    assert "ideal names task(s) ['nope']" in str(both.value) and "UPGrad's option pref has" in str(both.value)
