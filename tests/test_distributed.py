"""MultiTask under torchrun with DistributedDataParallel equals one process on the global batch.

One ``torchrun --nproc_per_node=2`` launch (gloo, CPU) runs every case of
``tests/distributed_worker.py``; each test reads its results.
"""

import copy
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import dynamtl as dm

WORKER_PATH = Path(__file__).with_name("distributed_worker.py")
_spec = importlib.util.spec_from_file_location("distributed_worker", WORKER_PATH)
assert _spec is not None and _spec.loader is not None
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)

TOLERANCE = 1e-5

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo"
)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("distributed") / "results.json"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        "--rdzv-backend=c10d", "--rdzv-endpoint=localhost:0", str(WORKER_PATH), str(out),
    ]  # fmt: skip
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.fail(f"torchrun exited with {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
    return json.loads(out.read_text())


def result(results: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    """The results of one case; a failure with the traceback if it raised."""
    if "error" in results[name]:
        pytest.fail(f"case {name} raised under torchrun:\n{results[name]['error']}")
    return results[name]


@pytest.mark.parametrize("name", worker.CASES)
def test_parameters_weights_and_state_match_one_process_on_the_global_batch(results, name) -> None:
    found = result(results, name)
    assert found["missing"] == []
    for quantity in ("param_error", "weight_error", "loss_error", "state_error"):
        assert found[quantity] < TOLERANCE, (quantity, found[quantity])


@pytest.mark.parametrize("name", worker.CASES)
def test_every_rank_holds_identical_weights_state_and_parameters(results, name) -> None:
    assert result(results, name)["rank_mismatches"] == []


@pytest.mark.parametrize("name", worker.CASES)
def test_ddp_synchronises_exactly_the_steps_made_of_one_backward_pass(results, name) -> None:
    """Sum's backward and MGDA-UB's are synchronised by DDP; a ``.grad`` formed from averaged
    task gradients is not synchronised again (and DDP does not complain at the next step)."""
    buckets = result(results, name)["ddp_buckets"]
    assert len(buckets) == worker.STEPS
    if worker.CASES[name].one_backward:
        assert all(count >= 1 for count in buckets), buckets
    else:
        assert buckets == [0] * worker.STEPS


def test_pcgrad_draws_identical_task_orders_on_every_rank(results) -> None:
    """The state compared across ranks includes the generator of PCGrad's random orders."""
    found = result(results, "pcgrad")
    assert any("generator" in key for key in found["state_keys"]), found["state_keys"]
    assert found["rank_mismatches"] == []


@pytest.fixture
def one_process_group(tmp_path: Path):
    """A gloo process group of this process alone, for wrapping models in DDP in-process."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("name", ["auto-lambda", "hydalearn", "mgda-upper-bound"])
def test_a_ddp_wrapper_in_one_process_trains_like_its_module(one_process_group, name) -> None:
    """Names, functional evaluations and the representation hook go to the wrapped module."""
    torch.manual_seed(0)
    model = worker.Net().double()
    batches = [worker.global_batch(seed) for seed in range(3)]
    metas = [worker.global_batch(100 + seed) for seed in range(3)]
    plain, _ = worker.train(worker.CASES[name], copy.deepcopy(model), batches, metas)
    wrapped, _ = worker.train(worker.CASES[name], DistributedDataParallel(model), batches, metas)
    assert wrapped.keys() == plain.keys()
    for key, value in plain.items():
        torch.testing.assert_close(wrapped[key], value, rtol=0, atol=1e-12, msg=key)


def test_static_graph_is_refused_with_the_fix(one_process_group) -> None:
    model = DistributedDataParallel(worker.Net().double(), static_graph=True)
    tasks = dm.Tasks(dict.fromkeys(worker.TASKS, torch.nn.functional.mse_loss))
    with pytest.raises(ValueError, match="without static_graph"):
        dm.MultiTask(model, tasks, torch.optim.SGD(model.parameters(), lr=0.1))
