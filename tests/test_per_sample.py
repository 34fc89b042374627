"""Per-sample BN statistics: mixed-domain batches, batch independence, mixtures, any BN model."""

import pytest
import torch
from torch import nn

from dynbn.bn import table as bn_table
from dynbn.bn.per_sample import DomainSwitch, mixture_moments
from dynbn.models import torchvision_model


def _table(model, frames):
    dark = frames * 0.5
    noisy = (frames + 0.15 * torch.randn(frames.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    table = bn_table.calibrate(model, {"clean": frames[:128], "dark": dark[:128], "noise": noisy[:128]})
    return table, dark, noisy


def _tiny(bn: type[nn.BatchNorm2d] = nn.BatchNorm2d):
    """conv -> BN (affine, with running statistics of its own) and a hand-written table of three domains."""
    g = torch.Generator().manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), bn(4)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.rand(4, generator=g) + 0.5)
        model[1].bias.copy_(torch.randn(4, generator=g))
    means = torch.tensor([[0.0, 1.0, -2.0, 0.5], [3.0, -1.0, 0.0, 2.0], [-4.0, 0.5, 1.0, 0.0]])
    variances = torch.tensor([[1.0, 0.5, 2.0, 1.5], [0.2, 3.0, 1.0, 0.7], [2.5, 1.0, 0.3, 4.0]])
    stats = {d: {"1.running_mean": m, "1.running_var": v} for d, m, v in zip("abc", means, variances)}
    return model, bn_table.BNTable(layers=bn_table.fingerprint(model), stats=stats), means, variances


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


def test_a_single_domain_batch_is_bit_identical_to_hot_swapping(resnet20, frames):
    table, dark, _ = _table(resnet20, frames)
    switch = DomainSwitch(resnet20, table)
    out = switch.forward(dark[:8], switch.index(["dark"] * 8))
    bn_table.swap(resnet20, table, "dark")
    with torch.no_grad():
        assert torch.equal(out, resnet20(dark[:8]))


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
        soft = torch.rand(32, 3, generator=g).softmax(1)
        soft[0] = torch.tensor([0.2, 0.3, 0.5])
        mixed = switch.forward(pool[idx], weights=soft)
        assert (mixed[0] - switch.forward(pool[idx[:1]], weights=soft[:1])[0]).abs().max() < 1e-4


def test_switch_leaves_the_model_plain_and_its_state_dict_keys_unchanged(resnet20, frames):
    before = resnet20(frames[:8]).detach()
    keys = list(resnet20.state_dict())
    bn = resnet20.net.bn1
    params = id(bn.weight)
    table, dark, _ = _table(resnet20, frames)
    switch = DomainSwitch(resnet20, table)
    switch.forward(dark[:8], torch.arange(8) % 3)
    switch.forward(dark[:8], weights=torch.full((8, 3), 1 / 3))
    with pytest.raises(RuntimeError):  # a bank of 3 rows, weights over 5: fails inside the patched block
        switch.forward(dark[:8], weights=torch.ones(8, 5))
    assert resnet20.net.bn1 is bn and type(bn) is nn.BatchNorm2d and id(bn.weight) == params
    assert all("forward" not in m.__dict__ for m in resnet20.modules())  # every patch undone, errors included
    with torch.no_grad():
        assert torch.equal(resnet20(frames[:8]), before)
        assert torch.equal(switch.forward(frames[:8]), before)  # no selection: ordinary BN
    assert list(resnet20.state_dict()) == keys


def test_one_hot_weights_equal_hard_selection(resnet20, frames):
    table, dark, _ = _table(resnet20, frames)
    switch = DomainSwitch(resnet20, table)
    x = dark[:6]
    hard = switch.forward(x, torch.tensor([1, 1, 1, 1, 1, 2]))
    soft = switch.forward(x, weights=torch.tensor([[0.0, 1.0, 0.0]] * 5 + [[0.0, 0.0, 1.0]]))
    assert (hard - soft).abs().max() < 1e-4


