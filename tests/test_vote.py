"""The temporal vote: the rule as documented, evidence before every switch, per-camera independence."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynbn.vote import DEFAULT_RULE, CameraVote, VoteRule, Votes, replay, step

D = 5
CLEAN = 0  # the clean domain's index in these tests


def discounted(score: np.ndarray, rule: VoteRule, active, clean=CLEAN) -> np.ndarray:
    """The window's score as the rule compares it: clean's entry divided by e^K while a corruption is active."""
    if active is None or active == clean or clean is None:
        return score
    score = score.copy()
    score[clean] *= np.exp(-rule.clean_discount)
    return score / score.sum()


def reference(rule: VoteRule, probs: np.ndarray, clean=CLEAN) -> list[int]:
    """The rule exactly as the module docstring states it, written plainly."""
    active, candidate, count, out = None, None, 0, []
    for t in range(len(probs)):
        score = discounted(probs[max(0, t - rule.window + 1): t + 1].mean(axis=0), rule, active, clean)
        leader = int(np.argmax(score))
        if active is None:
            active = leader
        elif leader != active and score[leader] - score[active] >= rule.margin:
            count = count + 1 if leader == candidate else 1
            candidate = leader
            if count >= rule.hold:
                active, candidate, count = leader, None, 0
        else:
            candidate, count = None, 0
        out.append(active)
    return out


@st.composite
def segment_probs(draw, max_frames=60):
    """A camera's detector output: segments of one true domain, noisy probabilities around it."""
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    lengths = draw(st.lists(st.integers(1, 12), min_size=1, max_size=6))
    truth = np.concatenate([np.full(n, int(rng.integers(D))) for n in lengths])[:max_frames]
    logits = rng.normal(0, draw(st.floats(0.5, 3.0)), (len(truth), D))
    logits[np.arange(len(truth)), truth] += draw(st.floats(0.0, 4.0))
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


rules = st.builds(VoteRule, st.integers(1, 6), st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.8]), st.integers(1, 4),
                  st.sampled_from([0.0, 1.0, 3.0]))


@settings(max_examples=60, deadline=None)
@given(rules, segment_probs(), st.sampled_from([None, CLEAN]))
def test_vote_follows_its_documented_rule(rule, probs, clean):
    assert replay(rule, probs, clean).tolist() == reference(rule, probs, clean)


@settings(max_examples=60, deadline=None)
@given(rules, segment_probs())
def test_every_switch_is_preceded_by_the_evidence_the_rule_requires(rule, probs):
    active = replay(rule, probs, CLEAN)
    for t in range(1, len(active)):
        if active[t] == active[t - 1]:
            continue
        old, new = active[t - 1], active[t]
        assert t + 1 >= rule.hold, "a switch needs `hold` frames of evidence"
        for u in range(t - rule.hold + 1, t + 1):  # the hold frames ending with the switch
            score = discounted(probs[max(0, u - rule.window + 1): u + 1].mean(axis=0), rule, old)
            assert int(np.argmax(score)) == new
            assert score[new] - score[old] >= rule.margin - 1e-12
            if u < t:
                assert active[u] == old  # no earlier switch inside the evidence run


def test_frame_rule_is_per_frame_argmax():
    probs = np.random.default_rng(0).dirichlet(np.ones(D), size=200)
    assert (replay(VoteRule(1, 0.0, 1), probs) == probs.argmax(1)).all()


def test_first_frame_sets_the_active_domain_without_evidence():
    p = np.array([[0.1, 0.6, 0.1, 0.1, 0.1]])
    assert replay(VoteRule(4, 0.5, 3), p).tolist() == [1]


def test_hysteresis_ignores_a_short_burst_and_switches_on_a_sustained_one():
    rule = VoteRule(window=1, margin=0.3, hold=2)
    a, b = np.eye(D)[0] * 0.9 + 0.02, np.eye(D)[1] * 0.9 + 0.02
    burst = np.stack([a, a, b, a, a])
    assert replay(rule, burst).tolist() == [0, 0, 0, 0, 0]
    sustained = np.stack([a, a, b, b, b])
    assert replay(rule, sustained).tolist() == [0, 0, 0, 1, 1]


@settings(max_examples=30, deadline=None)
@given(st.lists(segment_probs(max_frames=30), min_size=1, max_size=4), st.integers(0, 2**31 - 1),
       st.integers(1, 9), rules)
def test_decisions_depend_only_on_the_cameras_own_frames(streams, seed, batch, rule):
    rng = np.random.default_rng(seed)
    order = rng.permutation(np.repeat(np.arange(len(streams)), [len(s) for s in streams]))
    taken = [0] * len(streams)
    rows = []
    for cam in order:  # interleave the cameras, each keeping its own order
        rows.append((cam, streams[cam][taken[cam]]))
        taken[cam] += 1
    votes, got = Votes(rule, D, CLEAN), {c: [] for c in range(len(streams))}
    for start in range(0, len(rows), batch):  # arbitrary batch boundaries
        chunk = rows[start:start + batch]
        out = votes.update([c for c, _ in chunk], np.stack([p for _, p in chunk]))
        for (c, _), a in zip(chunk, out):
            got[c].append(int(a))
    for c, probs in enumerate(streams):
        assert got[c] == replay(rule, probs, CLEAN).tolist()


