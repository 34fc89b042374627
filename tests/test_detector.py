"""Detector: learns domains from spectra, saves/loads exactly, stays cheap next to ResNet-20."""

import pytest
import torch

from dynbn.detector import Detector, DetectorConfig, fit
from dynbn.models import model_macs


def _toy_domains(frames):
    g = torch.Generator().manual_seed(0)
    noisy = (frames + 0.08 * torch.randn(frames.shape, generator=g)).clamp(0, 1)
    blurred = torch.nn.functional.avg_pool2d(frames, 3, 1, 1, count_include_pad=False)
    x = torch.cat([frames, noisy, blurred])
    y = torch.arange(3).repeat_interleave(len(frames))
    return x, y


def test_learns_noise_and_blur_apart_on_held_out_frames(frames):
    x, y = _toy_domains(frames[:192])
    det = fit(x, y, ["clean", "noise", "blur"], DetectorConfig(epochs=15, hidden=(128, 64)))
    xt, yt = _toy_domains(frames[192:256])
    acc = (det.predict_proba(xt).argmax(1) == yt).float().mean()
    assert acc > 0.9, acc


def test_save_load_gives_identical_outputs(tmp_path, frames):
    x, y = _toy_domains(frames[:64])
    det = fit(x, y, ["clean", "noise", "blur"], DetectorConfig(epochs=2, hidden=(32, 16)))
    det.save(tmp_path / "d.safetensors")
    again = Detector.load(tmp_path / "d.safetensors")
    assert again.domains == ["clean", "noise", "blur"]
    assert torch.equal(det.predict_proba(x[:10]), again.predict_proba(x[:10]))


def test_fit_is_deterministic_for_a_seed(frames):
    x, y = _toy_domains(frames[:32])
    a = fit(x, y, ["c", "n", "b"], DetectorConfig(epochs=2, hidden=(16, 8), seed=5))
    b = fit(x, y, ["c", "n", "b"], DetectorConfig(epochs=2, hidden=(16, 8), seed=5))
    assert torch.equal(a.predict_proba(x), b.predict_proba(x))


def test_default_detector_is_under_five_percent_of_resnet20(resnet20):
    det = Detector(["d"] * 16)
    assert det.macs() < 0.05 * model_macs(resnet20)
    assert sum(isinstance(m, torch.nn.Linear) for m in det.mlp) == 3


def test_wrong_frame_size_and_bad_file_are_named(tmp_path):
    det = Detector(["a", "b"])
    with pytest.raises(ValueError, match="32x32"):
        det(torch.rand(1, 3, 16, 16))
    (tmp_path / "bad.safetensors").write_bytes(b"nope")
    with pytest.raises(ValueError, match="bad.safetensors"):
        Detector.load(tmp_path / "bad.safetensors")


def test_severity_head_saves_loads_and_gives_severity_given_each_domain(tmp_path, frames):
    x, y = _toy_domains(frames[:64])
    det = fit(x, y, ["clean", "noise", "blur"], DetectorConfig(epochs=2, hidden=(32, 16)))
    names = ["clean", "noise@1", "noise@2", "blur@1", "blur@2"]
    head = fit(x, torch.tensor([0] * 64 + [1, 2] * 32 + [3, 4] * 32), names, DetectorConfig(epochs=2, hidden=(24, 12)))
    det.attach_severity(head, (1, 2))
    logp = det.severity_logprobs(det.spectra(x[:10]))
    assert logp.shape == (10, 3, 2) and torch.allclose(logp.exp().sum(2), torch.ones(10, 3))
    logits = head(x[:10]) - head.logit_bias
    assert torch.allclose(logp[:, 2], logits[:, 3:5].log_softmax(1), atol=1e-5)  # blur@1, blur@2 given blur
    det.save(tmp_path / "d.safetensors")
    again = Detector.load(tmp_path / "d.safetensors")
    assert again.has_severity and again.severities == (1, 2) and again.severity.domains == names
    assert torch.equal(again.severity_logprobs(again.spectra(x[:10])), logp)
    assert torch.equal(again.predict_proba(x[:10]), det.predict_proba(x[:10]))
    assert again.macs() == det.macs() > Detector(["clean", "noise", "blur"], hidden=(32, 16)).macs()
    with pytest.raises(ValueError, match="lacks the domains"):
        Detector(["clean", "noise", "fog"]).attach_severity(head, (1, 2))
