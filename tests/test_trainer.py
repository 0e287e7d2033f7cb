"""The trainer on real (synthetic, generated) data of the drift benchmark: the run folder
it writes, model selection and the final test, validation before training, non-finite
losses, single-task baselines and their reuse, and the seeded data order."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import Subset

from dynamtl.benchmarks.drift import RelevanceDrift
from dynamtl.train import (
    ConfigError,
    RunConfig,
    RunFolderError,
    TrainingStopped,
    plan,
    train,
    train_or_reuse,
)
from dynamtl.train.batches import MetaStream, Passes
from dynamtl.train.checkpoint import load
from dynamtl.train.evaluate import evaluate
from tests.states import assert_same_state

TINY = {"benchmark": "drift", "limit": 256, "batch_size": 64}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run far faster on one thread than on two busy ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished Auto-Lambda run in auxiliary mode with a noise task and a step schedule."""
    out = tmp_path_factory.mktemp("runs") / "auto-lambda"
    config = RunConfig(
        **TINY, method="auto-lambda", options={"lr": "1e-2"}, mode="auxiliary", noise_task=True, epochs=3,
        schedule="step", step_epochs=1, step_gamma=0.5, lr=3e-3,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(config, out, progress=False)
    finally:
        torch.set_num_threads(threads)
    return out


def test_the_run_folder_holds_the_documented_files(run):
    for name in ("config.json", "steps.jsonl", "epochs.jsonl", "events.jsonl", "results.json", "model.pt"):
        assert (run / name).is_file(), name
    steps, epochs = records(run / "steps.jsonl"), records(run / "epochs.jsonl")
    assert [s["step"] for s in steps] == list(range(1, 13))
    assert [(s["epoch"], s["batch"]) for s in steps[:5]] == [(1, 1), (1, 2), (1, 3), (1, 4), (2, 1)]
    tasks = ("main", "aux", "noise")
    kinds = ("loss", "weight", "aggregation_weight")
    assert set(steps[0]) == {"step", "epoch", "batch", "lr", "seconds", *(f"{k}/{t}" for k in kinds for t in tasks)}
    expected = {"epoch", "step", "lr", "selection", "best", "skipped", "seconds_train", "seconds_eval"}
    expected |= {f"{k}/{t}" for k in ("train_loss", "val_loss") for t in tasks}
    expected |= {"val/main/mae", "val/aux/mae", "val/noise/accuracy"}
    assert set(epochs[0]) == expected
    assert [e["lr"] for e in epochs] == [3e-3, 1.5e-3, 7.5e-4]  # the step schedule, once per epoch
    events = [e["event"] for e in records(run / "events.jsonl")]
    assert events == ["start", "checkpoint", "checkpoint", "checkpoint", "finish"]
    if importlib.util.find_spec("tensorboard") is not None:
        assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert load(run / "checkpoints" / "previous.pt")["position"]["step"] == 8
    assert load(run / "checkpoints" / "last.pt")["position"] == {"epoch": 3, "batch": 0, "step": 12}


def test_the_selected_epoch_is_the_best_by_validation_and_is_the_one_tested(run):
    results, epochs = json.loads((run / "results.json").read_text()), records(run / "epochs.jsonl")
    scores = [e["selection"] for e in epochs]
    best = scores.index(max(scores)) + 1
    assert results["best_epoch"] == best and epochs[best - 1]["best"]
    assert results["val"] == {t: {m: epochs[best - 1][f"val/{t}/{m}"] for m in v} for t, v in results["val"].items()}
    # the test metrics are those of model.pt, the selected model, on the whole test split
    checked = plan(RunConfig.from_mapping(json.loads((run / "config.json").read_text())))
    bench = checked.benchmark
    model = bench.model({t: s.out_features for t, s in bench.specs.items()})
    model.load_state_dict(torch.load(run / "model.pt"))
    splits = bench.splits(Path(checked.config.root), 0, checked.config.limit)
    batches = Passes(bench, splits.test, 64, 0, "eval", False, torch.device("cpu")).iterate(0)
    assert evaluate(model, bench.specs, batches, multi_input=False).metrics == results["test"]
    last_step = records(run / "steps.jsonl")[-1]
    assert results["final_weights"] == {t: last_step[f"weight/{t}"] for t in ("main", "aux", "noise")}
    assert results["tasks"] == ["main", "aux", "noise"] and results["primary"] == ["main"]


def test_the_saved_config_is_resolved_and_reads_back_to_itself(run):
    saved = json.loads((run / "config.json").read_text())
    assert saved["optimizer"] == "adam" and saved["batch_size"] == 64 and saved["shuffle"] is False
    assert saved["options"]["lr"] == 0.01 and saved["tasks"] == ["main", "aux"]
    replanned = plan(RunConfig.from_mapping(saved)).config.to_dict()
    assert replanned == {k: v for k, v in saved.items() if k != "environment"}


def test_every_invalid_setting_is_reported_at_once_before_anything_is_written(tmp_path):
    config = RunConfig(
        benchmark="drift", method="auto-lambda", options={"c": 1}, tasks=("main", "nope"), epochs=0, lr=-1.0,
        momentum=0.5, device="tpu", checkpoint_every=-2,
    )
    with pytest.raises(ConfigError) as error:
        train(config, tmp_path / "run")
    message = str(error.value)
    for expected in (
        "epochs must be >= 1, got 0",
        "lr must be > 0, got -1.0",
        "momentum is SGD's; adam has none",
        "checkpoint_every must be >= 0",
        "device 'tpu' is not a torch device",
        "unknown selected task(s) ['nope']: they are not among the tasks ['main', 'aux'] of benchmark 'drift'",
        "no part of the method takes option 'c'",
    ):
        assert expected in message
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"mode": "auxiliary", "tasks": ("main",)}, "auxiliary mode needs a task besides the primary ['main']"),
        ({"mode": "auxiliary", "tasks": ("aux",)}, "(the benchmark's default primary ['main']): give --primary"),
        ({"primary": ("main",)}, "primary tasks are for --mode auxiliary"),
        ({"method": "gcs"}, "run it with --mode auxiliary"),
        ({"method": "stl", "noise_task": True}, "--noise-task does not apply"),
        ({"benchmark": "nope"}, "unknown benchmark 'nope'; valid benchmarks: census, drift"),
    ],
)
def test_settings_that_do_not_fit_together_are_rejected(changes, expected):
    with pytest.raises(ConfigError) as error:
        plan(RunConfig(**{**TINY, **changes}))
    assert expected in str(error.value)


