"""Severity-aware BN tables: domain names and labels, interpolation weights, weights vs index, the CLI."""

import numpy as np
import pytest
import torch

from dynbn.bn import table as bn_table
from dynbn.data import Split
from dynbn.domains import BENCHMARK, CLEAN, DEFAULT_DOMAINS
from dynbn.sampling import SEVERITIES, apply, domain_samples
from dynbn.bn.per_sample import DomainSwitch
from dynbn.severity import interpolation_weights, sample_severities, severity_domains, severity_labels

NAMES = severity_domains()
S = len(SEVERITIES)


def test_76_domain_names():
    assert len(NAMES) == 1 + 15 * 5 == 76 and len(set(NAMES)) == 76
    assert NAMES[0] == CLEAN
    assert NAMES[1:6] == [f"gaussian_noise@{s}" for s in (1, 2, 3, 4, 5)]
    assert NAMES[-1] == "jpeg_compression@5" and "fog@5" in NAMES
    assert all(NAMES[1 + i * S + (s - 1)] == f"{c}@{s}" for i, c in enumerate(BENCHMARK) for s in SEVERITIES)


def test_labels_map_clean_to_one_class_and_each_corruption_severity_to_its_entry():
    domains = list(DEFAULT_DOMAINS)
    domain_idx = np.repeat(np.arange(len(domains)), S)
    severity = np.tile(SEVERITIES, len(domains))
    labels = severity_labels(domain_idx, severity, domains, NAMES)
    assert (labels[domain_idx == 0] == 0).all()  # clean at every "severity" is one class
    for d, s, label in zip(domain_idx[S:], severity[S:], labels[S:]):
        assert NAMES[label] == f"{domains[d]}@{s}"
        assert label == 1 + (d - 1) * S + (s - 1)
    assert sorted(labels[S:]) == list(range(1, 76))  # every corrupted class exactly once


def test_sample_severities_follow_domain_samples_order(test_split):
    # every row the same image: brightness (no random draw) at severity s gives one known frame
    image = test_split.images[:1]
    split = Split(np.repeat(image, 10, axis=0), np.zeros(10, dtype=np.int64))
    frames, domain_idx, _ = domain_samples(split, (CLEAN, "brightness"), 2, "detector", 0, None)
    severity = sample_severities(2, 2)
    assert len(severity) == len(frames)
    for frame, d, s in zip(frames, domain_idx, severity):
        domain = (CLEAN, "brightness")[d]
        assert np.array_equal(frame, apply(image, domain, int(s), np.random.default_rng(0), None)[0]), (domain, s)


def _naive_interpolation(logits):
    """The definition, from probabilities: corruption = argmax of summed probabilities, renormalised within it."""
    p = logits.double().softmax(1)
    grouped = p[:, 1:].reshape(len(p), -1, S)
    detected = torch.cat([p[:, :1], grouped.sum(2)], 1).argmax(1)
    w = torch.zeros_like(p)
    for b, k in enumerate(detected.tolist()):
        if k == 0:
            w[b, 0] = 1
        else:
            w[b, 1 + (k - 1) * S:1 + k * S] = grouped[b, k - 1] / grouped[b, k - 1].sum()
    return w, detected


def test_interpolation_weights_sit_on_the_detected_corruption_and_sum_to_one():
    logits = 3 * torch.randn(200, 76, generator=torch.Generator().manual_seed(0))
    logits[:20, 0] += 20  # some frames detected as clean
    weights, detected = interpolation_weights(logits)
    assert weights.shape == (200, 76)
    assert torch.allclose(weights.sum(1), torch.ones(200), atol=1e-6)
    assert (weights >= 0).all()
    assert (detected[:20] == 0).all() and (detected[20:] > 0).any()
    for b, k in enumerate(detected.tolist()):
        support = [0] if k == 0 else list(range(1 + (k - 1) * S, 1 + k * S))
        outside = torch.ones(76, dtype=torch.bool)
        outside[support] = False
        assert (weights[b, outside] == 0).all(), b
    naive_w, naive_detected = _naive_interpolation(logits)
    assert torch.equal(detected, naive_detected)
    assert torch.allclose(weights.double(), naive_w, atol=1e-6)


def test_interpolation_does_not_underflow():
    logits = torch.full((2, 76), -1e4)
    logits[0, 7], logits[1, 0] = 1e4, 1e4  # one class holds all mass: the others' probabilities are 0 in float32
    weights, detected = interpolation_weights(logits)
    assert torch.isfinite(weights).all() and detected.tolist() == [2, 0]
    assert weights[0, 7] == 1 and weights[1, 0] == 1


@pytest.fixture(scope="module")
def model(resnet20_module):
    return resnet20_module


@pytest.fixture(scope="module")
def table76(model, frames):
    """76 entries, cheap: three calibrated shifts spread over the 75 corrupted names, clean = checkpoint."""
    x = frames[:64]
    noise = 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    shifts = bn_table.calibrate(model, {"dark": 0.5 * x, "bright": (x + 0.3).clamp(0, 1), "noisy": (x + noise).clamp(0, 1)},
                                batch_size=64)
    rows = list(shifts.stats.values())
    stats = {CLEAN: bn_table.current_stats(model), **{name: rows[i % 3] for i, name in enumerate(NAMES[1:])}}
    return bn_table.BNTable(layers=bn_table.fingerprint(model), stats=stats)


def test_one_hot_severity_weights_give_the_hard_entry(model, table76, frames):
    x = frames[:48]
    logits = torch.full((48, 76), -100.0)
    hard = torch.tensor([0] + [1 + (i * 7) % 75 for i in range(47)])  # clean and many corruption/severity entries
    logits[torch.arange(48), hard] = 100.0
    weights, _ = interpolation_weights(logits)
    assert torch.equal(weights, torch.nn.functional.one_hot(hard, 76).float())
    switch = DomainSwitch(model, table76, NAMES)
    by_index, by_weights = switch.forward(x, hard), switch.forward(x, weights=weights)
    assert (by_index - by_weights).abs().max() < 1e-5
    # and a real mixture differs: the weights do reach the statistics
    spread = weights.clone()
    spread[1:, 1:] = 0
    spread[1:, 1:1 + S] = 1 / S
    assert (switch.forward(x, weights=spread) - by_index).abs().max() > 1e-2


@pytest.mark.parametrize("argv,message", [
    ([], "the following arguments are required: --out"),
    (["--out", "o", "--threads", "0"], "argument --threads: must be at least 1"),
    (["--out", "o", "--threads", "two"], "argument --threads: expected an integer"),
    (["--out", "o", "--seed", "-1"], "argument --seed: must be a non-negative integer"),
    (["--out", "o", "--seed", "x"], "argument --seed: expected a non-negative integer"),
    (["--out", "o", "--images", "5"], "unrecognized arguments: --images"),
])
def test_cli_rejects_bad_arguments(capsys, argv, message):
    from dynbn.cli import build_parser

    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["severity-tables", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_refuses_a_file_as_out_dir_and_parses_good_arguments(capsys, tmp_path):
    from dynbn.cli import build_parser

    file = tmp_path / "report.md"
    file.write_text("")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["severity-tables", "--out", str(file)])
    assert "exists and is not a directory" in capsys.readouterr().err
    args = build_parser().parse_args(["severity-tables", "--quick", "--out", str(tmp_path / "new"), "--seed", "3",
                                      "--threads", "2"])
    assert (args.quick, args.seed, args.threads, args.out) == (True, 3, 2, tmp_path / "new")
