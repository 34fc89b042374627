"""Adaptation methods on the real ResNet-20: registry, exact reset, shared model left alone, per-sample arms."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynbn.bn import table as bn_table
from dynbn.bn.per_sample import DomainSwitch, instance_moments
from dynbn.detector import Detector
from dynbn.methods import BASELINES, REGISTRY, BNAdapt, BNEMA, BNPrior, Source, Tent, UnMixTNS, build_method
from dynbn.methods.dynbn_prior import group_moments, groups_of
from dynbn.open_set import fit_open_set
from dynbn.vote import VoteRule

DOMAINS = ["clean", "dark", "noise"]
STATEFUL = ("bn_ema", "tent", "unmix_tns", "dynbn_vote", "dynbn_open", "dynbn_prior", "rotta")


pytestmark = pytest.mark.usefixtures("one_thread")


def _setup(model, frames, severity: bool = False):
    """A small three-domain table and an untrained (but deterministic) detector over it; with
    ``severity``, the detector carries a severity head (severities 1, 2) and the table its entries."""
    noisy = (frames + 0.15 * torch.randn(frames.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    table = bn_table.calibrate(model, {"clean": frames[:64], "dark": frames[:64] * 0.5, "noise": noisy[:64]})
    torch.manual_seed(0)
    detector = Detector(DOMAINS).eval()
    fit_open_set(detector, torch.cat([frames[:16], frames[:16] * 0.5, noisy[:16]]), torch.arange(3).repeat_interleave(16),
                 noisy[16:48])
    if severity:
        torch.manual_seed(1)
        detector.attach_severity(Detector(["clean", "dark@1", "dark@2", "noise@1", "noise@2"]), (1, 2))
        lighter = (frames + 0.05 * torch.randn(frames.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
        table.stats.update(bn_table.calibrate(model, {"dark@1": frames[:64] * 0.7, "dark@2": frames[:64] * 0.3,
                                                      "noise@1": lighter[:64], "noise@2": noisy[:64]}).stats)
    return table, detector, noisy


def _arms(model, table, detector, **kw):
    return {name: build_method(name, model, table=table, detector=detector, **kw.get(name, {})) for name in REGISTRY}


def _run(method, batches):
    return [method(x, cams, truth) for x, cams, truth in batches]


def _batches(frames, noisy):
    truth = ["clean"] * 4 + ["noise"] * 4
    x = torch.cat([frames[:4], noisy[4:8]])
    return [(x, [0, 1] * 4, truth), (x.flip(0), [1, 0] * 4, truth[::-1]), (frames[8:9], [0], ["clean"])]


def test_registry_builds_every_arm_and_each_returns_logits(resnet20, frames):
    table, det, noisy = _setup(resnet20, frames)
    assert set(BASELINES) < set(REGISTRY)
    for name, arm in _arms(resnet20, table, det).items():
        for x, cams, truth in _batches(frames, noisy):
            out = arm(x, cams, truth)
            assert out.shape == (len(x), 10) and torch.isfinite(out).all(), name
    with pytest.raises(KeyError, match="unknown method"):
        build_method("nope", resnet20)
    with pytest.raises(ValueError, match="needs table"):
        build_method("dynbn_vote", resnet20)


def test_arms_leave_the_shared_model_as_they_found_it(resnet20, frames):
    table, det, noisy = _setup(resnet20, frames)
    state = {k: v.clone() for k, v in resnet20.state_dict().items()}
    with torch.no_grad():
        before = resnet20(frames[:8])
    arms = _arms(resnet20, table, det)  # building an arm leaves the model alone too
    for batch in _batches(frames, noisy):  # interleaved batch by batch, as the benchmark runs them
        for arm in arms.values():
            arm(*batch)
    # bn_adapt's batch_statistics context bumps num_batches_tracked (unused with a set momentum)
    assert all(torch.equal(v, resnet20.state_dict()[k]) for k, v in state.items() if "num_batches" not in k)
    assert all("forward" not in m.__dict__ for m in resnet20.modules())
    with torch.no_grad():
        assert torch.equal(resnet20(frames[:8]), before)


@pytest.mark.parametrize("severity", [False, True])
@pytest.mark.parametrize("name", STATEFUL)
def test_reset_restores_a_method_exactly(resnet20, frames, name, severity):
    table, det, noisy = _setup(resnet20, frames, severity)
    arm = build_method(name, resnet20, table=table, detector=det)
    first = _run(arm, _batches(frames, noisy))
    arm.reset()
    again = _run(arm, _batches(frames, noisy))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    fresh = _run(build_method(name, resnet20, table=table, detector=det), _batches(frames, noisy))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(first, fresh))


def test_tent_adapts_its_own_copy_and_reset_restores_parameters_and_optimizer(resnet20, frames):
    shared = {k: v.clone() for k, v in resnet20.state_dict().items()}
    tent = Tent(resnet20)
    initial = {k: v.clone() for k, v in tent.model.state_dict().items()}
    tent(frames[:16])
    assert any(not torch.equal(v, tent.model.state_dict()[k]) for k, v in initial.items())
    assert len(tent.optimizer.state) > 0
    assert all(torch.equal(v, resnet20.state_dict()[k]) for k, v in shared.items())
    tent.reset()
    assert all(torch.equal(v, tent.model.state_dict()[k]) for k, v in initial.items())
    assert len(tent.optimizer.state) == 0


def test_bn_prior_spans_source_to_batch_statistics(resnet20, frames):
    x = frames[:16]
    assert torch.allclose(BNPrior(resnet20, prior=1e12)(x), Source(resnet20)(x), atol=1e-3)
    zero, adapt = BNPrior(resnet20, prior=0)(x), BNAdapt(resnet20)(x)  # unbiased vs biased batch variance
    assert torch.allclose(zero, adapt, atol=5e-2) and torch.equal(zero.argmax(1), adapt.argmax(1))
    assert torch.isfinite(BNPrior(resnet20)(x[:1])).all()  # usable at batch size 1


def test_bn_ema_with_momentum_one_is_batch_statistics_and_keeps_one_state_per_camera(resnet20, frames):
    x = frames[:16]
    assert torch.allclose(BNEMA(resnet20, momentum=1.0)(x), BNAdapt(resnet20)(x), atol=1e-3)
    ema = BNEMA(resnet20, momentum=0.2)
    ema(frames[16:32] * 0.3, [7] * 16)  # camera 7 sees dark frames
    mixed = ema(torch.cat([frames[:1], frames[1:2]]), [7, 8])
    alone = BNEMA(resnet20, momentum=0.2)(frames[1:2], [8])
    assert torch.allclose(mixed[1], alone[0], atol=1e-5)  # camera 8 is untouched by camera 7's history
    assert set(ema.stats) == {7, 8}


def test_unmix_closed_form_equals_the_authors_per_component_formulation():
    torch.manual_seed(0)
    h, mu, var_k = torch.randn(5, 8, 6, 6) * 2 + 1, torch.randn(16, 8), torch.rand(16, 8) + 0.5
    m, v = instance_moments(h)
    p = ((F.normalize(m, dim=1) @ F.normalize(mu, dim=1).T) / 0.07).softmax(1)[:, :, None]
    mix_mean, mix_var = (1 - p) * mu[None] + p * m[:, None], (1 - p) * var_k[None] + p * v[:, None]
    ref_mean = mix_mean.mean(1)
    ref_var = mix_var.mean(1) + (mix_mean**2).mean(1) - ref_mean**2

    class Layer:  # captures what the method's layer forward normalises with
        weight = bias = None
        eps = 0.0

    method = UnMixTNS.__new__(UnMixTNS)
    method.temperature, method.components = 0.07, {"l": (mu, var_k)}
    out = method._layer("l", Layer, momentum=0.5)(h)
    expect = (h - ref_mean[:, :, None, None]) / ref_var.sqrt()[:, :, None, None]
    assert torch.allclose(out, expect, atol=1e-4)
    new_mu, _ = method.components["l"]
    assert torch.allclose(new_mu, mu + 0.5 * (p * (m[:, None] - mu[None])).mean(0), atol=1e-5)


def test_vote_per_sample_path_equals_domain_switch(resnet20, frames):
    table, det, noisy = _setup(resnet20, frames)
    vote = build_method("dynbn_vote", resnet20, table=table, detector=det, rule=VoteRule(1, 0.0, 1))
    x = torch.cat([frames[:6], noisy[:6]])
    out = vote(x, list(range(12)))  # one camera per frame: each frame's own detection
    ref = DomainSwitch(resnet20, table, DOMAINS).forward(x, vote.last_index)
    assert torch.allclose(out, ref, atol=1e-4)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 2**31 - 1), st.integers(2, 24), st.booleans())
def test_per_sample_arms_do_not_depend_on_batch_mates(resnet20, frames, seed, size, severity):
    table, det, noisy = _setup(resnet20, frames, severity)
    pool, truth = torch.cat([frames[:32], noisy[:32]]), ["clean"] * 32 + ["noise"] * 32
    rng = np.random.default_rng(seed)
    mates = rng.choice(np.arange(1, 64), size - 1, replace=False)
    rows = np.concatenate([[0], mates])
    # dynbn_prior too: it pools only frames of the same camera and voted domain, and the target's camera is alone
    for name in ("dynbn_frame", "dynbn_vote", "dynbn_oracle", "unmix_tns", "dynbn_prior"):
        alone = build_method(name, resnet20, table=table, detector=det)(pool[:1], ["target"], truth[:1])
        cams = ["target"] + [f"c{i % 3}" for i in range(size - 1)]  # the target's camera has no other frame
        batch = build_method(name, resnet20, table=table, detector=det)(pool[rows], cams, [truth[i] for i in rows])
        assert torch.allclose(alone[0], batch[0], atol=1e-4), name


def test_group_moments_are_each_groups_own_statistics():
    h = torch.randn(7, 5, 4, 3, generator=torch.Generator().manual_seed(1)) * 2 + 1
    group, groups = groups_of(["a", "b", "a", "a", "b", "c", "a"], np.array([0, 0, 0, 1, 0, 2, 0]))
    assert group.tolist() == [0, 1, 0, 2, 1, 3, 0] and groups == 4
    mean, var, frames = group_moments(h, group, groups)
    assert frames.tolist() == [3, 2, 1, 1]
    for g in range(groups):
        rows = h[group == g]
        assert torch.allclose(mean[g], rows.mean(dim=(0, 2, 3)), atol=1e-5)
        assert torch.allclose(var[g], rows.transpose(0, 1).reshape(5, -1).var(dim=1), atol=1e-4)  # unbiased


def test_dynbn_prior_spans_the_table_to_the_groups_own_statistics(resnet20, frames):
    table, det, noisy = _setup(resnet20, frames)
    x, cams = torch.cat([frames[:6], noisy[:6]]), ["a"] * 6 + ["b"] * 6
    vote = build_method("dynbn_vote", resnet20, table=table, detector=det)
    far = build_method("dynbn_prior", resnet20, table=table, detector=det, prior=1e12, growth=0)
    assert torch.allclose(far(x, cams), vote(x, cams), atol=1e-3)  # N -> inf: the table alone
    assert torch.equal(far.last_index, vote.last_index)  # the same vote
    zero = build_method("dynbn_prior", resnet20, table=table, detector=det, prior=0, growth=0)
    out = zero(x, cams)
    for cam in ("a", "b"):  # N = 0, one group per camera and voted domain: that group's batch statistics
        rows = [i for i, c in enumerate(cams) if c == cam]
        for d in zero.last_index[rows].unique():
            if det.domains[int(d)] == "clean":
                continue  # clean frames keep the checkpoint's statistics (next test)
            sel = [i for i in rows if zero.last_index[i] == d]
            alone = BNPrior(resnet20, prior=0)(x[sel])
            assert torch.allclose(out[sel], alone, atol=1e-3), (cam, int(d))


def test_dynbn_prior_strength_grows_with_the_group(resnet20, frames):
    """N = N0 + g * n: a group of n frames gets what bn_prior's N : n would give it with N = N0 + g * n."""
    table, det, noisy = _setup(resnet20, frames)
    x = noisy[:12]
    grown = build_method("dynbn_prior", resnet20, table=table, detector=det, prior=6, growth=3)
    out = grown(x, [0] * 12)
    for d in grown.last_index.unique():
        rows = (grown.last_index == d).nonzero().flatten()
        if det.domains[int(d)] == "clean" or len(rows) < 2:
            continue
        fixed = build_method("dynbn_prior", resnet20, table=table, detector=det, prior=6 + 3 * len(rows), growth=0)
        assert torch.allclose(fixed(x, [0] * 12)[rows], out[rows], atol=1e-5)
        other = build_method("dynbn_prior", resnet20, table=table, detector=det, prior=6, growth=0)
        assert not torch.allclose(other(x, [0] * 12)[rows], out[rows], atol=1e-3)  # the growth matters
        break
    else:
        pytest.fail("no corrupted group of two or more frames to compare")
    with pytest.raises(ValueError, match="growth"):
        build_method("dynbn_prior", resnet20, table=table, detector=det, growth=-1)


