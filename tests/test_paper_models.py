"""The paper-scale networks: the real architectures (parameter counts, strides, dilations),
output shapes, which parameters each task's output depends on, and one training step of
each at the paper's width on small inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dynamtl as dm
from dynamtl.benchmarks.cifar100 import SUPERCLASSES, CIFAR100MultiDomain
from dynamtl.benchmarks.nyuv2 import NYUv2
from dynamtl.models import MTAN, ASPPHead, DilatedResNet50, MultiDomainVGG16, SplitNet

RESNET50_TRUNK_PARAMETERS = 23_508_032  # ResNet-50 without its 1000-way classifier
VGG16_CONV_WEIGHTS = 14_710_464  # the 13 convolutions of VGG-16, weights only (batch norm follows)
HEADS = {"seg": 13, "depth": 1, "normal": 3}


def test_dilated_resnet50_is_resnet50_with_output_stride_8():
    encoder = DilatedResNet50().eval()
    assert sum(p.numel() for p in encoder.parameters()) == RESNET50_TRUNK_PARAMETERS
    assert [len(stage) for stage in encoder.stages] == [3, 4, 6, 3] and encoder.channels == (256, 512, 1024, 2048)
    dilations = [stage[1].residual[3].dilation for stage in encoder.stages]
    assert dilations == [(1, 1), (1, 1), (2, 2), (4, 4)]
    assert [stage[0].residual[3].stride for stage in encoder.stages] == [(1, 1), (2, 2), (1, 1), (1, 1)]
    with torch.no_grad():
        assert encoder(torch.zeros(1, 3, 33, 47)).shape == (1, 2048, 5, 6)  # ⌈33/8⌉, ⌈47/8⌉


def test_aspp_head_pools_the_whole_image_and_normalises_unit_outputs():
    head = ASPPHead(16, 3, rates=(1, 2, 3), channels=8, unit=True).eval()
    assert [b[0].dilation for b in head.branches] == [(1, 1), (1, 1), (2, 2), (3, 3)]
    features = torch.randn(2, 16, 5, 6)
    with torch.no_grad():
        out = head(features, (20, 24))
        assert out.shape == (2, 3, 20, 24) and torch.allclose(out.norm(dim=1), torch.ones(2, 20, 24))
        changed = features.clone()
        changed[:, :, 0, 0] += 10.0
        # the far corner sees the change only through the image-level (global pooling) branch
        assert not torch.allclose(head(changed, (20, 24))[:, :, -1, -1], out[:, :, -1, -1])


def _perturbed(model: nn.Module, prefix: str) -> nn.Module:
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith(prefix):
                parameter.add_(0.5)
    return model


@pytest.mark.parametrize("network", [SplitNet, MTAN])
def test_each_task_output_depends_on_its_own_parameters_only(network):
    torch.manual_seed(0)
    model = network(HEADS, unit_heads=("normal",), width=8).eval()
    x = torch.rand(2, 3, 32, 40)
    with torch.no_grad():
        before = model(x)
        own = "attention.depth" if network is MTAN else "heads.depth"
        after = _perturbed(model, own)(x)
        assert torch.equal(after["seg"], before["seg"]) and torch.equal(after["normal"], before["normal"])
        assert not torch.allclose(after["depth"], before["depth"])
        shared = _perturbed(model, "encoder.stages.3")(x)
        assert not torch.allclose(shared["seg"], before["seg"])


def test_mtan_masks_are_sigmoids_in_0_1_on_every_stage():
    torch.manual_seed(0)
    model = MTAN({"seg": 13, "depth": 1}, width=8).eval()
    masks: list[torch.Tensor] = []
    for module in model.attention.modules():
        if isinstance(module, nn.Sigmoid):
            module.register_forward_hook(lambda _m, _i, out: masks.append(out))
    with torch.no_grad():
        model(torch.rand(1, 3, 32, 40))
    assert len(masks) == 2 * 4
    assert all(bool((m > 0).all() and (m < 1).all()) for m in masks)
    assert [m.shape[1] for m in masks[::2]] == [32, 64, 128, 256]  # stage by stage, task by task: 4·width·2^j


@pytest.mark.parametrize("network", ["split", "mtan"])
def test_one_training_step_of_the_dense_networks_at_the_paper_width(network):
    bench = NYUv2(network)
    torch.manual_seed(0)
    model = bench.model(HEADS)
    assert isinstance(model, SplitNet if network == "split" else MTAN)
    d = bench.defaults
    optimizer = torch.optim.SGD(model.parameters(), lr=d.lr, momentum=d.momentum, weight_decay=d.weight_decay)
    mtl = dm.MultiTask(model, bench.tasks(), optimizer)
    x = torch.rand(2, 3, 32, 48)
    targets = {
        "seg": torch.randint(-1, 13, (2, 32, 48)),
        "depth": torch.rand(2, 1, 32, 48),
        "normal": nn.functional.normalize(torch.randn(2, 3, 32, 48), dim=1),
    }
    outputs = model(x)
    assert {t: tuple(o.shape) for t, o in outputs.items()} == {t: (2, c, 32, 48) for t, c in HEADS.items()}
    assert torch.allclose(outputs["normal"].norm(dim=1), torch.ones(2, 32, 48), atol=1e-5)
    watched = [
        "encoder.stem.0.weight",
        "heads.seg.classifier.weight",
        "heads.depth.classifier.weight",
        "heads.normal.fuse.0.weight",
    ]
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n in watched}
    info = mtl.step((x, targets))
    assert bool(torch.isfinite(info.losses).all())
    changed = {n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])}
    assert changed == set(watched)


def test_multidomain_vgg16_keeps_batch_norms_per_domain():
    model = MultiDomainVGG16({"a": 5, "b": 3})
    assert sum(conv.weight.numel() for conv in model.convs) == VGG16_CONV_WEIGHTS and len(model.convs) == 13
    assert model(torch.rand(2, 3, 32, 32), "b").shape == (2, 3)
    assert torch.equal(model.norms[0]["a"].running_mean, torch.zeros(64))  # only domain b's statistics moved
    assert not torch.equal(model.norms[0]["b"].running_mean, torch.zeros(64))
    with pytest.raises(KeyError, match="unknown domain 'c'"):
        model(torch.rand(2, 3, 32, 32), "c")


def test_one_training_step_of_the_multidomain_vgg16_on_twenty_domains():
    bench = CIFAR100MultiDomain()
    torch.manual_seed(0)
    model = bench.model({t: s.out_features for t, s in bench.specs.items()})
    d = bench.defaults
    optimizer = torch.optim.SGD(model.parameters(), lr=d.lr, momentum=d.momentum, weight_decay=d.weight_decay)
    mtl = dm.MultiTask(model, bench.tasks(), optimizer)
    batch = {domain: (torch.randn(2, 3, 32, 32), torch.randint(5, (2,))) for domain in SUPERCLASSES}
    shared = model.convs[0].weight.detach().clone()
    info = mtl.step(batch)
    assert info.losses.shape == (20,) and bool(torch.isfinite(info.losses).all())
    assert not torch.equal(model.convs[0].weight, shared)
    assert all(not torch.equal(model.norms[5][d].weight, torch.ones(256)) for d in SUPERCLASSES)


def test_networks_reject_malformed_heads():
    with pytest.raises(ValueError, match="at least one head"):
        SplitNet({}, width=4)
    with pytest.raises(ValueError, match=r"unit_heads \['normal'\] are not among the heads"):
        MTAN({"seg": 13}, unit_heads=("normal",), width=4)
    with pytest.raises(ValueError, match="head widths must be >= 1"):
        MultiDomainVGG16({"a": 0})
    with pytest.raises(ValueError, match="network must be one of"):
        CIFAR100MultiDomain("split")  # type: ignore[arg-type]
