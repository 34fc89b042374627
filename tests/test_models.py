"""Models: the shared checkpoints load exactly, score as documented, torchvision models work."""

import numpy as np
import pytest
import torch

from dynbn import data, models
from dynbn.spectrum import to_tensor


def test_resnet20_full_accuracy_matches_documented_figure(data_dir):
    model = models.load_cifar_resnet(20, data_dir)
    test = data.load_cifar10("test", data_dir).subset(3000, seed=1)
    x = to_tensor(test.images)
    with torch.no_grad():
        acc = (model(x).argmax(1).numpy() == test.labels).mean()
    assert abs(acc - 0.810) < 0.025, acc


@pytest.mark.parametrize("depth,blocks", [(20, 3), (32, 5), (44, 7), (56, 9)])
def test_every_depth_loads_strictly(data_dir, depth, blocks):
    model = models.load_cifar_resnet(depth, data_dir)
    assert len(model.net.layer1) == blocks
    assert not model.training


def test_macs_match_resnet20_reference(resnet20):
    assert abs(models.model_macs(resnet20) - 40.6e6) / 40.6e6 < 0.01


def test_normalisation_lives_inside_the_wrapper(resnet20):
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor(models.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(models.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(resnet20(x), resnet20.net((x - mean) / std))


def test_truncated_checkpoint_names_the_file(tmp_path, data_dir):
    good = models.checkpoint_path(20, data_dir)
    (tmp_path / "models").mkdir()
    bad = tmp_path / "models" / good.name
    bad.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(data.DataError, match=good.name):
        models.load_cifar_resnet(20, tmp_path)


def test_missing_checkpoint_says_how_to_fix(tmp_path):
    with pytest.raises(data.DataError, match="dynbn data fetch"):
        models.load_cifar_resnet(20, tmp_path)


def test_unknown_model_spec_is_rejected():
    with pytest.raises(ValueError, match="resnet20"):
        models.build_model("vgg")


def test_torchvision_model_is_randomly_initialised_and_deterministic():
    a, b = models.torchvision_model("resnet18", seed=3), models.torchvision_model("resnet18", seed=3)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
        assert a(x).shape == (2, 10)


def test_data_verify_accepts_the_shared_directory(data_dir):
    assert data.verify(data_dir) == []


def test_damaged_npz_is_reported(tmp_path):
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / "test.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(data.DataError, match="test.npz"):
        data.load_cifar10("test", tmp_path)


def test_npz_with_wrong_shape_is_reported(tmp_path):
    (tmp_path / "cifar10").mkdir()
    np.savez(tmp_path / "cifar10" / "test.npz", images=np.zeros((4, 28, 28, 3), np.uint8), labels=np.zeros(4, np.int64))
    with pytest.raises(data.DataError, match="32, 32, 3"):
        data.load_cifar10("test", tmp_path)