@pytest.mark.parametrize(
    ("benchmark", "method", "options", "expected"),
    [
        ("nyuv2", "auto-lambda", {}, {"lr": 1e-4, "init": 0.1}),
        ("cityscapes", "auto-lambda+cagrad", {}, {"lr": 3e-5, "init": 0.1}),
        ("cifar100", "auto-lambda", {"init": 1.0}, {"lr": 3e-4, "init": 1.0}),
        ("nyuv2", "auto-lambda", {"lr": 5e-4}, {"lr": 5e-4, "init": 0.1}),
        ("nyuv2", "auto-lambda+cagrad", {"auto-lambda.lr": 5e-4}, {"lr": 5e-4, "init": 0.1}),
        ("nyuv2", "famo", {}, {"lr": 0.025}),  # FAMO's own default, not the benchmark's Auto-Lambda lr
        ("census", "auto-lambda", {}, {"lr": 1e-4, "init": 0.1}),
    ],
)
def test_a_benchmark_s_method_options_apply_unless_the_run_sets_them(benchmark, method, options, expected):
    resolved = plan(RunConfig(benchmark=benchmark, method=method, options=options)).config.options
    assert {key: value for key, value in resolved.items() if key in ("lr", "init")} == expected


def test_mgda_upper_bound_trains_on_the_benchmark_s_shared_representation(tmp_path):
    result = train(RunConfig(**TINY, method="mgda", options={"upper_bound": True}, epochs=1), tmp_path / "ub",
                   progress=False)
    assert json.loads((tmp_path / "ub" / "config.json").read_text())["options"]["upper_bound"] is True
    assert all(math.isfinite(value) for metrics in result["test"].values() for value in metrics.values())
    with pytest.raises(ConfigError, match="the model of 'nyuv2' has none: drop upper_bound"):
        plan(RunConfig(benchmark="nyuv2", benchmark_options={"network": "mtan"}, method="mgda",
                       options={"upper_bound": True}))
    assert plan(RunConfig(benchmark="nyuv2", method="mgda", options={"upper_bound": True})).benchmark.representation


def test_values_of_the_wrong_type_and_unknown_keys_are_rejected():
    with pytest.raises(ConfigError) as error:
        RunConfig.from_mapping({"benchmark": "drift", "epochs": "ten", "optimiser": "sgd"}, "run.toml")
    assert "unknown key(s) ['optimiser'] in run.toml; valid keys: benchmark" in str(error.value)
    assert "epochs expects an integer, got 'ten'" in str(error.value)


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    config = RunConfig(**TINY, epochs=1, optimizer="sgd", lr=1e12, checkpoint_every=1)
    with pytest.raises(TrainingStopped) as error:
        train(config, tmp_path, progress=False)
    message = str(error.value)
    assert "training stopped at epoch 1, batch 3 (run step 3): non-finite loss" in message
    assert "'main': inf" in message and "the last good checkpoint" in message
    assert load(tmp_path / "checkpoints" / "last.pt")["position"]["step"] == 2
    assert not (tmp_path / "results.json").exists()
    assert records(tmp_path / "events.jsonl")[-1]["event"] == "stop"


def test_skipped_non_finite_batches_are_counted(tmp_path):
    config = RunConfig(**TINY, epochs=1, optimizer="sgd", lr=1e12, on_nonfinite="skip")
    results = train(config, tmp_path, progress=False)
    skipped = [s for s in records(tmp_path / "steps.jsonl") if s.get("skipped")]
    assert [s["step"] for s in skipped] == [3, 4]
    assert all("non-finite loss" in s["error"] and "loss/main" not in s for s in skipped)
    assert results["skipped_steps"] == 2 and records(tmp_path / "epochs.jsonl")[0]["skipped"] == 2


