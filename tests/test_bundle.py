"""Bundles: a fit writes a self-contained folder that loads back exactly, and every damaged, edited or
mismatched piece is refused by name; user weights and unlabelled image folders work; ``dynbn fit`` errors cleanly.

One tiny bundle (3 domains, 2 detector epochs, tables of 32 frames) is fitted for the module on the
real ResNet-20 and CIFAR-10, and copied wherever a test damages it.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime

import cv2
import numpy as np
import pytest
import torch

from dynbn import bundle as bundles
from dynbn import cli, data, models
from dynbn.bundle import BundleError, fit_bundle, load_bundle
from dynbn.detector import DetectorConfig
from dynbn.fitting import FitConfig

TINY = dict(domains=("clean", "gaussian_noise", "fog"), detector_images=20, table_images=32, severity_images=16)


def tiny_config(seed: int = 0) -> FitConfig:
    return FitConfig(**TINY, seed=seed, detector=DetectorConfig(epochs=2, seed=seed))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, one_thread, data_dir):
    return fit_bundle("resnet20", tmp_path_factory.mktemp("b") / "bundle", config=tiny_config(), data_dir=data_dir)


@pytest.fixture()
def copy(fitted, tmp_path):
    """A copy of the fitted bundle's folder, free to damage."""
    return shutil.copytree(fitted.path, tmp_path / "copy")


def test_round_trip_gives_the_same_model_detector_and_table(fitted, frames):
    loaded = load_bundle(fitted.path)
    with torch.no_grad():
        assert torch.equal(loaded.model(frames), fitted.model(frames))
        for a, b in zip(loaded.detector.read(frames, distance=True, severity=True),
                        fitted.detector.read(frames, distance=True, severity=True)):
            assert torch.equal(a, b)
    assert not loaded.model.training
    theirs, ours = fitted.table.flat(), loaded.table.flat()
    assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in theirs)
    assert (loaded.domains, loaded.severities, loaded.input_size, loaded.model_spec) == (
        ["clean", "gaussian_noise", "fog"], [1, 2, 3, 4, 5], 32, "resnet20")
    assert loaded.class_names == list(data.CLASSES)


def test_manifest_has_every_key_and_the_files_sha256(fitted, data_dir):
    m = json.loads((fitted.path / "manifest.json").read_text())
    assert set(bundles._KEYS) <= set(m) and set(bundles._MODEL_KEYS) <= set(m["model"])
    assert m["format_version"] == 1 and m["dynbn_version"] == bundles.__version__
    assert m["model"]["weights"] is None
    assert m["model"]["weights_sha256"] == data.CHECKPOINTS["resnet20-12fca82f.th"][1]
    assert len(m["model"]["bn_fingerprint"]) == 19 and m["model"]["num_classes"] == 10
    assert m["fit"]["config"]["table_images"] == 32 and m["fit"]["origin"] == "cifar10-train"
    assert m["fit"]["labels"] == "given" and m["fit"]["images"] == len(data.load_cifar10("train", data_dir))
    assert {"clean_bias", "open_set_threshold"} <= set(m["fit_results"])
    assert m["files"] == {n: data.sha256(fitted.path / n) for n in bundles.FILES}
    assert datetime.fromisoformat(m["created"]).utcoffset().total_seconds() == 0
    assert sorted(p.name for p in fitted.path.iterdir()) == sorted(["manifest.json", *bundles.FILES])


def test_truncated_table_is_refused_by_name(copy):
    table = copy / "bn_table.safetensors"
    table.write_bytes(table.read_bytes()[:2000])
    with pytest.raises(BundleError, match=r"bn_table\.safetensors: sha256 .* does not match .*re-fit"):
        load_bundle(copy)


def test_edited_manifest_sha_is_refused_by_name(copy):
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["detector.safetensors"] = "cd34" + "0" * 60
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"detector\.safetensors: sha256 .* manifest's cd3400000000"):
        load_bundle(copy)


def test_missing_file_is_refused_by_name(copy):
    (copy / "model.safetensors").unlink()
    with pytest.raises(BundleError, match=r"model\.safetensors: missing"):
        load_bundle(copy)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(format_version=2), "format_version 2 is not supported"),
    (lambda m: m.pop("format_version"), "no format_version"),
    (lambda m: m.pop("domains"), "lacks domains"),
])
def test_manifest_of_another_format_is_refused(copy, edit, message):
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=message):
        load_bundle(copy)


