"""Offline evaluation: a small real reproduce run honours the JSON contract and the method's effect."""

import json

import pytest

from dynbn import cli
from dynbn.detector import DetectorConfig
from dynbn.experiments.reproduce import ARMS, ReproduceConfig, reproduce
from dynbn.fitting import FitConfig
from dynbn.experiments.report import reproduce_markdown


@pytest.fixture(scope="module")
def small_run(data_dir):
    fit = FitConfig(detector_images=40, table_images=64, tune_per_severity=8,
                    detector=DetectorConfig(epochs=4, hidden=(128, 64)))
    cfg = ReproduceConfig(test_images=200, severities=(5,), corruptions=("gaussian_noise", "contrast"),
                          k_sweep=(16, 64), sweep_images=100, fit=fit)
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


def test_cli_reports_a_missing_data_directory(tmp_path, capsys):
    assert cli.main(["reproduce", "--quick", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "dynbn data fetch" in capsys.readouterr().err
