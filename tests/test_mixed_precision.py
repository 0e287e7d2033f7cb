"""Mixed precision: GradScaler loss scaling and autocast through every kind of method.

Float32 models (AMP keeps parameters in float32); CPU autocast in bfloat16 and float16,
``torch.amp.GradScaler("cpu")``.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dynamtl as dm
from tests.states import assert_same_state

TASKS = ("a", "b", "c")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh())
        self.heads = nn.ModuleDict({t: nn.Linear(16, 1) for t in TASKS})

    def forward(self, x):
        h = self.trunk(x)
        return {t: head(h).squeeze(-1) for t, head in self.heads.items()}


def batch(seed: int, n: int = 32, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return x, {t: scale * torch.randn(n, generator=g) + i for i, t in enumerate(TASKS)}


METHODS = {
    "equal": lambda: {"weighting": dm.Equal()},
    "uncertainty": lambda: {"weighting": dm.Uncertainty()},
    "auto_lambda": lambda: {"weighting": dm.AutoLambda(primary=["a"], lr=0.01)},
    "auto_lambda_lagged": lambda: {"weighting": dm.AutoLambda(lr=0.01, order="lagged")},
    "auto_lambda_exact": lambda: {"weighting": dm.AutoLambda(primary=["a"], lr=0.01, hypergradient="exact")},
    "hydalearn": lambda: {"weighting": dm.HydaLearn(main="a")},
    "hydalearn_meta": lambda: {"weighting": dm.HydaLearn(main="a", gain="first_order", gain_batch="meta")},
    "pcgrad": lambda: {"aggregation": dm.PCGrad()},
    "cagrad": lambda: {"aggregation": dm.CAGrad(c=0.4)},
    "mgda": lambda: {"aggregation": dm.MGDA()},
    "mgda_ub": lambda: {"aggregation": dm.MGDA(upper_bound=True), "representation": "trunk"},
    "gradnorm": lambda: {"weighting": dm.GradNorm()},
    "dwa": lambda: {"weighting": dm.DWA()},
    "famo": lambda: {"weighting": dm.FAMO()},
}
ISSUE_METHODS = ["equal", "uncertainty", "auto_lambda", "hydalearn", "pcgrad", "cagrad", "mgda"]


def build(method: str, scaler=None, momentum: float = 0.9, device: str = "cpu"):
    torch.manual_seed(0)
    model = Net().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=momentum)
    tasks = dm.Tasks(dict.fromkeys(TASKS, F.mse_loss))
    return model, opt, dm.MultiTask(model, tasks, opt, scaler=scaler, **METHODS[method]())


def on(device: str, data):
    x, y = data
    return x.to(device), {t: v.to(device) for t, v in y.items()}


def run(method: str, steps: int, *, dtype=None, scaler=None, device: str = "cpu"):
    """Parameters and weights after ``steps`` steps (on the CPU), the step under
    autocast(dtype) if given."""
    model, _opt, mtl = build(method, scaler, device=device)
    weights = []
    for i in range(steps):
        with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            info = mtl.step(on(device, batch(i)), meta_batch=on(device, batch(100 + i)))
        assert not info.skipped
        weights.append(info.weights.cpu())
    return [p.detach().cpu().clone() for p in model.parameters()], torch.stack(weights), mtl


def relative_error(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    num = sum(float((x - y).norm() ** 2) for x, y in zip(a, b)) ** 0.5
    return num / sum(float(y.norm() ** 2) for y in b) ** 0.5


def deltas(after: list[torch.Tensor], method: str) -> list[torch.Tensor]:
    model, _, _ = build(method)
    return [a - p.detach() for a, p in zip(after, model.parameters())]


@pytest.mark.parametrize("method", list(METHODS))
def test_loss_scaling_alone_changes_no_step(method: str) -> None:
    """Float32 with a GradScaler: every gradient a method reads is unscaled, so the steps
    (and weights) equal the unscaled ones up to float32 rounding; a forgotten unscale would
    be 2**16 off."""
    plain, plain_w, _ = run(method, 3)
    scaled, scaled_w, mtl = run(method, 3, scaler=torch.amp.GradScaler("cpu", init_scale=2.0**16))
    assert mtl.precision.scaler.get_scale() == 2.0**16  # no overflow, growth not reached
    assert relative_error(deltas(scaled, method), deltas(plain, method)) < 1e-4
    torch.testing.assert_close(scaled_w, plain_w, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ISSUE_METHODS)
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_step_is_close_to_the_float32_step(method: str, precision: str) -> None:
    """Under CPU autocast (bfloat16, or float16 with a GradScaler) two steps move the
    parameters as float32 does, within the rounding of 16-bit forward passes."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10) if precision == "fp16" else None
    plain, plain_w, _ = run(method, 2)
    mixed, mixed_w, _ = run(method, 2, dtype=dtype, scaler=scaler)
    tolerance = 0.05 if precision == "bf16" else 0.01
    assert relative_error(deltas(mixed, method), deltas(plain, method)) < tolerance
    torch.testing.assert_close(mixed_w, plain_w, rtol=tolerance, atol=tolerance)


