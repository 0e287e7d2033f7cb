"""HydaLearn with Hugging Face accelerate on scikit-learn's digits (tasks of ``digits.py``).

The model, optimizer and loaders come from ``Accelerator.prepare``; ``MultiTask`` gets the
optimizer inside accelerate's wrapper (the look-ahead emulates it) and accelerate's
``GradScaler``; the loop steps the wrapper, which skips the steps between gradient
accumulations. ``accelerate launch --multi_gpu --num_processes 2 examples/digits_accelerate.py``
runs two processes (gloo on the CPU); ``--mixed-precision bf16`` (or ``fp16`` on a GPU).

Run: ``python examples/digits_accelerate.py`` (needs ``pip install 'dynamtl[accelerate]'``).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from digits import TASKS, DigitsNet, accuracy, load
from torch.utils.data import DataLoader, TensorDataset

import dynamtl as dm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument("--accumulate", type=int, default=2, help="micro-batches per optimizer step")
    args = parser.parse_args()
    accelerator = Accelerator(mixed_precision=args.mixed_precision, gradient_accumulation_steps=args.accumulate)
    data = load(seed=0)
    x, y = data["train"]
    loader = DataLoader(TensorDataset(x, *(y[t] for t in TASKS)), batch_size=32 // args.accumulate, shuffle=True)
    torch.manual_seed(0)
    model = DigitsNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model, opt, loader = accelerator.prepare(model, opt, loader)
    mtl = dm.MultiTask(model, dm.Tasks(dict.fromkeys(TASKS, F.cross_entropy)), opt.optimizer,
                       weighting=dm.HydaLearn(main="digit"), scaler=accelerator.scaler)
    for _ in range(args.epochs):
        for inputs, *targets in loader:
            with accelerator.accumulate(model), accelerator.autocast():
                info = mtl.backward((inputs, dict(zip(TASKS, targets))), micro_batches=args.accumulate)
                opt.step()
                opt.zero_grad()
    if accelerator.is_main_process:
        test = accuracy(accelerator.unwrap_model(model), data["test"])
        print("test accuracy:", ", ".join(f"{t}={100 * a:.1f}%" for t, a in test.items()))
        print("last weights:", ", ".join(f"{t}={float(w):.3f}" for t, w in zip(TASKS, info.weights)))
    accelerator.end_training()


if __name__ == "__main__":
    main()
