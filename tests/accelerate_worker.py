"""Run by ``tests/test_accelerate.py`` under ``accelerate launch --num_processes N``:
MultiTask with a model, optimizer and data loader from ``Accelerator.prepare``, for every
case of :data:`CASES` (mixed precision and gradient accumulation among them). Process 0
writes each case's final parameters and weights to the JSON file named by the argument,
with whether every process ended with the same parameters."""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import torch

import dynamtl as dm

sys.path.insert(0, str(Path(__file__).parent))
from lightning_worker import GLOBAL_BATCH, Net, loaders, optimizer, tasks

# name -> (method, Accelerator settings)
CASES = {
    "equal": (lambda: {"weighting": dm.Equal()}, {}),
    "auto-lambda": (lambda: {"weighting": dm.AutoLambda(primary=["a"], lr=0.01)}, {}),
    "cagrad": (lambda: {"aggregation": dm.CAGrad(c=0.4)}, {}),
    "equal-accumulate": (lambda: {"weighting": dm.Equal()}, {"gradient_accumulation_steps": 2}),
    "uncertainty-bf16": (lambda: {"weighting": dm.Uncertainty()}, {"mixed_precision": "bf16"}),
    "hydalearn-bf16-accumulate": (lambda: {"weighting": dm.HydaLearn(main="a")},
                                  {"mixed_precision": "bf16", "gradient_accumulation_steps": 2}),
}


def run(case: str):
    """Train one epoch the accelerate way; the final parameters and last weights."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()  # a fresh Accelerator (mixed precision…) per case, same processes
    GradientState._reset_state()
    method, settings = CASES[case]
    accelerator = Accelerator(cpu=True, **settings)
    steps = accelerator.gradient_accumulation_steps
    per_process = GLOBAL_BATCH // accelerator.num_processes // steps  # micro-batch of one process
    torch.manual_seed(0)
    model = Net()
    opt = optimizer(model.parameters())
    data = loaders(per_process)
    model, opt, loader, meta = accelerator.prepare(model, opt, data["train"], data["meta"])
    # the optimizer that MultiTask reads (look-aheads, parameter groups) is the one inside
    # accelerate's wrapper; the loop steps the wrapper, which skips the steps between
    # accumulations and unscales under float16
    mtl = dm.MultiTask(model, tasks(), opt.optimizer, scaler=accelerator.scaler, **method())
    weights = None
    for batch, meta_batch in zip(loader, meta):
        with accelerator.accumulate(model), accelerator.autocast():
            info = mtl.backward(batch, meta_batch, micro_batches=steps)
            opt.step()
            opt.zero_grad()
        weights = info.weights
    params = [p.detach().clone() for p in accelerator.unwrap_model(model).parameters()]
    flat = torch.cat([p.reshape(-1) for p in params])
    gathered = accelerator.gather(flat[None])
    return params, weights, bool((gathered == gathered[0]).all()), accelerator


def main(out: str) -> None:
    results, accelerator = {}, None
    for case in CASES:
        try:
            params, weights, equal, accelerator = run(case)
            results[case] = {"params": [p.tolist() for p in params], "weights": weights.tolist(), "ranks_equal": equal,
                             "processes": accelerator.num_processes}
        except Exception:
            results[case] = {"error": traceback.format_exc()}
    if accelerator is None or accelerator.is_main_process:
        with open(out, "w") as f:
            json.dump(results, f)
    if accelerator is not None:
        accelerator.wait_for_everyone()
        accelerator.end_training()  # destroys the process group: a clean exit of every process


if __name__ == "__main__":
    main(sys.argv[1])