def test_half_and_half_weights_normalise_every_layer_with_the_mixtures_moments(resnet20, frames):
    """Weights (0.5, 0.5) over clean and dark equal hard selection of one table entry holding, in every BN layer,
    the moments of the 50/50 mixture worked out here: mean = (m1 + m2) / 2, var = (v1 + m1^2 + v2 + m2^2) / 2 - mean^2
    (wider than the average variance when the means differ), through a real network, not only one layer."""
    table, dark, _ = _table(resnet20, frames)
    clean, dim = table.stats["clean"], table.stats["dark"]
    mix = {}
    for layer in table.layers:
        m1, v1 = clean[f"{layer}.running_mean"], clean[f"{layer}.running_var"]
        m2, v2 = dim[f"{layer}.running_mean"], dim[f"{layer}.running_var"]
        mean = (m1 + m2) / 2
        mix[f"{layer}.running_mean"], mix[f"{layer}.running_var"] = mean, (v1 + m1**2 + v2 + m2**2) / 2 - mean**2
    mixed_entry = bn_table.BNTable(layers=table.layers, stats={"mix": mix})
    x = dark[:6]
    half = DomainSwitch(resnet20, table).forward(x, weights=torch.tensor([[0.5, 0.5, 0.0]]).repeat(6, 1))
    expected = DomainSwitch(resnet20, mixed_entry).forward(x, torch.zeros(6, dtype=torch.long))
    assert (half - expected).abs().max() < 1e-4
    averaged = {k: (clean[k] + dim[k]) / 2 for k in mix}  # the mixture of variances: a different normalisation
    wrong = DomainSwitch(resnet20, bn_table.BNTable(layers=table.layers, stats={"avg": averaged}))
    assert (half - wrong.forward(x, torch.zeros(6, dtype=torch.long))).abs().max() > 0.1


def test_mixture_weights_normalise_with_the_moments_of_the_mixture():
    model, table, means, variances = _tiny()
    w = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0], [0.0, 0.6, 0.4]])
    # by hand, per frame b: mean = sum_d w_d mean_d; var = sum_d w_d (var_d + mean_d^2) - mean^2
    mean = torch.stack([sum(w[b, d] * means[d] for d in range(3)) for b in range(3)])
    var = torch.stack([sum(w[b, d] * (variances[d] + means[d] ** 2) for d in range(3)) for b in range(3)]) - mean**2
    # frame 0 worked out on paper, channel 0: mean = 0.3 * 3 + 0.5 * -4 = -1.1,
    # var = 0.2 * 1 + 0.3 * (0.2 + 9) + 0.5 * (2.5 + 16) - 1.21 = 11
    assert torch.allclose(mean[0], torch.tensor([-1.1, 0.15, 0.1, 0.7]), atol=1e-6)
    assert torch.allclose(var[0], torch.tensor([11.0, 2.1025, 2.14, 3.27]), atol=1e-5)
    got_mean, got_var = mixture_moments(w, means, variances)
    assert torch.allclose(got_mean, mean, atol=1e-6) and torch.allclose(got_var, var, atol=1e-5)
    assert (var[0] > w[0] @ variances).all()  # wider than the mixed variances: the means are apart

    x = torch.randn(3, 3, 5, 5, generator=torch.Generator().manual_seed(4))
    out = DomainSwitch(model, table).forward(x, weights=w)
    bn = model[1]
    with torch.no_grad():
        h = model[0](x)
    expect = (h - mean[:, :, None, None]) / (var[:, :, None, None] + bn.eps).sqrt() * bn.weight[:, None, None] \
        + bn.bias[:, None, None]
    assert torch.allclose(out, expect.detach(), atol=1e-5)


def test_rows_and_weights_must_match_the_batch_and_name_known_domains():
    model, table, _, _ = _tiny()
    switch = DomainSwitch(model, table, ["c", "a"])
    assert switch.index(["a", "c", "a"]).tolist() == [1, 0, 1]
    with pytest.raises(KeyError, match="not in the bank"):
        switch.index(["b"])
    x = torch.rand(4, 3, 5, 5)
    with pytest.raises(ValueError, match="3 per-sample domains for a batch of 4"):
        switch.forward(x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="3 per-sample domains for a batch of 4"):
        switch.forward(x, weights=torch.ones(3, 2) / 2)
    with pytest.raises(ValueError, match="not both"):
        switch.forward(x, torch.zeros(4, dtype=torch.long), torch.ones(4, 2) / 2)


def test_a_batchnorm_subclass_is_refused_by_name():
    class Custom(nn.BatchNorm2d):
        pass

    model, table, _, _ = _tiny(Custom)
    with pytest.raises(TypeError, match="plain nn.BatchNorm2d, not Custom"):
        DomainSwitch(model, table)


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
