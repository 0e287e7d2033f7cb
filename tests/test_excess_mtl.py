"""ExcessMTL against its definition on hand-computed risks, its warm-up, its direction of
change, its state and its options."""

import copy

import pytest
import torch
import torch.nn.functional as F

import dynamtl as dm

F64 = torch.float64


def rows(seed, scale=(1.0, 1.0, 1.0)):
    j = torch.randn(3, 5, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return j * torch.tensor(scale, dtype=F64)[:, None]


def test_two_steps_by_hand():
    """The first step sets the baseline r⁰ and leaves p uniform (r/r⁰ = 1 for every task: the
    official code takes no step on it); the second is the exponentiated step on r/r⁰."""
    eta = 0.3
    w = dm.ExcessMTL(step_size=eta)
    a, b = rows(0), rows(1)
    squares = a * a
    first = (a * a / torch.sqrt(squares + 1e-7)).sum(1)
    p = torch.full((3,), 1 / 3, dtype=F64)
    torch.testing.assert_close(w.update(a), p, rtol=0, atol=0)
    squares = squares + b * b
    second = (b * b / torch.sqrt(squares + 1e-7)).sum(1) / (first + 1e-7)
    p = torch.softmax(p.log() + eta * second, 0)
    torch.testing.assert_close(w.update(b), p)


def test_warmup_keeps_uniform_weights_and_sets_the_baseline():
    w = dm.ExcessMTL(warmup=2)
    for seed in range(2):
        torch.testing.assert_close(w.update(rows(seed)), torch.full((3,), 1 / 3, dtype=F64))
    assert w.baseline is None
    w.update(rows(2))
    assert w.baseline is not None and w.baseline.shape == (3,)


def test_a_task_whose_risk_grows_relative_to_its_baseline_gains_weight():
    w = dm.ExcessMTL(step_size=1.0)
    w.update(rows(0))
    before = w.probabilities.clone()
    after = w.update(rows(1, scale=(1.0, 1.0, 10.0)))  # task 2's gradient suddenly 10x larger
    assert float(after[2] / before[2]) > float(after[0] / before[0])


def test_in_a_step_the_weights_sum_to_the_number_of_tasks_and_the_state_is_saved(make_model):
    weighting = dm.ExcessMTL()
    mtl = dm.MultiTask(make_model(), dm.Tasks({"a": F.mse_loss, "b": F.mse_loss}), None, weighting=weighting)
    x = torch.randn(8, 4, dtype=F64)
    info = mtl.backward((x, {"a": x.sum(1), "b": x[:, 0]}))
    assert float(info.weights.sum()) == pytest.approx(2.0)
    torch.testing.assert_close(info.weights, 2 * weighting.probabilities)
    restored = dm.ExcessMTL().bind(["a", "b"])
    restored.load_state_dict(copy.deepcopy(weighting.state_dict()))
    assert restored.steps == 1 and torch.equal(restored.squares, weighting.squares)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="step_size must be > 0"):
        dm.ExcessMTL(step_size=0.0)
    with pytest.raises(ValueError, match="warmup must be >= 0"):
        dm.ExcessMTL(warmup=-1)


@pytest.mark.parametrize("scale", [1.0, 1e3, 0.1])  # g² ≫ the 1e-7 under the square root
def test_the_weights_do_not_depend_on_the_scale_of_the_gradients(scale):
    """Scale processing (Section 3.2): every step is on r/r⁰, so multiplying every gradient
    by a constant leaves p unchanged, and a run whose raw risks are large (many parameters)
    does not put all of p on one task at its first step."""
    reference, scaled = dm.ExcessMTL(step_size=1.0), dm.ExcessMTL(step_size=1.0)
    for seed in range(4):
        j = rows(seed, scale=(1.0, 3.0, 0.3)).repeat(1, 200)  # raw risks of order 100
        torch.testing.assert_close(scaled.update(scale * j), reference.update(j), rtol=1e-3, atol=1e-8)
    assert float(reference.probabilities.min()) > 0.05