def test_dynbn_prior_leaves_frames_voted_clean_on_the_clean_entry(resnet20, frames):
    table, det, noisy = _setup(resnet20, frames)
    clean = det.domains.index("clean")
    det.logit_bias[clean] = 100.0  # every frame is voted clean
    x = torch.cat([frames[:8], noisy[:8]])
    prior = build_method("dynbn_prior", resnet20, table=table, detector=det, prior=0, growth=0)  # test statistics only...
    vote = build_method("dynbn_vote", resnet20, table=table, detector=det)
    assert torch.allclose(prior(x, [0] * 16), vote(x, [0] * 16), atol=1e-4)  # ...but not for the clean entry
    assert (prior.last_index == clean).all()


def test_the_vote_applies_its_clean_discount_to_the_clean_domain(resnet20, frames):
    table, det, _ = _setup(resnet20, frames)
    vote = build_method("dynbn_vote", resnet20, table=table, detector=det, rule=VoteRule(1, 0.0, 1, 3.0))
    assert vote.votes.clean == list(det.domains).index("clean")


def test_severity_estimate_mixes_the_voted_corruptions_entries(resnet20, frames):
    table, det, noisy = _setup(resnet20, frames, severity=True)
    x, cams = torch.cat([frames[:4], noisy[:4], frames[4:8] * 0.5]), [0] * 4 + [1] * 4 + [2] * 4
    plain = build_method("dynbn_vote", resnet20, table=table, detector=det, severity=False)
    whole = build_method("dynbn_vote", resnet20, table=table, detector=det, corruption_weight=1.0)
    half = build_method("dynbn_vote", resnet20, table=table, detector=det)
    assert whole.severity and half.severity and not plain.severity
    out = plain(x, cams)
    assert torch.allclose(whole(x, cams), out, atol=1e-5)  # all weight on the corruption's entry: the paper's table
    mixed = half(x, cams)
    assert torch.equal(half.last_index, plain.last_index)  # the severity estimate never changes the vote
    corrupted = torch.tensor([det.domains[int(d)] != "clean" for d in half.last_index])
    assert corrupted.any() and not torch.allclose(mixed[corrupted], out[corrupted], atol=1e-3)
    assert torch.allclose(mixed[~corrupted], out[~corrupted], atol=1e-5)  # clean frames: the clean entry alone
    w = half.last_levels
    assert torch.allclose(w.sum(1), torch.ones(len(x))) and (w[corrupted, 0] == 0.5).all()
    # the mixture's moments, layer by layer, are the weighted mixture of the rows it names
    name = next(iter(half.layers))
    index = half.levels[half.last_index]
    mean, var = half.frame_stats(index, w)[name]
    rows_mean, rows_var = half.stats[name]
    b = int(torch.nonzero(corrupted)[0])
    ref_mean = (w[b, :, None] * rows_mean[index[b]]).sum(0)
    ref_second = (w[b, :, None] * (rows_var[index[b]] + rows_mean[index[b]] ** 2)).sum(0)
    assert torch.allclose(mean[b], ref_mean, atol=1e-5) and torch.allclose(var[b], ref_second - ref_mean**2, atol=1e-4)


