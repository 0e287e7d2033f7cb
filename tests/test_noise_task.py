"""WithNoiseTask: a pure-noise auxiliary task added to any benchmark."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dynamtl.benchmarks.drift import RelevanceDrift
from dynamtl.benchmarks.noise import WithNoiseTask
from dynamtl.metrics import ACCURACY


def _bench(**kwargs):
    return WithNoiseTask(RelevanceDrift(train_size=4000, val_size=500, test_size=4000), **kwargs)


def _test_accuracy_of_a_linear_classifier(train_x, train_y, test_x, test_y, classes):
    """Multinomial logistic regression on the inputs and their squares (full-batch LBFGS)."""

    def features(x):
        return torch.cat([x, x**2], dim=1).double()

    torch.manual_seed(0)
    linear = torch.nn.Linear(2 * train_x.shape[1], classes).double()
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=40)

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(linear(features(train_x)), train_y)
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return ACCURACY.value(linear(features(test_x)), test_y)


def test_noise_labels_carry_no_information_about_the_inputs(tmp_path):
    s = _bench(classes=10).splits(tmp_path, seed=0)
    noise_accuracy = _test_accuracy_of_a_linear_classifier(
        s.train.inputs, s.train.targets["noise"], s.test.inputs, s.test.targets["noise"], 10
    )
    assert abs(noise_accuracy - 0.1) < 0.03  # chance; the standard error is 0.005
    # the same classifier does find labels that depend on the inputs: deciles of the main target
    main = {"train": s.train.targets["main"].flatten(), "test": s.test.targets["main"].flatten()}
    edges = main["train"].quantile(torch.linspace(0, 1, 11)[1:-1])
    train_deciles, test_deciles = torch.bucketize(main["train"], edges), torch.bucketize(main["test"], edges)
    decile_accuracy = _test_accuracy_of_a_linear_classifier(
        s.train.inputs, train_deciles, s.test.inputs, test_deciles, 10
    )
    assert decile_accuracy > 0.25
    noise = s.train.targets["noise"].double()
    assert abs(float(torch.corrcoef(torch.stack([noise, main["train"].double()]))[0, 1])) < 0.05


def test_noise_labels_are_uniform_and_fixed_by_the_noise_seed(tmp_path):
    bench = _bench(classes=4, seed=7)
    a, b = bench.splits(tmp_path, seed=0), bench.splits(tmp_path, seed=1)
    counts = torch.bincount(a.train.targets["noise"], minlength=4).double()
    assert a.train.targets["noise"].dtype == torch.int64 and len(counts) == 4
    assert bool(((counts - 1000).abs() < 5 * (4000 * 0.25 * 0.75) ** 0.5).all())
    assert torch.equal(a.train.targets["noise"], b.train.targets["noise"])  # the data seed leaves them alone
    assert torch.equal(
        a.test.targets["noise"], _bench(classes=4, seed=7).splits(tmp_path, seed=0).test.targets["noise"]
    )
    other = _bench(classes=4, seed=8).splits(tmp_path, seed=0).train.targets["noise"]
    assert float((other == a.train.targets["noise"]).double().mean()) < 0.3
    assert not torch.equal(a.val.targets["noise"], a.test.targets["noise"][:500])


def test_the_wrapped_benchmark_is_unchanged(tmp_path):
    inner = RelevanceDrift(train_size=300, val_size=50, test_size=60)
    bench = WithNoiseTask(inner, classes=5)
    plain, noisy = inner.splits(tmp_path, seed=2, limit=100), bench.splits(tmp_path, seed=2, limit=100)
    for p, n in ((plain.train, noisy.train), (plain.val, noisy.val), (plain.test, noisy.test)):
        assert torch.equal(p.inputs, n.inputs) and set(n.targets) == {"main", "aux", "noise"}
        assert torch.equal(p.targets["aux"], n.targets["aux"]) and len(n.targets["noise"]) == len(p)
    assert bench.name == "drift+noise" and bench.primary == ("main",) and bench.defaults is inner.defaults
    assert bench.specs["noise"].out_features == 5 and [m.name for m in bench.specs["noise"].metrics] == ["accuracy"]
    assert bench.tasks().names == ("main", "aux", "noise")
    out = bench.model({t: s.out_features for t, s in bench.specs.items()})(noisy.train.inputs[:3])
    assert tuple(out["noise"].shape) == (3, 5) and tuple(out["main"].shape) == (3, 1)


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="classes must be >= 2"):
        _bench(classes=1)
    with pytest.raises(ValueError, match="already has a task named 'noise'"):
        WithNoiseTask(_bench())
