"""Auto-Lambda inside PyTorch Lightning on scikit-learn's digits (tasks of ``digits.py``).

``MultiTaskModule`` trains the model with manual optimisation; Auto-Lambda's meta batches
come from a second loader over the validation split; the task weights are logged through
Lightning's logger (``lightning_logs/``, CSV) and saved in its checkpoints. Add
``--devices 2`` for two DDP processes on the CPU (each with half of every batch: the same
training as one process) and ``--precision bf16-mixed`` for mixed precision.

Run: ``python examples/digits_lightning.py`` (needs ``pip install 'dynamtl[lightning]'``).
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from digits import TASKS, DigitsNet, load
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, Dataset

import dynamtl as dm
from dynamtl.lightning import MultiTaskModule


class Split(Dataset):
    """One split of ``load``: samples ``(x, {task: y})``."""

    def __init__(self, split) -> None:
        self.x, self.y = split

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], {t: y[i] for t, y in self.y.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--precision", default="32-true")
    args = parser.parse_args()
    data = load(seed=0)
    torch.manual_seed(0)
    module = MultiTaskModule(
        DigitsNet(), dm.Tasks(dict.fromkeys(TASKS, F.cross_entropy)),
        lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
        weighting=dm.AutoLambda(primary="digit", lr=1e-3),
    )
    per_process = 32 // args.devices
    loaders = {
        "train": DataLoader(Split(data["train"]), batch_size=per_process, shuffle=True),
        "meta": DataLoader(Split(data["val"]), batch_size=per_process, shuffle=True),
    }
    strategy = "ddp" if args.devices > 1 else "auto"
    trainer = pl.Trainer(accelerator="cpu", devices=args.devices, strategy=strategy, max_epochs=args.epochs,
                         precision=args.precision, logger=CSVLogger("lightning_logs"), log_every_n_steps=10)
    trainer.fit(module, loaders)
    if trainer.is_global_zero:
        weights = module.last_step.weights
        print("final weights:", ", ".join(f"{t}={float(w):.3f}" for t, w in zip(TASKS, weights)))
        print(f"logs: {trainer.logger.log_dir}")


if __name__ == "__main__":
    main()