def test_frame_severity_arm_reads_each_frame_alone(resnet20, frames):
    """The reproduction's dynbn arm: the detector's argmax per frame and the severity weights of that one frame's
    head, whatever else the batch holds and whatever came before (no evidence pools across frames)."""
    from dynbn.methods import DynBNFrameSeverity

    table, det, noisy = _setup(resnet20, frames, severity=True)
    arm = DynBNFrameSeverity(resnet20, table, det)
    x = torch.cat([frames[:4], noisy[:4], frames[4:8] * 0.5])
    out = arm(x)
    with torch.no_grad():
        assert torch.equal(arm.last_detected, det(x).argmax(1))
    weights = arm.last_levels.clone()
    # one frame at a time, and the batch reversed: the same result per frame
    alone = torch.cat([arm(x[i:i + 1]) for i in range(len(x))])
    assert torch.allclose(alone, out, atol=1e-5)
    assert torch.allclose(arm(x.flip(0)).flip(0), out, atol=1e-5)
    # a frame's weights are its own head's: the same as a fresh dynbn_vote camera's first frame
    vote = build_method("dynbn_vote", resnet20, table=table, detector=det, rule=VoteRule())
    for i in range(len(x)):
        vote.reset()
        assert torch.allclose(vote(x[i:i + 1]), out[i:i + 1], atol=1e-5)
        assert torch.allclose(vote.last_levels[0], weights[i])
    assert (weights[:, 1:].sum(1) > 0).any()  # some frame was read as a corruption and mixed its severity entries
    assert not arm.carries_state and torch.equal(arm.predict(x), build_method("source", resnet20)(x))
    with pytest.raises(ValueError, match="severity head"):
        DynBNFrameSeverity(resnet20, table, _setup(resnet20, frames)[1])