def test_manifest_that_is_not_json_or_absent_is_refused(copy):
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="manifest.json is not JSON"):
        load_bundle(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match="no manifest.json"):
        load_bundle(copy)


def test_bundle_checked_against_another_model_names_spec_and_bn_layers(fitted, data_dir):
    with pytest.raises(BundleError) as err:
        load_bundle(fitted.path, models.build_model("resnet32", data_dir))
    text = str(err.value)
    assert "fitted for resnet20 (19 BN layers), this model is resnet32 (31 BN layers)" in text
    assert "12 BN layers of the model not in the bundle" in text


def test_bundle_checked_against_its_model_accepts_it_and_refuses_other_weights(fitted, data_dir):
    mine = models.build_model("resnet20", data_dir)
    assert load_bundle(fitted.path, mine).model is mine
    with torch.no_grad():
        mine.net.linear.bias.add_(0.1)
    with pytest.raises(BundleError, match=r"weights differ .* in 1 tensors, e\.g\. net\.linear\.bias"):
        load_bundle(fitted.path, mine)


@pytest.mark.parametrize("how", ["safetensors", "torch"])
def test_user_weights_round_trip(tmp_path, resnet20, how):
    state = resnet20.net.state_dict()
    if how == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "mine.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:  # as DataParallel training scripts save it
        path = tmp_path / "mine.pt"
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    model = models.build_model("resnet20", weights=path)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), resnet20(x))
    assert model.spec == "resnet20"


def test_user_weights_give_the_class_count(tmp_path):
    net = models.CifarResNet(3, num_classes=7)
    torch.save(net.state_dict(), tmp_path / "seven.pt")
    model = models.build_model("resnet20", weights=tmp_path / "seven.pt")
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 7)
    with pytest.raises(models.WeightsError, match="seven.pt has 7 classes"):
        models.build_model("resnet20", weights=tmp_path / "seven.pt", num_classes=10)


