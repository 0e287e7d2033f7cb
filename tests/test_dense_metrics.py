"""Dense losses and streaming metrics: values on hand-computed cases, independence from the
batching, the median's precision, and the conventions (ignored labels, invalid pixels)."""

from __future__ import annotations

import math

import pytest
import torch

from dynamtl.metrics_dense import (
    IGNORE_INDEX,
    error_metrics,
    normal_loss,
    normal_metrics,
    segmentation_loss,
    segmentation_metrics,
    valid_l1_loss,
)


def _run(metric, batches):
    state = metric.start()
    for predictions, targets in batches:
        state.update(predictions, targets)
    return state.compute()


def _logits(predicted: torch.Tensor, classes: int) -> torch.Tensor:
    """Logits [N, C, H, W] whose arg-max is ``predicted`` [N, H, W]."""
    return torch.nn.functional.one_hot(predicted, classes).permute(0, 3, 1, 2).float()


def test_miou_and_pixel_accuracy_on_a_hand_computed_case_split_over_two_batches():
    # 3 classes; ignored pixels (-1) count nowhere, whatever is predicted there.
    target = torch.tensor([[[0, 0, 1, 1], [2, 2, -1, -1]], [[0, 1, 1, 2], [2, 2, 2, -1]]])
    predicted = torch.tensor([[[0, 1, 1, 1], [2, 0, 2, 0]], [[0, 1, 2, 2], [2, 2, 1, 1]]])
    # confusion (rows target, cols prediction): class 0: [2, 1, 0]; class 1: [0, 3, 1];
    # class 2: [1, 1, 4]  -> IoU0 = 2/(3+3-2) = 1/2, IoU1 = 3/(4+5-3) = 1/2, IoU2 = 4/(6+5-4) = 4/7
    miou, accuracy = segmentation_metrics(3)
    batches = [(_logits(predicted[i : i + 1], 3), target[i : i + 1]) for i in range(2)]
    assert _run(miou, batches) == pytest.approx((0.5 + 0.5 + 4 / 7) / 3)
    assert _run(accuracy, batches) == pytest.approx(9 / 13)
    assert _run(miou, [(_logits(predicted, 3), target)]) == pytest.approx(_run(miou, batches))
    assert miou.higher_is_better and accuracy.higher_is_better
    assert (miou.name, accuracy.name) == ("miou", "pixel_accuracy")


def test_miou_leaves_out_classes_absent_from_targets_and_predictions():
    target = torch.tensor([[[0, 1]]])
    miou, _ = segmentation_metrics(5)
    assert _run(miou, [(_logits(torch.tensor([[[0, 1]]]), 5), target)]) == 1.0
    # a class only predicted counts (IoU 0): classes 0 (1/2), 1 (1/1), 3 (0/1)
    predicted = torch.tensor([[[0, 1, 3]]])
    assert _run(miou, [(_logits(predicted, 5), torch.tensor([[[0, 1, 0]]]))]) == pytest.approx(0.5)


def test_segmentation_metrics_reject_labels_out_of_range_and_splits_without_labels():
    miou, _ = segmentation_metrics(3)
    state = miou.start()
    with pytest.raises(ValueError, match=r"outside 0\.\.2"):
        state.update(torch.zeros(1, 3, 1, 2), torch.tensor([[[0, 3]]]))
    with pytest.raises(ValueError, match="logits"):
        state.update(torch.zeros(1, 4, 1, 2), torch.tensor([[[0, 1]]]))
    state.update(torch.zeros(1, 3, 1, 2), torch.full((1, 1, 2), IGNORE_INDEX))
    with pytest.raises(ValueError, match="no labelled pixel"):
        state.compute()


