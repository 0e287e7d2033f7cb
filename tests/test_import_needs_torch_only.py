"""``import dynamtl`` and the solver-based aggregations need torch alone: no NumPy, no SciPy."""

import subprocess
import sys

# A None entry in sys.modules makes any import of that module raise ImportError.
SCRIPT = """
import sys
sys.modules["numpy"] = None
sys.modules["scipy"] = None

import torch
import torch.nn.functional as F
from torch import nn

import dynamtl as dm

TASKS = ("main", "aux")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
        self.heads = nn.ModuleDict({t: nn.Linear(8, 1) for t in TASKS})

    def forward(self, x):
        h = self.trunk(x)
        return {t: head(h).squeeze(-1) for t, head in self.heads.items()}


g = torch.Generator().manual_seed(0)
batch = torch.randn(12, 4, generator=g), {t: torch.randn(12, generator=g) for t in TASKS}
for aggregation in (
    dm.MGDA(), dm.MGDA(solver="frank-wolfe"), dm.MGDA(upper_bound=True), dm.IMTLG(), dm.NashMTL(), dm.AlignedMTL()
):
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tasks = dm.Tasks(dict.fromkeys(TASKS, F.mse_loss))
    mtl = dm.MultiTask(model, tasks, opt, aggregation=aggregation, representation="trunk")
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):
        mtl.step(batch)
    mtl.load_state_dict(mtl.state_dict())
    changed = [not torch.equal(b, p) for b, p in zip(before, model.parameters())]
    assert all(changed) and all(torch.isfinite(p).all() for p in model.parameters()), type(aggregation).__name__
assert sys.modules["numpy"] is None and sys.modules["scipy"] is None
print("ok")
"""


def test_import_and_solver_aggregations_work_without_numpy_and_scipy() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
