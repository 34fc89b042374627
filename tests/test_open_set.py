"""Issue 5's arms and streams: the open-set score, dynbn_open's two paths, dynbn_soft's mixing, composed corruptions."""

import numpy as np
import pytest
import torch

from dynbn.bn import table as bn_table
from dynbn.detector import Detector, DetectorConfig, fit
from dynbn.sampling import apply
from dynbn.methods import BNPrior, DynBNFrame, DynBNOpen, DynBNPrior, DynBNSoft
from dynbn.vote import VoteRule
from dynbn.open_set import fit_open_set, move_ramp
from dynbn.experiments.stream_bench import domain_right

DOMAINS = ["clean", "dark", "noise"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def parts(resnet20, frames):
    noisy = (frames + 0.15 * torch.randn(frames.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    table = bn_table.calibrate(resnet20, {"clean": frames[:64], "dark": frames[:64] * 0.5, "noise": noisy[:64]})
    train = torch.cat([frames[:32], frames[:32] * 0.5, noisy[:32]])
    labels = torch.arange(3).repeat_interleave(32)
    detector = fit(train, labels, DOMAINS, DetectorConfig(epochs=5, hidden=(64, 32)))
    held = torch.cat([frames[32:48], frames[32:48] * 0.5, noisy[32:48]])
    evidence = fit_open_set(detector, train, labels, held)
    return resnet20, table, detector, noisy, train, labels, held, evidence


def test_open_set_score_is_the_smallest_gaussian_score_over_domains_and_the_threshold_a_held_out_quantile(parts):
    _, _, det, _, train, labels, held, evidence = parts
    with torch.no_grad():
        h, t = det.penultimate(held).double(), det.penultimate(train).double()
        # each domain's covariance, worked out again: its own shrunk towards the pooled one
        means = torch.stack([t[labels == k].mean(0) for k in range(3)])
        pooled = (t - means[labels]).T @ (t - means[labels]) / len(t)
        covs = [0.9 * torch.cov((t[labels == k] - means[k]).T, correction=0) + 0.1 * pooled
                + 1e-3 * torch.eye(t.shape[1], dtype=torch.float64) for k in range(3)]
        brute = torch.stack([((h - m) @ torch.linalg.inv(c) * (h - m)).sum(1) + torch.logdet(c)
                             for m, c in zip(means, covs)], 1).min(1).values
        _, dist = det.logits_and_distance(held)
    assert evidence["shrink"] == 0.1
    assert torch.allclose(dist.double(), brute, rtol=1e-3, atol=0.5)
    assert evidence["known_kept"] == pytest.approx(0.98, abs=1 / len(held) + 1e-9)
    assert float(det.ood_threshold) == pytest.approx(float(np.quantile(dist.numpy(), 0.98)), rel=1e-6)
    with torch.no_grad():  # frames unlike anything the detector was fitted on: a flat grey and a checkerboard
        odd = torch.stack([torch.full((3, 32, 32), 0.5), (torch.arange(32)[:, None] + torch.arange(32)).remainder(2)
                           .float().expand(3, 32, 32)])
        assert (det.logits_and_distance(odd)[1] > det.ood_threshold).all()
    with pytest.raises(ValueError, match="every domain"):
        fit_open_set(Detector(DOMAINS), train[:32], torch.zeros(32, dtype=torch.long), held)


def test_open_set_survives_save_and_load_and_old_files_load_without_it(parts, tmp_path):
    _, _, det, *_ = parts
    det.save(tmp_path / "d.safetensors")
    back = Detector.load(tmp_path / "d.safetensors")
    assert back.has_open_set and torch.equal(back.ood_precision, det.ood_precision)
    old = Detector(DOMAINS, hidden=(512, 256))  # a file written before the open set existed: no ood_* tensors
    from safetensors.torch import save_file
    import json
    state = {k: v for k, v in old.state_dict().items() if not k.startswith("ood_")}
    save_file(state, str(tmp_path / "old.safetensors"), metadata={"domains": json.dumps(DOMAINS), "height": "32",
              "width": "32", "hidden": "[512, 256]", "eps": "0.001"})
    assert not Detector.load(tmp_path / "old.safetensors").has_open_set
    # a file from before per-domain covariances (one shared precision) scores as it was fitted
    state = {k: v for k, v in det.state_dict().items() if k != "ood_logdet"}
    state["ood_precision"] = det.ood_precision[0].contiguous()
    save_file(state, str(tmp_path / "shared.safetensors"), metadata=det._meta())
    shared = Detector.load(tmp_path / "shared.safetensors")
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        h = shared.penultimate(x)
        p = det.ood_precision[0]
        expected = torch.stack([((h - m) @ p * (h - m)).sum(1) for m in det.ood_means], 1).min(1).values
        assert torch.allclose(shared.logits_and_distance(x)[1], expected, rtol=1e-4, atol=1e-2)


def test_dynbn_open_is_dynbn_prior_on_known_frames_and_bn_prior_on_unknown_ones(parts, frames):
    model, table, det, noisy, *_ = parts
    x, cams = torch.cat([frames[100:104], noisy[104:108]]), [0, 1] * 4
    det.ood_threshold.fill_(1e30)  # nothing is unknown
    det.ood_low.fill_(1e30)        # and no frame on the ramp
    assert torch.allclose(DynBNOpen(model, table, det)(x, cams), DynBNPrior(model, table, det)(x, cams), atol=1e-6)
    det.ood_threshold.fill_(-1e30)  # everything is unknown: per camera, the checkpoint's statistics mixed N : n
    open_ = DynBNOpen(model, table, det)
    expected = torch.empty(len(x), 10)
    for cam in (0, 1):
        rows = [i for i, c in enumerate(cams) if c == cam]
        expected[rows] = BNPrior(model, 6 + 3 * len(rows))(x[rows])  # N = N0 + g n, the defaults
    for _ in range(2):  # no state: the same batch twice gives the same result
        assert torch.allclose(open_(x, cams), expected, atol=1e-4)
    assert open_.last_domains == ["unknown"] * len(x)
    det.ood_threshold.fill_(float("inf"))
    with pytest.raises(ValueError, match="no open-set statistics"):
        DynBNOpen(model, table, det)


def test_dynbn_open_unknown_prior_sets_n_for_unknown_frames_only(parts, frames):
    model, table, det, noisy, *_ = parts
    x, cams = torch.cat([frames[100:104], noisy[104:108]]), [0, 1] * 4
    det.ood_threshold.fill_(-1e30)  # everything unknown: bn_prior's rule with the unknown frames' N
    expected = torch.empty(len(x), 10)
    for cam in (0, 1):
        rows = [i for i, c in enumerate(cams) if c == cam]
        expected[rows] = BNPrior(model, 2)(x[rows])
    assert torch.allclose(DynBNOpen(model, table, det, unknown_prior=2, growth=0)(x, cams), expected, atol=1e-4)
    unknown = _half_unknown(det, x)
    known = np.flatnonzero(~unknown)
    default, same = DynBNOpen(model, table, det)(x, cams), DynBNOpen(model, table, det, unknown_prior=6)(x, cams)
    assert torch.equal(default, same)  # the same N for both kinds of frames: the same arithmetic
    other = DynBNOpen(model, table, det, unknown_prior=2)(x, cams)
    assert torch.equal(other[known], default[known])  # known frames keep their N (groups never mix the two)
    assert not torch.allclose(other[np.flatnonzero(unknown)], default[np.flatnonzero(unknown)])
    with pytest.raises(ValueError, match="unknown frames"):
        DynBNOpen(model, table, det, unknown_prior=-1)


def _half_unknown(det, x):
    """Set the threshold so that half of ``x`` is unknown, no frame on the edge; returns the unknown mask."""
    with torch.no_grad():
        ordered = det.logits_and_distance(x)[1].sort().values
    det.ood_threshold.fill_(float(ordered[3] + ordered[4]) / 2)
    det.ood_low.fill_(float("inf"))  # no ramp: known frames use their table entry whole
    unknown = (det.logits_and_distance(x)[1] > det.ood_threshold).numpy()
    assert 0 < unknown.sum() < len(x)
    return unknown


def test_dynbn_open_keeps_a_cameras_known_and_unknown_frames_in_separate_groups(parts, frames):
    model, table, det, noisy, *_ = parts
    x, cams = torch.cat([frames[100:104], noisy[104:108]]), [7] * 8  # one camera
    unknown = _half_unknown(det, x)
    argmax = VoteRule(1, 0.0, 1)  # no memory: a frame's domain does not depend on the frames before it
    together = DynBNOpen(model, table, det, rule=argmax)(x, cams)
    known = np.flatnonzero(~unknown)
    alone = DynBNPrior(model, table, det, rule=argmax)(x[known], [7] * len(known))
    assert torch.allclose(together[known], alone, atol=1e-4)
    rows = np.flatnonzero(unknown)
    assert torch.allclose(together[rows], BNPrior(model, 6 + 3 * len(rows))(x[rows]), atol=1e-4)


def test_dynbn_open_mixes_known_and_unknown_frames_in_one_batch_without_coupling_them(parts, frames):
    model, table, det, noisy, *_ = parts
    x, cams = torch.cat([frames[100:104], noisy[104:108]]), list(range(8))  # one camera per frame
    _half_unknown(det, x)
    together = DynBNOpen(model, table, det)(x, cams)
    alone = torch.cat([DynBNOpen(model, table, det)(x[i:i + 1], cams[i:i + 1]) for i in range(len(x))])
    assert torch.allclose(together, alone, atol=1e-4)


def test_dynbn_soft_with_confident_probabilities_is_hard_selection_and_ignores_batch_mates(parts, frames):
    model, table, det, noisy, *_ = parts
    x = torch.cat([frames[100:104], noisy[104:108]])
    sharp = DynBNSoft(model, table, det, temperature=1e-6)
    assert torch.allclose(sharp(x), DynBNFrame(model, table, det)(x), atol=1e-4)
    soft = DynBNSoft(model, table, det)
    together = soft(x)
    assert torch.allclose(together, torch.cat([soft(x[i:i + 1]) for i in range(len(x))]), atol=1e-4)
    with pytest.raises(ValueError, match="temperature"):
        DynBNSoft(model, table, det, temperature=0)


def test_a_composed_domain_applies_its_corruptions_in_order(test_split, data_dir):
    from dynbn.data import frost_dir

    images = test_split.images[:8]
    both = apply(images, "fog+gaussian_noise", 3, np.random.default_rng(5), frost_dir(data_dir))
    rng = np.random.default_rng(5)
    step = apply(apply(images, "fog", 3, rng, frost_dir(data_dir)), "gaussian_noise", 3, rng, frost_dir(data_dir))
    assert np.array_equal(both, step) and not np.array_equal(both, images)


def test_domain_choice_is_right_for_seen_unseen_and_mixed_truths():
    known = ["clean", "fog", "gaussian_noise"]
    used = np.array(["fog", "fog", "unknown", "fog", "gaussian_noise", "unknown", "clean"])
    truth = np.array(["fog", "gaussian_noise", "spatter", "spatter", "fog+gaussian_noise", "fog+gaussian_noise", "fog"])
    assert domain_right(used, truth, known).tolist() == [True, False, True, False, True, True, False]


def test_stream_bench_cli_rejects_an_oracle_on_held_out_streams_and_unknown_streams(tmp_path, data_dir, capsys):
    from dynbn.cli import main

    code = main(["stream-bench", "--streams", "held-out", "--arms", "source,dynbn_oracle", "--artifacts", str(tmp_path),
                 "--data-dir", str(data_dir), "--out", str(tmp_path / "o")])
    assert code == 2 and "dynbn_oracle" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["stream-bench", "--streams", "both", "--out", str(tmp_path / "o")])


def test_the_ramp_starts_at_a_lower_quantile_of_the_same_held_out_scores(parts):
    _, _, det, _, train, labels, held, evidence = parts
    with torch.no_grad():
        dist = det.logits_and_distance(held)[1].numpy()
    assert evidence["ramp"] == 0.8
    assert float(det.ood_low) == pytest.approx(float(np.quantile(dist, 0.8)), rel=1e-6) == evidence["ramp_low"]
    assert float(det.ood_low) < float(det.ood_threshold)
    with pytest.raises(ValueError, match="ramp"):
        fit_open_set(det, train, labels, held, ramp=0.99)
    # move_ramp restarts it at another quantile of the same frames, the threshold untouched
    threshold = float(det.ood_threshold)
    assert move_ramp(det, held, 0.5) == pytest.approx(float(np.quantile(dist, 0.5)), rel=1e-6)
    assert float(det.ood_low) == pytest.approx(float(np.quantile(dist, 0.5)), rel=1e-6)
    assert float(det.ood_threshold) == threshold
    with pytest.raises(ValueError, match="ramp"):
        move_ramp(det, held, 1.0)


def test_dynbn_open_leans_known_frames_towards_the_checkpoint_statistics_on_the_ramp(parts, frames):
    model, table, det, noisy, *_ = parts
    x, cams = torch.cat([frames[100:104], noisy[104:108]]), [0, 1] * 4
    open_ = DynBNOpen(model, table, det)
    low, high = float(det.ood_low), float(det.ood_threshold)
    lean = open_.lean(np.array([low - 1.0, low, (low + high) / 2, high, high + 1.0]))
    assert lean.tolist() == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.0])  # 0 below the ramp, then linear up to 1
    assert DynBNOpen(model, table, det, ramp=False).lean(np.array([high])).tolist() == [0.0]
    # a ramp from -1e30 to 1e30: every frame is known and leans half-way, so its prior is the mixture,
    # half and half, of its table entry and the checkpoint's statistics: dynbn_prior on that mixed table
    det.ood_low.fill_(-1e30)
    det.ood_threshold.fill_(1e30)
    source = {f"{name}.{s}": getattr(bn, s).clone() for name, bn in bn_table.bn_layers(model).items()
              for s in ("running_mean", "running_var")}
    mixed = {}
    for domain, entry in table.stats.items():
        mixed[domain] = {}
        for key in entry:
            if key.endswith("running_mean"):
                m, ms = entry[key], source[key]
                v, vs = entry[key[:-4] + "var"], source[key[:-4] + "var"]
                mixed[domain][key] = 0.5 * (m + ms)
                mixed[domain][key[:-4] + "var"] = 0.5 * (v + vs) + 0.25 * (m - ms) ** 2  # the mixture's variance
    half = bn_table.BNTable(layers=table.layers, stats=mixed)
    leaning = DynBNOpen(model, table, det)
    assert torch.allclose(leaning(x, cams), DynBNPrior(model, half, det)(x, cams), atol=1e-4)
    assert leaning.last_lean.tolist() == pytest.approx([0.5] * len(x))
    assert not torch.allclose(leaning(x, cams), DynBNOpen(model, table, det, ramp=False)(x, cams), atol=1e-3)