def test_pickled_objects_and_other_architectures_are_refused(tmp_path, resnet20, data_dir):
    torch.save(resnet20, tmp_path / "whole.pt")  # a pickled module, not a state dict
    with pytest.raises(models.WeightsError, match="whole.pt holds objects other than tensors.*state_dict"):
        models.build_model("resnet20", weights=tmp_path / "whole.pt")
    torch.save(models.build_model("resnet32", data_dir).net.state_dict(), tmp_path / "r32.pt")
    with pytest.raises(models.WeightsError, match=r"r32.pt does not fit resnet20 \(\d+ problems: unexpected layer1\.3"):
        models.build_model("resnet20", weights=tmp_path / "r32.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(models.WeightsError, match="junk.pt is damaged"):
        models.build_model("resnet20", weights=tmp_path / "junk.pt")


def _write_pngs(folder, images) -> None:
    folder.mkdir()
    for i, image in enumerate(images):  # upscaled to 48 so the fit has to resize them back
        big = cv2.resize(image, (48, 48), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(folder / f"{i:04d}.png"), big[..., ::-1])


def test_unlabelled_image_folder_fits_with_the_models_predictions(tmp_path, test_split, data_dir, one_thread):
    _write_pngs(tmp_path / "frames", test_split.images[:100])
    split = data.load_images(tmp_path / "frames", 32)
    assert split.images.shape == (100, 32, 32, 3) and (split.labels == -1).all()
    # area interpolation brings the upscaled frames back close to the originals
    assert np.abs(split.images.astype(int) - test_split.images[:100]).mean() < 4
    b = fit_bundle("resnet20", tmp_path / "bundle", images=tmp_path / "frames", config=tiny_config(), data_dir=data_dir)
    assert b.manifest["fit"]["labels"] == bundles.PSEUDO_LABELS
    assert (b.manifest["fit"]["images"], b.manifest["fit"]["origin"]) == (100, "frames")
    assert load_bundle(tmp_path / "bundle").detector.height == 32


def test_too_few_images_unreadable_files_and_unsupported_sizes_are_refused(tmp_path, test_split, data_dir):
    _write_pngs(tmp_path / "few", test_split.images[:10])
    with pytest.raises(BundleError, match="10 images; fitting needs at least 64"):
        fit_bundle("resnet20", tmp_path / "b1", images=tmp_path / "few", config=tiny_config(), data_dir=data_dir)
    (tmp_path / "few" / "0003.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(data.DataError, match="0003.png: not a readable image"):
        data.load_images(tmp_path / "few", 32)
    with pytest.raises(BundleError, match=r"cannot synthesise 64x64 frames for frost: frost supports images up to 62x104"):
        fit_bundle("resnet20", tmp_path / "b2", input_size=64, data_dir=data_dir)


def test_npz_images_keep_their_labels(tmp_path, test_split):
    np.savez(tmp_path / "set.npz", images=test_split.images[:8], labels=test_split.labels[:8])
    split = data.load_images(tmp_path / "set.npz", 16)
    assert split.images.shape == (8, 16, 16, 3) and (split.labels == test_split.labels[:8]).all()


def test_cli_fit_with_bad_weights_exits_2_with_the_message(tmp_path, capsys, data_dir):
    (tmp_path / "bad.pt").write_text("definitely not weights")
    code = cli.main(["fit", "--weights", str(tmp_path / "bad.pt"), "--out", str(tmp_path / "b"),
                     "--data-dir", str(data_dir)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "bad.pt is damaged" in err
    assert not (tmp_path / "b").exists()


def test_torchvision_bundle_rebuilds_without_weights_or_data(tmp_path, test_split, data_dir, one_thread):
    np.savez(tmp_path / "few.npz", images=test_split.images[:80], labels=test_split.labels[:80])
    b = fit_bundle("tv:resnet18", tmp_path / "tv", images=tmp_path / "few.npz", config=tiny_config(), data_dir=data_dir)
    assert b.manifest["model"]["weights_sha256"] is None and b.manifest["fit"]["labels"] == "given"
    loaded = load_bundle(tmp_path / "tv")
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), b.model(x))


def test_small_sets_hold_out_a_fifth_and_cifar_keeps_its_rows(train_split):
    from dynbn.fitting import split_train
    from dynbn.sampling import draw

    fit, held = split_train(train_split, 0)
    order = np.random.default_rng([0, 99]).permutation(len(train_split))  # the rows every report was made with
    assert len(held) == 2000 and (held.labels == train_split.labels[order[-2000:]]).all()
    assert (held.images == train_split.images[order[-2000:]]).all()
    fit, held = split_train(train_split.subset(300, seed=0), 0)
    assert (len(fit), len(held)) == (240, 60)
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    assert (draw(a, 1000, 400) == b.choice(1000, 400, replace=False)).all()
    many = draw(a, 50, 120)  # more than there are: every row two or three times
    assert np.bincount(many, minlength=50).min() >= 2 and np.bincount(many).max() <= 3


def test_the_clean_bias_reads_every_held_out_clean_image(train_split):
    """The full fit's clean bias reads the tuning set's corrupted frames plus every held-out clean image
    (``tune_clean_images``: 200 clean frames cannot see a 0.25-point loss); the quick fit, the tuning set itself."""
    from dynbn.fitting import TUNE_IMAGES, FitConfig, clean_bias_samples, split_train

    cfg = FitConfig()
    assert cfg.tune_clean_images == TUNE_IMAGES
    held = split_train(train_split, 0)[1]
    g = np.random.default_rng(0)
    domains = np.repeat(np.arange(len(cfg.domains)), 3)  # 3 tuning frames per domain, clean (0) among them
    tuning = (g.integers(0, 256, (len(domains), 32, 32, 3), dtype=np.uint8), domains, g.integers(0, 10, len(domains)))
    frames, got, labels = clean_bias_samples(held, tuning, cfg)
    corrupted = domains != cfg.domains.index("clean")
    assert len(frames) == corrupted.sum() + 2000 and (got == cfg.domains.index("clean")).sum() == 2000
    assert (frames[:corrupted.sum()] == tuning[0][corrupted]).all() and (got[:corrupted.sum()] == domains[corrupted]).all()
    assert (frames[corrupted.sum():] == held.images).all() and (labels[corrupted.sum():] == held.labels).all()
    assert clean_bias_samples(held, tuning, FitConfig.quick()) is tuning
    assert clean_bias_samples(held, tuning, FitConfig(tune_clean_images=0)) is tuning
    small = split_train(train_split.subset(300, seed=0), 0)[1]
    assert len(clean_bias_samples(small, tuning, cfg)[0]) == corrupted.sum() + 60  # all 60 held-out images


def test_cli_fit_domains_are_checked_before_any_fitting(tmp_path, capsys, data_dir):
    assert cli.main(["fit", "--domains", "clean,nosuch", "--out", str(tmp_path / "b"), "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err
    assert "nosuch unknown" in err and "gaussian_noise" in err
    assert cli.main(["fit", "--domains", "clean", "--out", str(tmp_path / "b"), "--data-dir", str(data_dir)]) == 2
    assert not (tmp_path / "b" / "manifest.json").exists()
