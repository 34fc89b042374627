"""Peer arms from the literature: LAME (Boudiaf et al. 2022) and RoTTA (Yuan et al. 2023)."""

import pytest
import torch

from dynbn.methods import LAME, REGISTRY, RoTTA, Source, build_method
from dynbn.methods.registry import arm_kwargs
from dynbn.methods.lame import rbf_affinity
from dynbn.methods.rotta import MemoryBank

pytestmark = pytest.mark.usefixtures("one_thread")


def test_lame_at_batch_size_one_is_the_source_model(resnet20, frames):
    lame, source = LAME(resnet20), Source(resnet20)
    for i in range(4):
        assert torch.equal(lame(frames[i:i + 1], ["cam"]), source(frames[i:i + 1], ["cam"]))


def test_lame_leaves_the_model_unchanged(resnet20, frames):
    state = {k: v.clone() for k, v in resnet20.state_dict().items()}
    lame = LAME(resnet20)
    lame(frames[:32])
    lame(frames[32:40])
    assert all(torch.equal(v, resnet20.state_dict()[k]) for k, v in state.items())
    assert all(not m._forward_hooks and "forward" not in m.__dict__ for m in resnet20.modules())


@pytest.mark.parametrize("affinity", ["rbf", "knn"])
def test_lame_makes_near_duplicates_agree(resnet20, frames, affinity):
    # six noisy copies of frame 8 (each the others' nearest neighbours) among ten other frames
    dup = (frames[8:9] + 0.04 * torch.randn((6, 3, 32, 32), generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    x = torch.cat([dup, frames[100:110]])
    source = Source(resnet20)(x).argmax(1)[:6]
    assert len(set(source.tolist())) > 1  # the source model splits them
    out = LAME(resnet20, affinity=affinity)(x)
    assert torch.isfinite(out).all()
    assert len(set(out.argmax(1)[:6].tolist())) == 1  # the Laplacian term pulls them to one class


def test_lame_rbf_affinity_follows_the_authors_scale_rule():
    x = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    # distances to the 2nd nearest row counting the row itself: 3, 3, 4 -> s = 10 / 3
    s = 10 / 3
    w = rbf_affinity(x, 2)
    assert torch.allclose(w.diagonal(), torch.ones(3))
    assert torch.allclose(w[1, 2], torch.exp(torch.tensor(-25 / (2 * s * s))))
    assert torch.equal(rbf_affinity(torch.zeros(4, 2), 2), torch.ones(4, 4))  # alike rows: no 0 / 0
    with pytest.raises(ValueError, match="affinity"):
        LAME(torch.nn.Sequential(torch.nn.Linear(2, 2)), affinity="cosine")


def test_rotta_memory_stays_class_balanced_and_bounded():
    bank = MemoryBank(capacity=64, classes=10)
    for i in range(200):  # one class only: it may not take more than its share
        bank.add(torch.zeros(1), 0, 0.1 + (i % 7) / 10)
    assert bank.counts()[0] == 7 and len(bank) == 7
    gen = torch.Generator().manual_seed(0)
    for _ in range(600):  # skewed labels: every class bounded by its share, the bank by its capacity
        label = int(torch.randint(0, 3, (), generator=gen)) if torch.rand((), generator=gen) < 0.7 else \
            int(torch.randint(0, 10, (), generator=gen))
        bank.add(torch.zeros(1), label, float(torch.rand((), generator=gen)) * 2.3)
        assert len(bank) <= 64 and max(bank.counts()) <= 7
    assert len(bank) == 64 and min(bank.counts()) >= 6
    _, ages = bank.contents()
    assert all(a > 0 for a in ages)


def test_rotta_memory_in_the_arm_is_bounded(resnet20, frames):
    arm = RoTTA(resnet20, update_every=32)
    for s in range(0, 96, 16):
        arm(frames[s:s + 16], ["a", "b"] * 8)
        assert len(arm.memory) <= 64 and max(arm.memory.counts()) <= 7


def test_rotta_reset_restores_the_just_built_state(resnet20, frames):
    shared = {k: v.clone() for k, v in resnet20.state_dict().items()}
    arm = RoTTA(resnet20, update_every=16, capacity=16)
    initial = {k: v.clone() for k, v in arm.teacher.state_dict().items()}
    batches = [frames[s:s + 8] for s in range(0, 56, 8)]
    first = [arm(x, [0] * len(x)) for x in batches]
    assert any(not torch.equal(v, arm.teacher.state_dict()[k]) for k, v in initial.items())  # the teacher moved
    assert not torch.allclose(first[-1], Source(resnet20)(batches[-1]))  # and its predictions with it
    arm.reset()
    assert all(torch.equal(v, arm.teacher.state_dict()[k]) for k, v in initial.items())
    assert len(arm.memory) == 0 and arm.frames_seen == 0 and len(arm.optimizer.state) == 0
    again = [arm(x, [0] * len(x)) for x in batches]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    fresh = RoTTA(resnet20, update_every=16, capacity=16)
    assert all(torch.equal(a, fresh(x, [0] * len(x))) for a, x in zip(first, batches))
    assert all(torch.equal(v, resnet20.state_dict()[k]) for k, v in shared.items())  # the shared model untouched


@pytest.mark.parametrize("name", ["lame", "rotta"])
def test_peers_run_as_stream_bench_arms(resnet20, frames, name):
    assert name in REGISTRY
    settings = {"lame": {"knn": 3}, "rotta": {"capacity": 16, "update_every": 8, "betas": [0.9, 0.999]}}[name]
    arm = build_method(name, resnet20, **arm_kwargs(name, settings))
    for size, start in ((1, 0), (5, 1), (7, 6), (1, 13), (16, 14)):  # odd sizes and several cameras, no truth
        x = frames[start:start + size]
        out = arm(x, [f"cam{i % 3}" for i in range(size)], None)
        assert out.shape == (size, 10) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match=name):
        arm_kwargs(name, {"nope": 1})