def test_forward_passes_run_under_the_callers_autocast_and_the_rest_in_float32() -> None:
    seen: list[torch.dtype] = []
    model, _opt, mtl = build("auto_lambda")
    model.trunk[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        info = mtl.step(batch(0), meta_batch=batch(1))
        assert torch.is_autocast_enabled("cpu")  # the caller's autocast is left as it was
    # real pass, virtual step's meta pass: bfloat16; the two finite-difference passes: float32
    assert seen == [torch.bfloat16, torch.bfloat16, torch.float32, torch.float32]
    assert info.losses.dtype == torch.float32 and info.weights.dtype == torch.float32
    assert mtl.weighting.last_hypergradient.dtype == torch.float32
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())


def state(model, opt, mtl):
    return copy.deepcopy((model.state_dict(), opt.state_dict(), mtl.state_dict()))


@pytest.mark.parametrize("method", list(METHODS))
def test_an_overflow_changes_nothing_but_the_scale(method: str) -> None:
    """float16 autocast at a scale of 2**40 overflows the 16-bit backward pass: the step is
    skipped (model, optimizer, weighting, aggregation and step count as before) and the
    scale backs off; the next steps at a sane scale train."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    model, opt, mtl = build(method, scaler)
    with torch.autocast("cpu", dtype=torch.float16):
        assert not mtl.step(batch(0), meta_batch=batch(1)).skipped  # state to keep (momentum, λ…)
        scaler.update(2.0**40)
        before = state(model, opt, mtl)
        info = mtl.step(batch(2), meta_batch=batch(3))
    assert info.skipped and bool(torch.isfinite(info.losses).all())
    assert_same_state(state(model, opt, mtl), before)
    assert scaler.get_scale() == 2.0**39
    scaler.update(2.0**10)
    with torch.autocast("cpu", dtype=torch.float16):
        info = mtl.step(batch(2), meta_batch=batch(3))
    assert not info.skipped and mtl.steps == 2
    assert not torch.equal(next(model.parameters()), before[0]["trunk.0.weight"])


def test_backward_leaves_scaled_gradients_for_the_users_scaler_calls() -> None:
    """After backward(), .grad is S × the step's gradient, as after scaler.scale(loss).backward():
    the usual unscale_ / clip / step / update sequence works."""
    _, _, plain = build("pcgrad")
    plain.optimizer.zero_grad()
    plain.backward(batch(0))
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    model, opt, mtl = build("pcgrad", scaler)
    mtl.backward(batch(0))
    for p, q in zip(model.parameters(), plain.objective.params.values()):
        torch.testing.assert_close(p.grad, 1024.0 * q.grad)
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 1024.0


def test_a_disabled_scaler_is_no_scaler() -> None:
    scaled, _, mtl = run("equal", 1, scaler=torch.amp.GradScaler("cpu", enabled=False))
    plain, _, _ = run("equal", 1)
    assert mtl.precision.scaler is None
    assert all(torch.equal(a, b) for a, b in zip(scaled, plain))


@pytest.mark.parametrize("precision", ["32", "bf16", "fp16"])
def test_the_trainer_trains_at_every_precision(precision: str, tmp_path) -> None:
    """``dynamtl train --precision``: bf16 runs under autocast, fp16 also scales the losses
    (the scaler's state is checkpointed); every step's weights are finite or the step is
    marked skipped; the test metric stays near float32's."""
    import json

    from click.testing import CliRunner

    from dynamtl.cli import main
    from dynamtl.train import checkpoint

    out = tmp_path / precision
    args = ["train", "--benchmark", "drift", "--limit", "128", "--batch-size", "32", "--epochs", "1", "--quiet",
            "--method", "auto-lambda", "--precision", precision, "--out", str(out)]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["precision"] == precision
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert len(steps) == 4
    for step in steps:
        weights = [v for k, v in step.items() if k.startswith("weight/")]
        assert step.get("skipped") or all(abs(w) < 10 for w in weights), step
    state = checkpoint.load(out / "checkpoints" / "last.pt")
    assert (state["scaler"] is not None) == (precision == "fp16")
    if precision == "fp16":
        assert state["scaler"]["scale"] > 0


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize("method", ISSUE_METHODS)
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_autocast_step_is_close_to_the_float32_step(method: str, precision: str) -> None:
    """On a GPU: CUDA autocast (float16 with the default GradScaler) against float32 on the GPU."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10) if precision == "fp16" else None
    plain, plain_w, _ = run(method, 2, device="cuda")
    mixed, mixed_w, _ = run(method, 2, dtype=dtype, scaler=scaler, device="cuda")
    tolerance = 0.05 if precision == "bf16" else 0.01
    assert relative_error(deltas(mixed, method), deltas(plain, method)) < tolerance
    torch.testing.assert_close(mixed_w, plain_w, rtol=tolerance, atol=tolerance)


@needs_cuda
@pytest.mark.parametrize("method", ["equal", "auto_lambda", "pcgrad", "mgda_ub"])
def test_cuda_overflow_is_skipped_and_backs_off(method: str) -> None:
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10)
    model, opt, mtl = build(method, scaler, device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        assert not mtl.step(on("cuda", batch(0)), meta_batch=on("cuda", batch(1))).skipped
        scaler.update(2.0**40)
        before = state(model, opt, mtl)
        info = mtl.step(on("cuda", batch(2)), meta_batch=on("cuda", batch(3)))
    assert info.skipped
    assert_same_state(state(model, opt, mtl), before)
    assert scaler.get_scale() == 2.0**39
