"""Per-sample BN statistics: mixed-domain batches, batch independence, mixtures, any BN model."""

import torch

from dynbn import bn_table
from dynbn.models import torchvision_model
from dynbn.per_sample import DomainBatchNorm2d, DomainSwitch


def _table(model, frames):
    dark = frames * 0.5
    noisy = (frames + 0.15 * torch.randn(frames.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    table = bn_table.calibrate(model, {"clean": frames[:128], "dark": dark[:128], "noise": noisy[:128]})
    return table, dark, noisy


def test_mixed_batch_equals_hot_swapped_single_domain_forwards(resnet20, frames):
    table, dark, noisy = _table(resnet20, frames)
    x = torch.cat([frames[:4], dark[:4], noisy[:4]])
    domains = ["clean"] * 4 + ["dark"] * 4 + ["noise"] * 4
    switch = DomainSwitch(resnet20, table)
    mixed = switch.forward(x, switch.index(domains))
    for d, rows in (("clean", slice(0, 4)), ("dark", slice(4, 8)), ("noise", slice(8, 12))):
        bn_table.swap(resnet20, table, d)
        with torch.no_grad():
            alone = resnet20(x[rows])
        assert (mixed[rows] - alone).abs().max() < 1e-4


def test_a_frames_logits_do_not_depend_on_its_batch_mates(resnet20, frames):
    table, dark, noisy = _table(resnet20, frames)
    switch = DomainSwitch(resnet20, table)
    g = torch.Generator().manual_seed(1)
    pool = torch.cat([frames[:32], dark[:32], noisy[:32]])
    dom = torch.arange(3).repeat_interleave(32)
    target = 5
    alone = switch.forward(pool[target:target + 1], dom[target:target + 1])
    for _ in range(5):
        mates = torch.randperm(len(pool), generator=g)[:31]
        idx = torch.cat([torch.tensor([target]), mates])
        out = switch.forward(pool[idx], dom[idx])
        assert (out[0] - alone[0]).abs().max() < 1e-4


def test_switch_is_in_place_and_plain_bn_is_unchanged(resnet20, frames):
    before = resnet20(frames[:8]).detach()
    keys = list(resnet20.state_dict())
    bn = resnet20.net.bn1
    params = id(bn.weight)
    table, _, _ = _table(resnet20, frames)
    DomainSwitch(resnet20, table)
    assert isinstance(resnet20.net.bn1, DomainBatchNorm2d) and resnet20.net.bn1 is bn and id(bn.weight) == params
    with torch.no_grad():
        assert torch.equal(resnet20(frames[:8]), before)  # no selection: ordinary BN
    assert list(resnet20.state_dict()) == keys


def test_one_hot_weights_equal_hard_selection_and_mixture_moments(resnet20, frames):
    table, dark, _ = _table(resnet20, frames)
    switch = DomainSwitch(resnet20, table)
    x = dark[:6]
    hard = switch.forward(x, torch.full((6,), 1))
    soft = switch.forward(x, weights=torch.tensor([[0.0, 1.0, 0.0]]).repeat(6, 1))
    assert (hard - soft).abs().max() < 1e-4
    half = switch.forward(x, weights=torch.tensor([[0.5, 0.5, 0.0]]).repeat(6, 1))
    assert not torch.allclose(half, hard, atol=1e-3)


def test_two_switches_on_one_model_keep_their_own_banks(resnet20, frames):
    table, dark, _ = _table(resnet20, frames)
    other = bn_table.calibrate(resnet20, {"clean": frames[128:], "dark": dark[128:], "noise": frames[128:].flip(-1)})
    s1, s2 = DomainSwitch(resnet20, table), DomainSwitch(resnet20, other)
    idx = torch.ones(4, dtype=torch.long)
    first = s1.forward(dark[:4], idx)
    s2.forward(dark[:4], idx)
    assert torch.equal(s1.forward(dark[:4], idx), first)


def test_torchvision_model_mixed_batch_is_batch_independent(frames):
    model = torchvision_model("resnet18")
    table = bn_table.calibrate(model, {"a": frames[:64], "b": (frames[64:128] * 0.3)}, batch_size=64)
    switch = DomainSwitch(model, table)
    x = torch.cat([frames[:3], frames[64:67] * 0.3])
    idx = torch.tensor([0, 0, 0, 1, 1, 1])
    both = switch.forward(x, idx)
    assert (both[:1] - switch.forward(x[:1], idx[:1])).abs().max() < 1e-4
    assert (both[4:5] - switch.forward(x[4:5], idx[4:5])).abs().max() < 1e-4
