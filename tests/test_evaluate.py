"""Offline evaluation: a small real reproduce run honours the JSON contract and the method's effect."""

import json

import numpy as np
import pytest

from dynbn import cli
from dynbn.detector import DetectorConfig
from dynbn.experiments.reproduce import ARMS, ReproduceConfig, dynbn_arm, gap_cells, gap_report, reproduce, run_arms
from dynbn.fitting import FitConfig
from dynbn.experiments.report import reproduce_markdown


@pytest.fixture(scope="module")
def small_run(data_dir):
    fit = FitConfig(detector_images=40, table_images=64, tune_per_severity=8,
                    detector=DetectorConfig(epochs=4, hidden=(128, 64)))
    # the paper's arm (no severity mixture), so a correctly detected frame gets the oracle's statistics exactly
    cfg = ReproduceConfig(test_images=200, severities=(5,), corruptions=("gaussian_noise", "contrast"),
                          k_sweep=(16, 64), sweep_images=100, fit=fit, severity=False)
    return reproduce(cfg, data_dir, log=lambda m: None)


def test_contract_fields_and_ranges(small_run):
    r = small_run
    assert r["images"] == 200 and r["seed"] == 0
    for arm in ARMS:
        a = r["arms"][arm]
        assert set(a["by_severity"]) == {"5"} and set(a["by_corruption"]) == {"gaussian_noise", "contrast"}
        assert 0.0 <= a["mean"] <= 1.0
        assert a["mean"] == pytest.approx(sum(a["by_corruption"].values()) / 2)
    assert set(r["clean"]) >= {"source", "dynbn", "oracle"}
    assert 0.0 <= r["detector"]["accuracy"] <= 1.0 and set(r["detector"]["by_severity"]) == {"5"}
    assert set(r["k_sweep"]) == {"16", "64"}
    json.dumps(r, allow_nan=False)  # plain JSON, no NaN


def test_true_statistics_recover_accuracy_on_strong_corruptions(small_run):
    a = small_run["arms"]
    # gaussian noise s5 and contrast s5 wreck source statistics (14 % / 25 % measured); their own fix it
    assert a["oracle"]["by_corruption"]["gaussian_noise"] > a["source"]["by_corruption"]["gaussian_noise"] + 0.2
    assert a["oracle"]["by_corruption"]["contrast"] > a["source"]["by_corruption"]["contrast"] + 0.2
    assert a["dynbn"]["mean"] > a["source"]["mean"] + 0.15  # both are easy to detect at severity 5
    assert small_run["clean"]["oracle"] == small_run["clean"]["source"]  # clean entry = checkpoint statistics


def test_markdown_holds_every_corruption_and_the_caveat(small_run):
    md = reproduce_markdown(small_run, "dynbn reproduce --test")
    assert "| gaussian_noise |" in md and "| contrast |" in md and "JPEG" in md and "dynbn reproduce --test" in md


def test_gap_cells_split_the_gap_exactly_on_a_hand_built_case():
    domains = ["clean", "a", "b"]
    true = [1, 1, 1, 1, 2, 2, 2, 2]
    detected = [1, 1, 2, 0, 2, 2, 1, 1]
    oracle_ok = [1, 0, 1, 0, 1, 0, 1, 1]
    dynbn_ok = [1, 0, 0, 1, 1, 0, 0, 1]  # frames 2 and 6 lose to the oracle, frame 3 beats it
    g = gap_cells(true, detected, oracle_ok, dynbn_ok, domains)
    assert g["frames"] == 8 and g["gap"] == pytest.approx((5 - 4) / 8)
    assert g["diagonal_cost"] == 0.0  # correctly detected frames: same statistics, same answer
    assert sum(c["cost"] for c in g["cells"]) + g["diagonal_cost"] == pytest.approx(g["gap"])
    assert g["confused_share"] == pytest.approx(4 / 8)
    cells = [(c["true"], c["detected"], c["count"], c["cost"], c["cost_per_frame"]) for c in g["cells"]]
    assert cells == [("b", "a", 2, 1 / 8, 0.5), ("a", "b", 1, 1 / 8, 1.0), ("a", "clean", 1, -1 / 8, -1.0)]
    assert gap_cells([], [], [], [], domains)["cells"] == []