def test_a_severity_detector_needs_the_tables_severity_entries(resnet20, frames):
    table, det, _ = _setup(resnet20, frames, severity=True)
    del table.stats["noise@2"]
    with pytest.raises(ValueError, match=r"lacks the entries \['noise@2'\]"):
        build_method("dynbn_vote", resnet20, table=table, detector=det)
    assert not build_method("dynbn_open", resnet20, table=table, detector=det, severity=False).severity
    plain_table, plain_det, _ = _setup(resnet20, frames)
    assert not build_method("dynbn_prior", resnet20, table=plain_table, detector=plain_det).severity
    with pytest.raises(ValueError, match="severity head"):
        build_method("dynbn_vote", resnet20, table=plain_table, detector=plain_det, severity=True)
    with pytest.raises(ValueError, match="corruption_weight"):
        build_method("dynbn_vote", resnet20, table=plain_table, detector=plain_det, corruption_weight=1.5)


@pytest.mark.parametrize("severity", [False, True])
def test_predict_leaves_every_arm_as_it_was_and_stateless_arms_predict_as_they_forward(resnet20, frames, severity):
    """The real-time protocol's skipped batches: ``predict`` classifies with the current state and changes nothing
    (a run with a predict in between continues exactly as one without it); where nothing carries over from batch
    to batch, the state is the pretrained model's."""
    table, det, noisy = _setup(resnet20, frames, severity)
    first, between, after = _batches(frames, noisy)
    kw = {"rotta": {"update_every": 4}}  # so that frames entering its memory would change the next batches
    for name in REGISTRY:
        plain = build_method(name, resnet20, table=table, detector=det, **kw.get(name, {}))
        probed = build_method(name, resnet20, table=table, detector=det, **kw.get(name, {}))
        assert plain.carries_state == (name in STATEFUL), name
        plain(*first)
        probed(*first)
        once, twice = probed.predict(*between), probed.predict(*between)
        assert torch.equal(once, twice), name
        assert torch.equal(plain(*after), probed(*after)), name
        assert torch.equal(plain(*between), probed(*between)), name
        if not plain.carries_state:
            assert torch.equal(once, build_method("source", resnet20)(*between)), name


def test_dynbn_vote_predicts_with_each_cameras_standing_domain(resnet20, frames):
    """Without the detector: a camera's frames get the domain its vote stands on; a camera never seen, clean."""
    table, det, noisy = _setup(resnet20, frames)
    vote = build_method("dynbn_vote", resnet20, table=table, detector=det)
    oracle = build_method("dynbn_oracle", resnet20, table=table)
    vote(noisy[:6], [0] * 6)
    standing = DOMAINS[int(vote.last_index[-1])]
    x = frames[10:14]
    out = vote.predict(x, [0, 0, 7, 7])
    assert torch.allclose(out, oracle(x, None, [standing, standing, "clean", "clean"]), atol=1e-5)
    assert [c.domain for c in vote.last_conditions()] == [standing, standing, "clean", "clean"]