def test_a_camera_in_a_corruption_needs_the_discount_more_clean_evidence_to_return_to_clean():
    rule = VoteRule(window=1, margin=0.0, hold=1, clean_discount=3.0)

    def frame(clean_lead: float) -> np.ndarray:  # clean leads domain 2 by `clean_lead` logits
        z = np.full(D, -10.0)
        z[CLEAN], z[2] = clean_lead, 0.0
        return np.exp(z) / np.exp(z).sum()

    fog = np.eye(D)[2] * 0.96 + 0.01
    # in a corruption: a 2-logit clean lead is not enough (2 < 3), a 4-logit one is
    assert replay(rule, np.stack([fog, frame(2.0), frame(4.0), frame(2.0)]), CLEAN).tolist() == [2, 2, 0, 0]
    # a clean camera keeps clean on the same 2-logit lead; without the clean index nothing is discounted
    assert replay(rule, np.stack([frame(2.0), frame(2.0)]), CLEAN).tolist() == [0, 0]
    assert replay(rule, np.stack([fog, frame(2.0)]), None).tolist() == [2, 0]
    assert replay(VoteRule(1, 0.0, 1), np.stack([fog, frame(2.0)]), CLEAN).tolist() == [2, 0]


def test_a_clean_index_outside_the_domains_is_refused():
    with pytest.raises(ValueError, match="clean domain index"):
        Votes(DEFAULT_RULE, D, clean=D)


def test_state_is_explicit_and_reset_forgets_it():
    votes = Votes(DEFAULT_RULE, D)
    votes.update(["a", "b"], np.full((2, D), 1 / D))
    assert set(votes.cameras) == {"a", "b"} and isinstance(votes.cameras["a"], CameraVote)
    assert votes.cameras["a"].seen == 1
    votes.reset()
    assert votes.cameras == {}


def test_step_counts_switches():
    state, rule = CameraVote(D, 1), VoteRule(1, 0.0, 1)
    for d in (0, 1, 1, 2):
        step(state, rule, np.eye(D)[d])
    assert state.switches == 2 and state.active == 2


@pytest.mark.parametrize("kw", [dict(window=0), dict(hold=0), dict(margin=-0.1), dict(margin=1.0),
                                dict(clean_discount=-1.0), dict(clean_discount=50.0)])
def test_bad_rules_are_refused(kw):
    with pytest.raises(ValueError):
        VoteRule(**kw)


def test_wrong_probability_shape_is_refused():
    with pytest.raises(ValueError, match="probabilities"):
        Votes(DEFAULT_RULE, D).update([0, 1], np.ones((3, D)) / D)


def test_a_rule_parses_from_text_a_list_or_a_mapping_with_an_optional_clean_discount():
    assert VoteRule.parse("1,0.3,1,3") == VoteRule(1, 0.3, 1, 3.0)
    assert VoteRule.parse("2,0.1,2") == VoteRule(2, 0.1, 2, 0.0)
    assert VoteRule.parse([2, 0.1, 2]) == VoteRule(2, 0.1, 2, 0.0)
    assert VoteRule.parse({"window": 3, "hold": 2}) == VoteRule(3, 0.0, 2, 0.0)
    for bad in ("1,0.2", "1,0.2,1,3,4", "1,0.2,1,-1", "a,b,c"):
        with pytest.raises(ValueError):
            VoteRule.parse(bad)


def test_severity_evidence_is_summed_per_camera_over_its_current_segment():
    votes = Votes(VoteRule(1, 0.0, 1), 3)
    rng = np.random.default_rng(0)
    logp = np.log(rng.dirichlet(np.ones(2), size=(6, 3)))  # 6 frames x 3 domains x 2 severities
    cams = ["a", "b", "a", "a", "b", "a"]
    active = np.array([1, 2, 1, 1, 2, 0])  # camera a: domain 1 for three frames, then 0
    w = votes.levels(cams, active, logp)

    def post(rows, d):
        total = logp[rows, d].sum(0)
        return np.exp(total) / np.exp(total).sum()

    assert np.allclose(w[3], post([0, 2, 3], 1))   # a's segment so far, its own frames only
    assert np.allclose(w[4], post([1, 4], 2))      # b's frames, independent of a's
    assert np.allclose(w[5], post([5], 0))         # a new active domain starts a new sum
    assert np.allclose(w.sum(1), 1)
    with pytest.raises(ValueError, match="severity log-probabilities"):
        votes.levels(cams, active, logp[:, :2])
