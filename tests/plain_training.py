"""A plain training epoch without dynamtl's step API, for the data tests' learnability checks."""

import torch
from torch import nn

from dynamtl.benchmarks.base import Benchmark, MultiTaskTensors


def train_one_epoch(benchmark: Benchmark, model: nn.Module, train: MultiTaskTensors) -> None:
    """One epoch of Adam (the benchmark's lr and batch size) on the unweighted sum of its task losses."""
    optimizer = torch.optim.Adam(model.parameters(), lr=benchmark.defaults.lr)
    batch = benchmark.defaults.batch_size
    for start in range(0, len(train), batch):
        out = model(train.inputs[start : start + batch])
        loss = sum(
            spec.loss(out[task], train.targets[task][start : start + batch]) for task, spec in benchmark.specs.items()
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
