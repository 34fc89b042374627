"""Wire format: round trips, and every kind of malformed message raising Malformed with a reason."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.wire import FrameMessage, Malformed, ResultMessage, Truth, dead_fields


def frame(seed=0, shape=(32, 32, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def fields(enc="raw", **override):
    msg = FrameMessage.from_frame("cam01", 7, frame(), 123.5, Truth(label=3, domain="fog", severity=5), enc)
    return {**msg.to_fields(), **override}


@pytest.mark.parametrize("encoding", ["raw", "png"])
def test_lossless_round_trip(encoding):
    f = {k.encode(): (v if isinstance(v, bytes) else str(v).encode()) for k, v in fields(encoding).items()}
    msg = FrameMessage.from_fields(f)  # as Redis returns them: bytes keys and values
    assert np.array_equal(msg.decode(), frame())
    assert (msg.camera, msg.seq, msg.t_pub, msg.truth.label, msg.truth.domain) == ("cam01", 7, 123.5, 3, "fog")


def test_jpeg_round_trip_is_close():
    msg = FrameMessage.from_fields(fields("jpeg"))
    smooth = np.full((32, 32, 3), 120, np.uint8)
    assert msg.decode().shape == (32, 32, 3)
    again = FrameMessage.from_frame("c", 0, smooth, 0.0, encoding="jpeg").decode()
    assert np.abs(again.astype(int) - 120).max() <= 3


def png_claiming(width, height) -> bytes:
    """A 1x1 PNG whose header claims width x height (its CRC fixed, so only the size is a lie)."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


BAD = {
    "missing field": ({"camera": None}, "missing field 'camera'"),
    "wrong shape": ({"shape": "32,32,4"}, "shape"),
    "shape mismatch": ({"shape": "16,16,3"}, "raw payload has 3072 bytes"),
    "wrong dtype": ({"dtype": "float32"}, "dtype"),
    "truncated": ({"payload": frame().tobytes()[:1000]}, "raw payload has 1000 bytes"),
    "undecodable png": ({"encoding": "png", "payload": b"\x89PNG\r\n\x1a\n" + b"\x00" * 50}, "png payload does not decode"),
    "oversized": ({"payload": b"\x00" * (2 << 20)}, "exceeds the limit"),
    # finding: a 10000x10000 PNG bomb was refused as "payload is PNG (10000, 10000), the message says png"
    "png bomb": ({"encoding": "png", "payload": png_claiming(10000, 10000)},
                 "png payload is 10000x10000 pixels, over the limit of 1024 per side"),
    "png of another size": ({"encoding": "png", "payload": png_claiming(1, 1)}, "png payload is 1x1 pixels, the message says"),
    "jpeg said, png sent": ({"encoding": "jpeg", "payload": png_claiming(32, 32)}, "payload is PNG, the message says jpeg"),
    "bad version": ({"v": "9"}, "wire version"),
    "bad camera": ({"camera": "cam 1; DROP"}, "camera id"),
    "bad seq": ({"seq": "-1"}, "seq"),
    "bad truth": ({"truth": "{not json"}, "truth"),
    "not utf-8": ({"camera": b"\xff\xfe"}, "not UTF-8"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_malformed_messages_name_their_reason(kind):
    override, reason = BAD[kind]
    f = {k: v for k, v in fields(**{k: v for k, v in override.items() if v is not None}).items()
         if not (k in override and override[k] is None)}
    with pytest.raises(Malformed, match=reason.replace("(", r"\(")):
        FrameMessage.from_fields(f)


@settings(max_examples=60, deadline=None)
@given(key=st.sampled_from(["v", "camera", "seq", "t_pub", "encoding", "shape", "dtype", "truth", "payload"]),
       value=st.binary(max_size=64))
def test_any_corrupted_field_is_malformed_or_valid(key, value):
    f = fields(**{key: value})
    try:
        msg = FrameMessage.from_fields(f)
    except Malformed as exc:
        assert str(exc)
        return
    assert msg.decode().shape == (32, 32, 3)


def test_result_round_trip_and_dead_letter_summary():
    r = ResultMessage(camera="cam01", seq=3, frame_id="1-0", worker="w", t_pub=1.0, t_done=1.5, label=4,
                      class_name="deer", confidence=0.75, condition="fog", severity=4, detector_confidence=0.5,
                      truth=Truth(label=2), preds={"source": 2, "dynbn_vote": 4}, detected={"dynbn_vote": "fog"})
    assert ResultMessage.from_fields({k.encode(): v.encode() for k, v in r.to_fields().items()}) == r
    line = r.public()
    assert line["latency_ms"] == 500.0 and (line["label"], line["class_name"], line["condition"]) == (4, "deer", "fog")
    # a camera's frame has no truth and its result none either; a non-detecting arm leaves the condition empty
    bare = r.model_copy(update={"truth": None, "condition": None, "severity": None, "detector_confidence": None})
    assert "truth" not in bare.to_fields() and ResultMessage.from_fields(bare.to_fields()) == bare


@pytest.mark.parametrize("t_pub", ["nan", "inf", "-inf"])
def test_non_finite_publish_time_is_malformed(t_pub):
    with pytest.raises(Malformed, match="t_pub"):
        FrameMessage.from_fields(fields(t_pub=t_pub))


def test_frame_without_truth_round_trips():
    msg = FrameMessage.from_frame("c1", 0, np.zeros((32, 32, 3), np.uint8), 1.0)
    f = msg.to_fields()
    assert "truth" not in f and FrameMessage.from_fields(f).truth is None
    dead = dead_fields("because", "0", "1-0", fields(), "w")
    assert dead["reason"] == "because" and '"payload_bytes": 3072' in dead["fields"]