def test_gap_report_splits_by_severity_and_keeps_clean_apart():
    domains = ["clean", "a"]
    frames = {("a", 5): (np.array([1, 0]), np.array([True, True]), np.array([True, False])),
              ("a", 3): (np.array([0, 0]), np.array([False, True]), np.array([False, True])),
              ("clean", 0): (np.array([0, 1]), np.array([True, True]), np.array([True, False]))}
    r = gap_report(frames, domains, (3, 5))
    assert r["by_severity"]["5"]["gap"] == pytest.approx(0.5) and r["by_severity"]["3"]["gap"] == 0.0
    assert r["all"]["gap"] == pytest.approx(0.25) and r["all"]["frames"] == 4
    assert r["clean"]["cells"] == [{"true": "clean", "detected": "a", "count": 1, "share": 0.5, "cost": 0.5,
                                    "cost_per_frame": 1.0}]


def test_run_gap_matches_the_arms(small_run):
    g, a = small_run["gap"], small_run["arms"]
    five = g["by_severity"]["5"]
    assert five["gap"] == pytest.approx(a["oracle"]["by_severity"]["5"] - a["dynbn"]["by_severity"]["5"])
    assert sum(c["cost"] for c in five["cells"]) + five["diagonal_cost"] == pytest.approx(five["gap"])
    assert abs(five["diagonal_cost"]) <= 0.01  # same table: only floating-point ties differ
    assert g["clean"]["gap"] == pytest.approx(small_run["clean"]["oracle"] - small_run["clean"]["dynbn"])
    # the detections the gap reads are the detector's: its accuracy is the share of unconfused frames
    assert 1 - five["confused_share"] == pytest.approx(small_run["detector"]["by_severity"]["5"])
    assert "## Where dynbn loses to the oracle" in reproduce_markdown(small_run, "dynbn reproduce --test")


@pytest.mark.parametrize("temperature,severity", [(None, False), (None, True), (2.0, True)])
def test_dynbn_arm_reports_its_own_detections(resnet20, frames, temperature, severity):
    """The gap reads the dynbn arm's own detections (one detector pass): hard, with the severity estimate or
    soft, the most probable domain. A detector with a severity head gets the severity arm unless told not to."""
    import torch

    from dynbn.methods import DynBNFrame, DynBNFrameSeverity, DynBNSoft
    from stand_in import stand_in

    torch.manual_seed(0)
    x, y = frames[:40], torch.zeros(40, dtype=torch.long)
    table, detector = stand_in(resnet20, ("clean", "contrast", "fog"))
    cfg = ReproduceConfig(eval_batch=16, soft_temperature=temperature, severity=severity)
    arm = dynbn_arm(resnet20, table, detector, cfg)
    expected = DynBNSoft if temperature else DynBNFrameSeverity if severity else DynBNFrame
    assert type(arm) is expected
    found = {}
    run_arms({"dynbn": arm}, x, y, "clean", cfg, found)
    with torch.no_grad():
        assert torch.equal(found["dynbn"], detector(x).argmax(1))


def test_cli_reproduce_options():
    parser = cli.build_parser()
    args = parser.parse_args(["reproduce", "--out", "o", "--soft-temperature", "3", "--detector-images", "1600"])
    assert (args.soft_temperature, args.detector_images) == (3.0, 1600)
    args = parser.parse_args(["reproduce", "--out", "o"])
    assert (args.soft_temperature, args.detector_images, args.no_severity) == (None, None, False)
    assert parser.parse_args(["reproduce", "--out", "o", "--no-severity"]).no_severity
    for bad in (["--soft-temperature", "0"], ["--detector-images", "-5"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["reproduce", "--out", "o", *bad])


def test_cli_reports_a_missing_data_directory(tmp_path, capsys):
    assert cli.main(["reproduce", "--quick", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "dynbn data fetch" in capsys.readouterr().err
