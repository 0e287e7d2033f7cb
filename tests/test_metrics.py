"""The torchmetrics-backed task metrics: the values of the defining formulas (those of the
hand-written metrics they replace), independence from the batching, the errors, and the
synchronisation over processes (a real torchrun of two processes)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from dynamtl.metrics import ACCURACY, AUC, MAE
from dynamtl.metrics_dense import error_metrics, segmentation_metrics


def mann_whitney_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """P(score of a positive > score of a negative) + ½ P(tie), over all pairs (float64)."""
    positive, negative = scores[labels == 1].double(), scores[labels == 0].double()
    greater = (positive[:, None] > negative[None, :]).double()
    ties = (positive[:, None] == negative[None, :]).double()
    return float((greater + 0.5 * ties).mean())


def run(metric, batches, sync=False) -> float:
    state = metric.start(sync=sync)
    for predictions, targets in batches:
        state.update(predictions, targets)
    return state.compute()


def chunks(predictions, targets, size):
    return [(predictions[i : i + size], targets[i : i + size]) for i in range(0, len(targets), size)]


@pytest.mark.parametrize("seed", range(3))
def test_auc_is_the_mann_whitney_probability_with_ties_and_large_scores(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(500, 2, generator=g) * 40  # differences beyond a sigmoid's float range
    logits[:50] = logits[50]  # a block of ties
    labels = torch.randint(0, 2, (500,), generator=g)
    expected = mann_whitney_auc(logits[:, 1] - logits[:, 0], labels)
    assert run(AUC, chunks(logits, labels, 64)) == pytest.approx(expected, abs=1e-6)
    one_logit = logits[:, 1] - logits[:, 0]
    assert AUC.value(one_logit, labels) == pytest.approx(expected, abs=1e-6)
    assert AUC.value(-one_logit, labels) == pytest.approx(1 - expected, abs=1e-6)


def test_auc_of_a_split_with_one_class_is_an_error() -> None:
    with pytest.raises(ValueError, match="both classes"):
        AUC.value(torch.randn(5), torch.ones(5, dtype=torch.long))


def test_accuracy_and_mae_are_their_formulas_whatever_the_batching() -> None:
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(301, 7, generator=g), torch.randint(0, 7, (301,), generator=g)
    expected = float((logits.argmax(-1) == labels).double().mean())
    assert run(ACCURACY, chunks(logits, labels, 50)) == pytest.approx(expected, abs=1e-7)  # float32 ratio
    predictions, targets = torch.randn(301, 3, generator=g), torch.randn(301, 3, generator=g)
    expected = float((predictions.double() - targets.double()).abs().mean())
    assert run(MAE, chunks(predictions, targets, 50)) == pytest.approx(expected, rel=1e-12)
    assert MAE.start().count == 0
    with pytest.raises(ValueError, match="empty"):
        MAE.start().compute()


WORKER = textwrap.dedent(
    """
    import json, sys
    import torch, torch.distributed as dist
    from dynamtl.metrics import ACCURACY, AUC, MAE
    from dynamtl.metrics_dense import error_metrics, segmentation_metrics

    dist.init_process_group("gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(0)  # every process draws the whole split, then keeps its shard
    split = {
        "auc": (torch.randn(90, 2, generator=g), torch.randint(0, 2, (90,), generator=g)),
        "accuracy": (torch.randn(90, 5, generator=g), torch.randint(0, 5, (90,), generator=g)),
        "mae": (torch.randn(90, 2, generator=g), torch.randn(90, 2, generator=g)),
        "miou": (torch.randn(4, 3, 5, 6, generator=g), torch.randint(-1, 3, (4, 5, 6), generator=g)),
        "abs_error": (torch.rand(4, 1, 5, 6, generator=g), torch.rand(4, 1, 5, 6, generator=g) - 0.2),
    }
    metrics = {"auc": AUC, "accuracy": ACCURACY, "mae": MAE, "miou": segmentation_metrics(3)[0],
               "abs_error": error_metrics()[0], "rel_error": error_metrics()[1]}
    out = {}
    for name, metric in metrics.items():
        predictions, targets = split["abs_error" if name == "rel_error" else name]
        shard = slice(rank * len(targets) // size, (rank + 1) * len(targets) // size)
        state = metric.start(sync=True)
        state.update(predictions[shard], targets[shard])
        out[name] = state.compute()
    if rank == 0:
        json.dump(out, open(sys.argv[1], "w"))
    dist.destroy_process_group()
    """
)


def test_metrics_synchronise_over_processes(tmp_path) -> None:
    """Two processes, each with half of a split and ``start(sync=True)``, get the metric of
    the whole split (torchmetrics' all-gather over gloo)."""
    script, out = tmp_path / "worker.py", tmp_path / "out.json"
    script.write_text(WORKER)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--rdzv-backend=c10d",
               "--rdzv-endpoint=localhost:0", str(script), str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    synced = json.loads(out.read_text())
    g = torch.Generator().manual_seed(0)
    split = [(torch.randn(90, 2, generator=g), torch.randint(0, 2, (90,), generator=g)),
             (torch.randn(90, 5, generator=g), torch.randint(0, 5, (90,), generator=g)),
             (torch.randn(90, 2, generator=g), torch.randn(90, 2, generator=g)),
             (torch.randn(4, 3, 5, 6, generator=g), torch.randint(-1, 3, (4, 5, 6), generator=g)),
             (torch.rand(4, 1, 5, 6, generator=g), torch.rand(4, 1, 5, 6, generator=g) - 0.2)]
    whole = {
        "auc": AUC.value(*split[0]), "accuracy": ACCURACY.value(*split[1]), "mae": MAE.value(*split[2]),
        "miou": segmentation_metrics(3)[0].value(*split[3]), "abs_error": error_metrics()[0].value(*split[4]),
        "rel_error": error_metrics()[1].value(*split[4]),
    }
    halves = {"mae": run(MAE, [(split[2][0][:45], split[2][1][:45])])}
    assert halves["mae"] != pytest.approx(whole["mae"])  # a shard alone differs: the sync matters
    for name, value in whole.items():
        assert synced[name] == pytest.approx(value, abs=1e-6), name
