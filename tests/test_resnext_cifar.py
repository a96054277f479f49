"""Finlay & Oberman's ResNeXt-34 (2x32) against cfinlay/tulip ``cifar10/models``: shapes,
hand-counted size and depth, identity shortcuts, averaged branches, non-affine units, init.
All inputs are synthetic (torch.rand / torch.randn)."""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustreg.models import Normalize, create_model
from robustreg.models.resnext_cifar import (
    BranchBlock,
    ConvUnit,
    LinearUnit,
    ResNeXtCifar,
)


@pytest.fixture(scope="module")
def model() -> nn.Sequential:
    torch.manual_seed(0)
    return create_model("resnext34_2x32_cifar", 10)


def test_output_shape_and_non_negative_logits(model):
    x = torch.rand(3, 3, 32, 32)  # synthetic images in [0, 1]
    out = model.eval()(x)
    assert out.shape == (3, 10)
    # tulip's head ends in a ReLU (blocks.py:62-63), so its "logits" are never negative
    assert (out >= 0).all()
    assert create_model("resnext34_2x32_cifar", 7).eval()(x[:1]).shape == (1, 7)


def test_input_is_not_standardized(model):
    first = model[0]
    assert isinstance(first, Normalize)
    assert torch.equal(first.mean.flatten(), torch.zeros(3))
    assert torch.equal(first.std.flatten(), torch.ones(3))


def test_parameter_count_by_hand(model):
    def unit(c_in: int, c_out: int, k: int) -> int:
        return c_in * c_out * k * k + c_out  # weight + bias after BN; the BN has no parameters

    def block(c: int) -> int:
        conv0 = c * (2 * c) * 9  # 3x3, C -> 2C
        conv1 = (2 * c) * c * 9  # 3x3, 2C -> 2C in two groups of C -> C
        return conv0 + conv1 + 2 * (2 * (2 * c))  # two affine BNs of 2C, weight and bias

    stem = unit(3, 32, 3)
    stage1 = 5 * block(32)
    stage2 = unit(32, 64, 1) + 5 * block(64)
    stage3 = unit(64, 128, 1) + 5 * block(128)
    head = 128 * 10 + 10
    assert (stem, stage1, stage2, stage3, head) == (896, 185_600, 741_952, 2_962_560, 1290)
    total = stem + stage1 + stage2 + stage3 + head
    assert total == 3_892_298
    assert sum(p.numel() for p in model.parameters()) == total


def test_depth_is_34_weighted_layers(model):
    # every weighted layer is on the main path (no projection shortcuts); a block's two
    # branches share one grouped convolution per layer
    shapes = [p.shape for name, p in model.named_parameters() if p.dim() in (2, 4)]
    three = sum(len(s) == 4 and s[-2:] == (3, 3) for s in shapes)
    one = sum(len(s) == 4 and s[-2:] == (1, 1) for s in shapes)
    linear = sum(len(s) == 2 for s in shapes)
    assert (three, one, linear) == (1 + 15 * 2, 2, 1)
    assert len(shapes) == three + one + linear == 34


