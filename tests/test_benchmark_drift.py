"""The relevance-drift benchmark: its generator, and HydaLearn's per-batch reaction to it."""

from __future__ import annotations

import math

import pytest
import torch

import dynamtl as dm
from dynamtl.benchmarks.drift import RelevanceDrift


def _correlation(a, b):
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


def _least_squares(x, y):
    return torch.linalg.lstsq(x.double(), y.double()).solution.flatten()


def _cosine(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def test_shapes_types_and_limit(tmp_path):
    bench = RelevanceDrift(features=8, train_size=300, val_size=50, test_size=70)
    s = bench.splits(tmp_path, seed=0)
    for data, n in ((s.train, 300), (s.val, 50), (s.test, 70)):
        assert data.inputs.shape == (n, 8) and data.inputs.dtype == torch.float32
        assert {k: tuple(v.shape) for k, v in data.targets.items()} == {"main": (n, 1), "aux": (n, 1)}
    assert bench.helpful(0, "val").dtype == torch.bool and bench.helpful(0, "test").shape == (70,)
    small = bench.splits(tmp_path, seed=0, limit=40)
    assert len(small.train) == 40 and bench.helpful(0, limit=40).shape == (40,)
    assert torch.equal(small.test.inputs, s.test.inputs) and torch.equal(small.val.targets["aux"], s.val.targets["aux"])
    assert list(tmp_path.iterdir()) == []  # nothing is written


def test_the_seed_fixes_the_data(tmp_path):
    bench = RelevanceDrift(train_size=500)
    a, b, c = (bench.splits(tmp_path, seed) for seed in (3, 3, 4))
    assert torch.equal(a.train.inputs, b.train.inputs) and torch.equal(a.test.targets["aux"], b.test.targets["aux"])
    assert torch.equal(bench.helpful(3), bench.helpful(3))
    assert not torch.equal(a.train.inputs, c.train.inputs) and not torch.equal(bench.helpful(3), bench.helpful(4))


def test_helpful_share_drifts_along_the_stream_as_documented():
    n, windows = 40_000, 20
    bench = RelevanceDrift(train_size=n, cycles=1.0)
    assert bench.helpful_share(torch.tensor([0.0, 0.25, 0.5, 1.0])).tolist() == pytest.approx([1.0, 0.5, 0.0, 1.0])
    helpful = bench.helpful(0).float().reshape(windows, -1)
    expected = bench.helpful_share(torch.arange(n) / n).reshape(windows, -1).mean(1)
    observed = helpful.mean(1)
    spread = (expected * (1 - expected) / helpful.shape[1]).sqrt().clamp(min=1e-3)
    assert bool(((observed - expected).abs() < 5 * spread + 1e-3).all())
    assert observed[0] > 0.95 and observed[windows // 2 - 1 : windows // 2 + 1].max() < 0.05
    for split in ("val", "test"):
        assert (
            abs(float(RelevanceDrift(val_size=20_000, test_size=20_000).helpful(0, split).float().mean()) - 0.5) < 0.02
        )
    eighths = RelevanceDrift(train_size=n, cycles=2.0).helpful(0).float().reshape(8, -1).mean(1)
    assert ((eighths > 0.7) == torch.tensor([1, 0, 0, 1, 1, 0, 0, 1], dtype=torch.bool)).all()
    assert ((eighths < 0.3) == torch.tensor([0, 1, 1, 0, 0, 1, 1, 0], dtype=torch.bool)).all()


@pytest.mark.parametrize("cosine", [0.0, -1.0, 0.5])
def test_main_and_aux_relate_per_regime(cosine, tmp_path):
    bench = RelevanceDrift(train_size=30_000, harmful_cosine=cosine, main_noise=0.5, aux_noise=0.1)
    s = bench.splits(tmp_path, seed=1)
    helpful = bench.helpful(1)
    x, main, aux = s.train.inputs, s.train.targets["main"], s.train.targets["aux"]
    scale = math.sqrt((1 + 0.5**2) * (1 + 0.1**2))  # Var(w·x) = 1, unit directions
    assert _correlation(main[helpful], aux[helpful]) == pytest.approx(1 / scale, abs=0.02)
    assert _correlation(main[~helpful], aux[~helpful]) == pytest.approx(cosine / scale, abs=0.02)
    w = _least_squares(x, main)
    assert _cosine(w, _least_squares(x[helpful], aux[helpful])) > 0.99
    assert _cosine(w, _least_squares(x[~helpful], aux[~helpful])) == pytest.approx(cosine, abs=0.02)
    assert float(_least_squares(x[~helpful], aux[~helpful]).norm()) == pytest.approx(1.0, abs=0.02)


def test_interface_and_errors(tmp_path):
    bench = RelevanceDrift()
    assert bench.primary == ("main",) and set(bench.specs) == {"main", "aux"}
    assert bench.defaults.extra["shuffle"] == 0.0
    assert [m.name for m in bench.specs["main"].metrics] == ["mae"]
    out = bench.model({"main": 1, "aux": 1, "noise": 10})(torch.zeros(5, 16))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"main": (5, 1), "aux": (5, 1), "noise": (5, 10)}
    with pytest.raises(ValueError, match=r"harmful_cosine must lie in \[-1, 1\)"):
        RelevanceDrift(harmful_cosine=1.0)
    with pytest.raises(ValueError, match="features must be >= 2"):
        RelevanceDrift(features=1)
    with pytest.raises(ValueError, match="train_size must be >= 1"):
        RelevanceDrift(train_size=0)
    with pytest.raises(ValueError, match=r"split must be one of \['train', 'val', 'test'\]"):
        bench.helpful(0, "validation")
    with pytest.raises(ValueError, match=r"limit .* must be >= 1"):
        bench.splits(tmp_path, 0, limit=0)


@pytest.fixture
def one_thread():
    """A tiny MLP runs fastest on one thread (two threads only add synchronisation)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("gain", ["lookahead", "first_order"])
def test_hydalearn_weighs_the_aux_task_up_on_helpful_batches(gain, tmp_path, one_thread):
    """HydaLearn's claim: the per-batch auxiliary weight follows the auxiliary task's
    usefulness. 256 steps over the time-ordered stream (two cycles of helpfulness); the
    batches that are at least 75 % helpful must get a clearly larger auxiliary weight than
    those at most 25 % helpful.

    Both heads start from the same parameters: with independent random heads the sign of
    the auxiliary gain at the first steps is a coin toss over initialisations, and with
    ``floor=0`` an auxiliary head that gets no weight never learns to read the trunk.
    Adam at 3e-4 keeps the main task learning for the whole run; once it has fitted its
    data, the gains on the current batch are noise for every weighting."""
    bench = RelevanceDrift(cycles=2.0)
    n, batch = 16_384, 64
    data = bench.splits(tmp_path, seed=0, limit=n).train
    helpful = bench.helpful(0, limit=n).float()
    torch.manual_seed(0)
    model = bench.model({"main": 1, "aux": 1})
    model.heads["aux"].load_state_dict(model.heads["main"].state_dict())
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
    mtl = dm.MultiTask(model, bench.tasks(), optimizer, weighting=dm.HydaLearn(main="main", gain=gain))
    shares, aux_weights = [], []
    for start in range(0, n, batch):  # in time order, no shuffling
        rows = slice(start, start + batch)
        info = mtl.step((data.inputs[rows], {t: y[rows] for t, y in data.targets.items()}))
        shares.append(float(helpful[rows].mean()))
        aux_weights.append(float(info.weights[1]))
    share, weight = torch.tensor(shares), torch.tensor(aux_weights)
    mostly_helpful, mostly_harmful = weight[share >= 0.75], weight[share <= 0.25]
    assert len(mostly_helpful) > 50 and len(mostly_harmful) > 50
    assert float(mostly_helpful.mean()) > 3 * float(mostly_harmful.mean())
    assert float(mostly_helpful.mean()) > 0.25
    assert _correlation(share, weight) > 0.4


def test_clean_eval_removes_the_label_noise_of_validation_and_test_only(tmp_path):
    options = {"features": 8, "train_size": 2000, "val_size": 300, "test_size": 400, "main_noise": 2.0}
    noisy = RelevanceDrift(**options).splits(tmp_path, seed=5)
    clean = RelevanceDrift(**options, clean_eval=True).splits(tmp_path, seed=5)
    assert torch.equal(clean.train.targets["main"], noisy.train.targets["main"])  # training labels keep the noise
    for split in ("train", "val", "test"):
        a, b = getattr(noisy, split), getattr(clean, split)
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets["aux"], b.targets["aux"])
    w = _least_squares(noisy.train.inputs, noisy.train.targets["main"])  # ≈ the main direction
    for split in ("val", "test"):
        x, main = getattr(clean, split).inputs, getattr(clean, split).targets["main"]
        exact = _least_squares(x, main)
        assert float((x.double() @ exact - main.double().flatten()).abs().max()) < 1e-4  # noise-free and linear
        assert float(exact.norm()) == pytest.approx(1.0, abs=1e-4) and _cosine(exact, w) > 0.99
        residual = getattr(noisy, split).targets["main"] - main
        assert float(residual.std()) == pytest.approx(2.0, rel=0.15)  # what clean_eval removed: σ_m ε


def test_a_short_noisy_main_stream_needs_the_auxiliary_labels(tmp_path):
    """The documented setting where the auxiliary task is needed: the helpful samples' clean
    auxiliary labels give the main direction far better than the noisy main labels do."""
    bench = RelevanceDrift(features=32, train_size=1024, main_noise=3.0, clean_eval=True)
    s = bench.splits(tmp_path, seed=0)
    helpful = bench.helpful(0)
    x, main, aux = s.train.inputs, s.train.targets["main"], s.train.targets["aux"]
    truth = _least_squares(s.test.inputs, s.test.targets["main"])
    from_main = _cosine(_least_squares(x, main), truth)
    from_aux = _cosine(_least_squares(x[helpful], aux[helpful]), truth)
    assert from_main < 0.97 and from_aux > 0.999