def test_depth_errors_average_over_all_valid_pixels_of_the_split():
    absolute, relative = error_metrics()
    # batch 1: one valid pixel (error 1 at depth 2), one invalid (target 0, huge error ignored)
    # batch 2: three valid pixels (errors 0, 2, 3 at depths 1, 4, 6)
    batches = [
        (torch.tensor([[[[3.0, 100.0]]]]), torch.tensor([[[[2.0, 0.0]]]])),
        (torch.tensor([[[[1.0, 2.0, 9.0]]]]), torch.tensor([[[[1.0, 4.0, 6.0]]]])),
    ]
    assert _run(absolute, batches) == pytest.approx((1 + 0 + 2 + 3) / 4)  # not the batch mean (1 + 5/3)/2
    assert _run(relative, batches) == pytest.approx((1 / 2 + 0 + 2 / 4 + 3 / 6) / 4)
    assert not absolute.higher_is_better and not relative.higher_is_better
    with pytest.raises(ValueError, match="no pixel with a measurement"):
        _run(absolute, [(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))])


def _normals_at(angles_degrees):
    """Predictions at the given angles from the target (1, 0, 0), in the x-y plane, as
    [1, 3, 1, K] maps (predictions scaled by 3: the metrics normalise them)."""
    radians = torch.deg2rad(torch.tensor(angles_degrees, dtype=torch.float64))
    predictions = 3 * torch.stack([torch.cos(radians), torch.sin(radians), torch.zeros_like(radians)])
    targets = torch.zeros_like(predictions)
    targets[0] = 1.0
    return predictions[None, :, None, :].float(), targets[None, :, None, :].float()


def test_normal_angle_metrics_on_a_hand_computed_case_with_an_invalid_pixel():
    predictions, targets = _normals_at([0.0, 10.0, 20.0, 45.0, 90.0, 60.0])
    targets[..., -1] = 0.0  # unknown normal: the 60° pixel does not count
    values = {m.name: _run(m, [(predictions, targets)]) for m in normal_metrics()}
    assert values["mean_angle"] == pytest.approx(33.0, abs=1e-4)
    assert values["median_angle"] == pytest.approx(20.0, abs=0.005 + 1e-6)  # lower median of 5 values
    assert values["within_11.25"] == pytest.approx(2 / 5)
    assert values["within_22.5"] == pytest.approx(3 / 5)
    assert values["within_30"] == pytest.approx(3 / 5)
    higher = {m.name: m.higher_is_better for m in normal_metrics()}
    assert higher == {
        "mean_angle": False, "median_angle": False, "within_11.25": True, "within_22.5": True, "within_30": True
    }


def test_median_angle_is_within_half_a_bin_of_the_exact_lower_median():
    generator = torch.Generator().manual_seed(0)
    angles = (torch.rand(2, 5001, generator=generator, dtype=torch.float64) ** 2 * 120.0).tolist()
    median = next(m for m in normal_metrics() if m.name == "median_angle")
    batches = [_normals_at(chunk) for chunk in angles]
    exact = torch.tensor(angles).flatten().median().item()  # lower median of 10,002 values
    assert _run(median, batches) == pytest.approx(exact, abs=0.005 + 1e-4)


def test_segmentation_loss_ignores_unlabelled_pixels_and_is_zero_without_labels():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    labels = torch.tensor([[[0, -1], [2, -1]]])
    expected = torch.nn.functional.cross_entropy(logits[0, :, [0, 1], [0, 0]].T, torch.tensor([0, 2]))
    assert segmentation_loss(logits, labels).item() == pytest.approx(expected.item())
    empty = segmentation_loss(logits, torch.full((1, 2, 2), IGNORE_INDEX))
    assert empty.item() == 0.0 and empty.requires_grad


def test_valid_l1_and_normal_losses_on_hand_computed_cases():
    assert valid_l1_loss(torch.tensor([[[[3.0, 7.0, 1.0]]]]), torch.tensor([[[[2.0, 0.0, 4.0]]]])).item() == 2.0
    predictions, targets = _normals_at([0.0, 60.0, 90.0])
    targets[..., 2] = 0.0  # the 90° pixel is unknown
    assert normal_loss(predictions, targets).item() == pytest.approx(1 - (1 + math.cos(math.pi / 3)) / 2)
