"""The trainer with aggregations that keep state over steps (MoCo) or read three mini-batches
per step (SDMGrad, with Auto-Lambda's meta batches as well): the extra batches come from a
seeded stream of the training split whose position is checkpointed, so a run resumed from a
mid-epoch checkpoint ends bit for bit like the uninterrupted run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dynamtl.train import RunConfig, resume, train
from dynamtl.train.checkpoint import load
from tests.states import assert_same_state
from tests.test_trainer import one_thread, records  # noqa: F401  (one_thread: an autouse fixture)


def interrupted_copy(run: Path, out: Path) -> Path:
    """``run`` as it was when killed right after its next-to-last checkpoint: that checkpoint
    as the last one, its logs longer than the checkpoint (the resume cuts them back), no
    results."""
    shutil.copytree(run, out, ignore=shutil.ignore_patterns("results.json", "model.pt", "plots"))
    (out / "checkpoints" / "previous.pt").replace(out / "checkpoints" / "last.pt")
    return out


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("auto-lambda+sdmgrad", {}),
        ("moco", {}),
        # the other methods with state over steps, composed so that each half carries some
        ("excess-mtl+modo", {}),
        ("db-mtl+cr-mogm", {}),
        ("imtl-l+gradvac", {"granularity": "layer"}),
    ],
)
def test_a_resumed_run_ends_bit_for_bit_like_the_uninterrupted_one(tmp_path, method, options):
    config = RunConfig(benchmark="drift", limit=256, batch_size=64, epochs=2, method=method, options=options,
                       checkpoint_every=3)
    reference = tmp_path / "reference"
    results = train(config, reference, progress=False)
    saved = load(reference / "checkpoints" / "previous.pt")
    assert saved["position"]["epoch"] == 1 and saved["position"]["batch"] > 0  # mid-epoch
    extra = 2 if "sdmgrad" in method or "modo" in method else 0
    assert saved["extra_stream"] == extra * saved["position"]["step"]
    steps = records(reference / "steps.jsonl")
    assert len({s["aggregation_weight/main"] for s in steps}) > 1  # the weights moved
    if "+" in method:
        assert len({s["weight/main"] for s in steps}) > 1

    killed = interrupted_copy(reference, tmp_path / "killed")
    resumed = resume(killed, progress=False)
    assert {k: v for k, v in resumed.items() if k != "seconds"} == {k: v for k, v in results.items() if k != "seconds"}
    ours = [{k: v for k, v in s.items() if k != "seconds"} for s in records(killed / "steps.jsonl")]
    assert ours == [{k: v for k, v in s.items() if k != "seconds"} for s in steps]
    final, expected = load(killed / "checkpoints" / "last.pt"), load(reference / "checkpoints" / "last.pt")
    for part in ("model", "optimizer", "multitask"):
        assert_same_state(final[part], expected[part], part)