def test_a_zero_first_risk_is_no_baseline_yet():
    """A task whose first present step has a zero gradient (an unlabelled batch under a
    masked-mean loss) takes no baseline then: it keeps its p while the others move, and takes
    its baseline on its first non-zero step (no step for it then); p stays away from 0."""
    w = dm.ExcessMTL(step_size=1.0)
    for seed in (0, 1):
        r = rows(seed)
        r[1] = 0
        p = w.update(r)
        assert p[1] == pytest.approx(1 / 3, abs=1e-15), p  # b has no baseline: keeps its p
    assert not torch.allclose(p, torch.full_like(p, 1 / 3))  # a and c moved on the second step
    assert torch.isnan(w.baseline[1])
    for seed in (2, 3):
        p = w.update(rows(seed))
        assert torch.isfinite(p).all() and torch.all(p > 0.05), p
        assert p.sum() == pytest.approx(1.0)
    assert w.baseline[1] > 0


def test_a_zero_warmup_mean_is_no_baseline_yet():
    w = dm.ExcessMTL(step_size=1.0, warmup=2)
    for k in range(2):
        r = rows(10 + k)
        r[2] = 0
        w.update(r)
    p = w.update(rows(1))
    assert torch.isfinite(w.baseline[2]) and w.baseline[2] > 0  # taken on its first non-zero step
    assert torch.all(p > 0.05), p


def test_p_never_reaches_zero_or_nan_even_with_absent_tasks():
    """A tiny baseline then a normal step makes a huge r̃: p would underflow to exactly 0 and,
    once the leading task is absent, the others' p would be 0/0."""
    w = dm.ExcessMTL(step_size=1.0)
    w.update(rows(0, scale=(1.0, 1e-30, 1.0)))
    p = w.update(rows(1))
    assert torch.all(p > 0) and torch.isfinite(p).all(), p
    here = torch.tensor([True, False, True])
    for seed in range(2, 5):
        p = w.update(rows(seed, scale=(1.0, 0.0, 1.0)), here)
        assert torch.all(p > 0) and torch.isfinite(p).all(), p


def test_in_training_an_unlabelled_first_batch_does_not_hand_all_weight_to_that_task(make_model, make_batch):
    def masked_mse(pred, y):
        mask = ~torch.isnan(y)
        return (((pred - y.nan_to_num()) ** 2) * mask).sum() / mask.sum().clamp(min=1)
    torch.manual_seed(0)
    model = make_model(("a", "b", "c"))
    mtl = dm.MultiTask(model, dm.Tasks(dict.fromkeys("abc", masked_mse)),
                       torch.optim.SGD(model.parameters(), lr=0.01), weighting=dm.ExcessMTL())
    for k in range(4):
        x, ys = make_batch(("a", "b", "c"), seed=k)
        if k == 0:
            ys["b"] = torch.full_like(ys["b"], float("nan"))
        info = mtl.step((x, ys))
        assert all(0.5 < v < 1.5 for v in info.weights.tolist()), (k, info.weights)


def test_bad_rows_or_mask_are_refused_naming_the_class_and_argument():
    """A NaN row would leave that task's statistics and baseline NaN (its p frozen for good);
    a mask of the wrong length or kind would give a raw torch error."""
    w = dm.ExcessMTL()
    bad = rows(0)
    bad[1, 3] = float("nan")
    with pytest.raises(ValueError, match=r"ExcessMTL.update got non-finite gradient rows \[1\]"):
        w.update(bad)
    assert w.squares is None and w.steps == 0  # nothing recorded
    for mask in (torch.tensor([True, False]), torch.tensor([1, 0, 1]), torch.tensor([[True, True, True]])):
        with pytest.raises(ValueError, match=r"ExcessMTL.update's present must be a boolean tensor of shape \[3\]"):
            w.update(rows(0), mask)
    with pytest.raises(ValueError, match=r"ExcessMTL.update takes rows \[T, D\]"):
        w.update(rows(0)[0])


def test_a_small_first_risk_is_a_baseline_and_warmup_is_the_documented_remedy():
    """Documented behaviour (the paper's r⁰): a tiny but non-zero first risk hands p to that
    task; a warm-up whose mean is not tiny keeps p spread."""
    w = dm.ExcessMTL()
    w.update(rows(0, scale=(1.0, 1e-4, 1.0)))
    p = w.update(rows(1))
    assert p[1] > 0.99, p
    w = dm.ExcessMTL(warmup=3)
    w.update(rows(0, scale=(1.0, 1e-4, 1.0)))
    for seed in range(1, 5):
        p = w.update(rows(seed))
    assert torch.all(p > 0.2), p
    assert "warmup" in dm.ExcessMTL.__doc__.split("small but")[1]
