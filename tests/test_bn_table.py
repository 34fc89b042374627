"""BN tables: calibration, safetensors round trip, checked loading, exact in-place hot-swap."""

import pytest
import torch

from dynbn.bn import table as bn_table
from dynbn.bn.table import BNTable, TableMismatch
from dynbn.models import torchvision_model


def _two_domain_table(model, frames):
    noisy = (frames + 0.1 * torch.randn_like(frames)).clamp(0, 1)
    return bn_table.calibrate(model, {"clean": frames[:128], "noise": noisy[:128]}, batch_size=64)


def test_calibration_matches_cumulative_batch_statistics(resnet20, frames):
    table = bn_table.calibrate(resnet20, {"a": frames[:64]}, batch_size=64)
    # first layer sees the raw normalised input: its stats are exactly the conv output moments
    with torch.no_grad():
        z = resnet20.net.conv1((frames[:64] - resnet20.mean) / resnet20.std)
    assert torch.allclose(table.stats["a"]["net.bn1.running_mean"], z.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(table.stats["a"]["net.bn1.running_var"], z.var((0, 2, 3), unbiased=True), rtol=1e-4)


def test_calibration_leaves_the_model_untouched(resnet20, frames):
    before = {k: v.clone() for k, v in resnet20.state_dict().items()}
    _two_domain_table(resnet20, frames)
    after = resnet20.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not resnet20.training


def test_noise_domain_has_different_statistics(resnet20, frames):
    table = _two_domain_table(resnet20, frames)
    a, b = table.stats["clean"]["net.bn1.running_var"], table.stats["noise"]["net.bn1.running_var"]
    assert (b > a).float().mean() > 0.8  # added noise raises first-layer variance


def test_save_load_round_trip(tmp_path, resnet20, frames):
    table = _two_domain_table(resnet20, frames)
    table.save(tmp_path / "t.safetensors")
    loaded = BNTable.load(tmp_path / "t.safetensors", resnet20)
    assert loaded.domains == ["clean", "noise"]
    assert all(torch.equal(v, loaded.flat()[k]) for k, v in table.flat().items())
    assert set(loaded.flat()) == {f"{d}/{n}.{s}" for d in ("clean", "noise") for n in bn_table.bn_layers(resnet20)
                                  for s in bn_table.STATS}


def test_table_for_another_model_is_rejected_with_the_key(tmp_path, resnet20, data_dir):
    from dynbn.models import load_cifar_resnet

    deeper = load_cifar_resnet(32, data_dir)
    bn_table.source_table(deeper).save(tmp_path / "r32.safetensors")
    with pytest.raises(TableMismatch, match=r"unexpected source/net\.layer1\.3\.bn1"):
        BNTable.load(tmp_path / "r32.safetensors", resnet20)


def test_wrong_shape_is_named(resnet20):
    table = bn_table.source_table(resnet20)
    table.stats["source"]["net.bn1.running_mean"] = torch.zeros(17)
    with pytest.raises(TableMismatch, match=r"net\.bn1\.running_mean has shape \(17,\), the model needs \(16,\)"):
        table.check(resnet20)


def test_truncated_table_file_is_reported(tmp_path, resnet20):
    bn_table.source_table(resnet20).save(tmp_path / "t.safetensors")
    raw = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="t.safetensors"):
        BNTable.load(tmp_path / "t.safetensors", resnet20)


def test_swap_a_b_a_restores_exactly_and_in_place(resnet20, frames):
    table = _two_domain_table(resnet20, frames)
    table.stats["source"] = bn_table.current_stats(resnet20)
    bn = resnet20.net.layer2[0].bn1
    buffer_id, storage = id(bn.running_mean), bn.running_mean.data_ptr()
    with torch.no_grad():
        ref = resnet20(frames[:32])
        bn_table.swap(resnet20, table, "noise")
        swapped = resnet20(frames[:32])
        bn_table.swap(resnet20, table, "source")
        back = resnet20(frames[:32])
    assert id(bn.running_mean) == buffer_id and bn.running_mean.data_ptr() == storage  # same tensor, no copy
    assert torch.equal(bn.running_mean, table.stats["source"]["net.layer2.0.bn1.running_mean"])
    assert torch.equal(ref, back) and not torch.allclose(ref, swapped)


def test_swap_unknown_domain_lists_the_known_ones(resnet20):
    with pytest.raises(KeyError, match="source"):
        bn_table.swap(resnet20, bn_table.source_table(resnet20), "fog")


def test_model_without_batchnorm_is_refused():
    with pytest.raises(ValueError, match="no BatchNorm2d"):
        bn_table.bn_layers(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)))


def test_torchvision_model_calibrates_and_swaps(frames):
    model = torchvision_model("resnet18")
    table = bn_table.calibrate(model, {"a": frames[:32], "b": frames[32:64].flip(-1)}, batch_size=32)
    table.check(model)
    bn_table.swap(model, table, "b")
    assert torch.equal(model.net.bn1.running_var, table.stats["b"]["net.bn1.running_var"])