def test_stage_layout_and_resolutions(model):
    net = model[1]
    assert isinstance(net.layer0, ConvUnit) and net.layer0.weight.shape == (32, 3, 3, 3)
    stages = list(net.layers)
    assert [len(s) for s in stages] == [5, 7, 7]
    assert all(isinstance(m, BranchBlock) for m in stages[0])
    for stage, c in ((stages[1], 64), (stages[2], 128)):
        transition, pool = stage[0], stage[1]
        assert isinstance(transition, ConvUnit) and transition.relu
        assert transition.weight.shape == (c, c // 2, 1, 1)
        assert isinstance(pool, nn.AvgPool2d) and pool.kernel_size == 2 and pool.stride == 2
        assert all(isinstance(m, BranchBlock) for m in stage[2:])
    x = net.layer0(torch.rand(1, 3, 32, 32))  # synthetic
    sizes = []
    for stage in stages:
        x = stage.eval()(x)
        sizes.append(tuple(x.shape[1:]))
    assert sizes == [(32, 32, 32), (64, 16, 16), (128, 8, 8)]


def test_block_is_identity_plus_mean_of_two_branches():
    torch.manual_seed(1)
    c = 4
    block = BranchBlock(c).double().eval()
    x = torch.randn(2, c, 5, 5, dtype=torch.float64)  # synthetic
    with torch.no_grad():
        block.bn0.running_mean.copy_(torch.randn(2 * c))
        block.bn0.running_var.copy_(torch.rand(2 * c) + 0.5)
        block.bn0.weight.copy_(torch.randn(2 * c))
        block.bn0.bias.copy_(torch.randn(2 * c))
        block.bn1.weight.copy_(torch.randn(2 * c))
        block.bn1.bias.copy_(torch.randn(2 * c))
    # the definition, branch by branch: branch i reads conv0's i-th channel block and
    # owns conv1's i-th group
    h = F.relu(block.bn0(F.conv2d(x, block.conv0.weight, padding=1)))
    branches = []
    for i in range(2):
        part = slice(i * c, (i + 1) * c)
        z = F.conv2d(h[:, part], block.conv1.weight[part], padding=1)
        bn1 = block.bn1
        z = (z - bn1.running_mean[part].view(1, -1, 1, 1)) / torch.sqrt(
            bn1.running_var[part].view(1, -1, 1, 1) + bn1.eps
        )
        branches.append(z * bn1.weight[part].view(1, -1, 1, 1) + bn1.bias[part].view(1, -1, 1, 1))
    expected = F.relu(x + (branches[0] + branches[1]) / 2)
    assert torch.allclose(block(x), expected, atol=1e-12)
    # with the branches silenced the block is relu(x): the shortcut is the identity
    with torch.no_grad():
        block.bn1.weight.zero_()
        block.bn1.bias.zero_()
    assert torch.equal(block(x), F.relu(x))


def test_units_normalize_without_scale_then_add_bias():
    torch.manual_seed(2)
    unit = ConvUnit(3, 4, 3, relu=True).double().eval()
    with torch.no_grad():
        unit.bn.running_mean.copy_(torch.randn(4))
        unit.bn.running_var.copy_(torch.rand(4) + 0.5)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)  # synthetic
    z = F.conv2d(x, unit.weight, padding=1)
    z = (z - unit.bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(
        unit.bn.running_var.view(1, -1, 1, 1) + unit.bn.eps
    )
    assert torch.allclose(unit(x), F.relu(z + unit.bias.view(1, -1, 1, 1)), atol=1e-12)

    head = LinearUnit(5, 3).double().eval()
    with torch.no_grad():
        head.bn.running_mean.copy_(torch.randn(3))
        head.bn.running_var.copy_(torch.rand(3) + 0.5)
    v = torch.randn(4, 5, dtype=torch.float64)  # synthetic
    z = (v @ head.weight.T - head.bn.running_mean) / torch.sqrt(head.bn.running_var + head.bn.eps)
    assert torch.allclose(head(v), F.relu(z + head.bias), atol=1e-12)


def test_batch_norm_affine_only_inside_blocks(model):
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    plain = [m for m in norms if not m.affine]
    affine = [m for m in norms if m.affine]
    # stem, two transitions and the head (tulip's Conv and Linear: affine=False)
    assert len(plain) == 4 and isinstance(plain[-1], nn.BatchNorm1d)
    # two per BranchBlock (blocks.py:278-279: affine=True)
    assert len(affine) == 15 * 2
    for block in (m for m in model.modules() if isinstance(m, BranchBlock)):
        assert block.bn0.affine and block.bn1.affine
    units = [m for m in model.modules() if isinstance(m, (ConvUnit, LinearUnit))]
    assert len(units) == 4 and all(not u.bn.affine for u in units)


def test_initialization_is_uniform_within_one_over_sqrt_fan_in(model):
    net = model[1]
    block = net.layers[2][2]  # 128 channels
    cases = {
        "stem weight": (net.layer0.weight, 3 * 9),
        "stem bias": (net.layer0.bias, 3 * 9),
        "transition weight": (net.layers[2][0].weight, 64),
        "block conv0": (block.conv0.weight, 128 * 9),
        "block conv1 (grouped)": (block.conv1.weight, 128 * 9),
        "head weight": (net.fc.weight, 128),
        "head bias": (net.fc.bias, 128),
    }
    for name, (w, fan_in) in cases.items():
        bound = 1 / math.sqrt(fan_in)
        assert w.abs().max().item() <= bound, name
        if w.numel() >= 1000:  # U(-b, b) has standard deviation b / sqrt(3)
            assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05), name
    assert torch.equal(block.bn0.weight, torch.ones(256))
    assert torch.equal(block.bn1.bias, torch.zeros(256))


def test_forward_backward_on_two_images_is_fast(model):
    model.train()
    x = torch.rand(2, 3, 32, 32)  # synthetic
    start = time.perf_counter()
    loss = F.cross_entropy(model(x), torch.tensor([1, 7]))
    loss.backward()
    assert time.perf_counter() - start < 5.0
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.zero_grad()


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="blocks"):
        ResNeXtCifar(blocks=(5, 0, 5))
    with pytest.raises(ValueError, match="unknown architecture"):
        create_model("resnext34_2x32", 10)
