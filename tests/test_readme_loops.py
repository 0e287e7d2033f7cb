"""The code blocks of the README's "In your own training loop" section run as written, in
order and in one namespace, given a small ``MyNet`` with the section's three tasks, its
``normal_loss`` and data loaders (CPU: float16 autocast, bfloat16 Lightning and accelerate)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

README = Path(__file__).parents[1] / "README.md"


def section_blocks() -> list[str]:
    text = README.read_text()
    section = text.split("## In your own training loop", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


class MyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(8, 16), nn.Tanh())
        self.heads = nn.ModuleDict({"seg": nn.Linear(16, 3), "depth": nn.Linear(16, 1), "normal": nn.Linear(16, 3)})

    def forward(self, x):
        h = self.trunk(x)
        out = {t: head(h) for t, head in self.heads.items()}
        out["depth"] = out["depth"].squeeze(-1)
        return out


def normal_loss(prediction, target):
    return 1 - F.cosine_similarity(prediction, target, dim=-1).mean()


class Scenes(Dataset):
    def __init__(self, seed: int, n: int = 32) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 8, generator=g)
        self.y = {"seg": torch.randint(0, 3, (n,), generator=g), "depth": torch.rand(n, generator=g),
                  "normal": F.normalize(torch.randn(n, 3, generator=g), dim=-1)}

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], {t: y[i] for t, y in self.y.items()}


def test_every_snippet_runs_as_written(tmp_path, monkeypatch) -> None:
    pytest.importorskip("lightning")
    pytest.importorskip("accelerate")
    from accelerate.state import AcceleratorState, GradientState

    blocks = section_blocks()
    assert len(blocks) == 5  # the loop, AMP, accumulation, Lightning, accelerate
    monkeypatch.chdir(tmp_path)  # Lightning's logs
    torch.manual_seed(0)
    namespace = {
        "MyNet": MyNet, "normal_loss": normal_loss,
        "train_loader": DataLoader(Scenes(0), batch_size=8), "meta_loader": DataLoader(Scenes(1), batch_size=8),
        "micro_batches": list(DataLoader(Scenes(2), batch_size=4)),
    }
    try:
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    assert namespace["info"].weights.shape == (3,)
    assert namespace["module"].last_step is not None and namespace["trainer"].global_step == 4
    assert namespace["mtl"].steps == 4 and namespace["mtl"].precision.scaler is None  # accelerate's bf16


@pytest.mark.parametrize("example", ["digits_lightning.py", "digits_accelerate.py"])
def test_the_integration_examples_run(example: str, tmp_path) -> None:
    import os
    import subprocess
    import sys

    pytest.importorskip("sklearn")
    pytest.importorskip("lightning" if "lightning" in example else "accelerate")
    script = Path(__file__).parents[1] / "examples" / example
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script), "--epochs", "1"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "weights:" in done.stdout