@pytest.mark.parametrize("method", ["equal", "auto-lambda", "hydalearn", "gradnorm+pcgrad"])
def test_a_skipped_step_leaves_the_model_the_optimizer_and_the_method_bit_for_bit(tmp_path, method):
    """``--on-nonfinite skip``: with steps 3 and 4 skipped (divergent at lr 1e12), the state
    saved at the end of the epoch (step 4) equals the state saved after step 3, tensor for
    tensor: the skipped step 4 changed nothing."""
    config = RunConfig(**TINY, method=method, epochs=1, optimizer="sgd", lr=1e12, on_nonfinite="skip",
                       checkpoint_every=3)
    train(config, tmp_path, progress=False)
    skipped = [s["step"] for s in records(tmp_path / "steps.jsonl") if s.get("skipped")]
    assert skipped[-2:] == [3, 4]
    after_3, after_4 = load(tmp_path / "checkpoints" / "previous.pt"), load(tmp_path / "checkpoints" / "last.pt")
    assert after_3["position"]["step"] == 3 and after_4["position"]["step"] == 4
    for part in ("model", "optimizer", "multitask"):
        assert_same_state(after_4[part], after_3[part], part)


def test_single_task_baselines_train_one_model_per_task_and_are_reused(tmp_path):
    config = RunConfig(**TINY, method="stl", epochs=1)
    results = train_or_reuse(config, tmp_path, progress=False)
    assert results["single_task"] and results["runs"] == {"main": "tasks/main", "aux": "tasks/aux"}
    for task in ("main", "aux"):
        run = json.loads((tmp_path / "tasks" / task / "results.json").read_text())
        assert run["tasks"] == [task] and run["method"] == "equal"
        assert results["test"][task] == run["test"][task]
    events = (tmp_path / "tasks" / "main" / "events.jsonl").read_text()
    assert train_or_reuse(config, tmp_path, progress=False) == results
    assert (tmp_path / "tasks" / "main" / "events.jsonl").read_text() == events  # nothing retrained
    with pytest.raises(RunFolderError, match=r"holds a run of another configuration \(epochs: 1 before, 2 now\)"):
        train_or_reuse(config.replace(epochs=2), tmp_path, progress=False)
    with pytest.raises(RunFolderError, match=r"holds a finished run .*train into another --out"):
        train(config, tmp_path)


def test_the_data_order_is_a_function_of_seed_and_pass_alone():
    bench = RelevanceDrift()
    data = bench.splits(Path("."), 0, 100).train
    cpu = torch.device("cpu")

    def inputs(passes: Passes, pass_: int, start: int = 0) -> list[torch.Tensor]:
        return [batch[0] for batch in passes.iterate(pass_, start)]

    passes = Passes(bench, data, 32, 0, "train", True, cpu)
    first = inputs(passes, 1)
    assert passes.per_pass == 4 and [len(x) for x in first] == [32, 32, 32, 4]
    assert all(torch.equal(a, b) for a, b in zip(first, inputs(passes, 1)))
    assert all(torch.equal(a, b) for a, b in zip(first[2:], inputs(passes, 1, start=2)))  # resumed mid-pass
    assert not torch.equal(first[0], inputs(passes, 2)[0])
    assert not torch.equal(first[0], inputs(Passes(bench, data, 32, 1, "train", True, cpu), 1)[0])
    seen = torch.cat(first)
    assert torch.equal(seen[seen[:, 0].argsort()], data.inputs[data.inputs[:, 0].argsort()])  # each sample once
    assert torch.equal(torch.cat(inputs(Passes(bench, data, 32, 0, "train", False, cpu), 5)), data.inputs)


def test_other_data_sets_go_through_the_benchmark_loader_in_the_same_seeded_way():
    bench = RelevanceDrift()
    data = Subset(bench.splits(Path("."), 0, 100).train, range(100))  # not MultiTaskTensors: a DataLoader
    passes = Passes(bench, data, 32, 0, "train", True, torch.device("cpu"))
    first = [batch[0] for batch in passes.iterate(1)]
    assert passes.per_pass == 4 and [len(x) for x in first] == [32, 32, 32, 4]
    assert all(torch.equal(a, b[0]) for a, b in zip(first[1:], passes.iterate(1, start=1)))
    assert not torch.equal(first[0], next(passes.iterate(2))[0])


def test_the_meta_stream_resumes_from_the_number_of_batches_drawn():
    bench = RelevanceDrift()
    passes = Passes(bench, bench.splits(Path("."), 0, 100).val, 500, 0, "meta", True, torch.device("cpu"))
    first = MetaStream(passes)
    drawn = [first.next()[0] for _ in range(7)]  # 5 batches per pass: crosses a reshuffle
    second = MetaStream(passes)
    second.seek(4)
    assert all(torch.equal(a, second.next()[0]) for a in drawn[4:])
    assert not torch.equal(drawn[0], drawn[5])  # the second pass is reshuffled
