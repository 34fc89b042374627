"""Wire format: one pydantic model per message kind, flat string fields, never pickle.

A ``FrameMessage`` carries one frame as raw bytes (``shape``, ``dtype`` fields) or as
PNG/JPEG, and, from the scenario simulator only, ``truth`` (label, domain, severity,
position in its segment) that only the report (and the oracle arm) reads; a camera's
frames carry none. A ``ResultMessage`` carries the served arm's answer for one frame
(class, confidence, the condition it normalised for) and every arm's predicted class; an
``Event`` says that a camera's condition changed. ``from_fields`` raises ``Malformed`` with a reason for anything it cannot trust:
a missing or unparsable field, a payload over the size limit, a truncated or undecodable
payload, a wrong shape or dtype. The worker dead-letters such entries and goes on.
"""

from __future__ import annotations

import io
import json
import re
import warnings
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field, PrivateAttr, ValidationError, field_validator

VERSION = "1"
MAX_PAYLOAD_BYTES = 1 << 20   # 1 MiB: a 32x32 raw frame is 3 KiB; a 512x512 PNG still fits
MAX_SIDE = 1024
ENCODINGS = ("raw", "png", "jpeg")
_CAMERA = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class Malformed(ValueError):
    """A message that cannot be used; ``str(exc)`` is the reason stored in the dead-letter stream."""


class Truth(BaseModel):
    """Ground truth for scoring: label (-1: unknown), domain, severity, frames since the last shift."""

    label: int = -1
    domain: str = "clean"
    severity: int = 0
    since_shift: int = 0
    segment: int = 0


def _text(fields: dict, name: str) -> str:
    """One field as text; Malformed when missing or not UTF-8."""
    raw = fields.get(name, fields.get(name.encode()))
    if raw is None:
        raise Malformed(f"missing field {name!r}")
    try:
        return raw.decode() if isinstance(raw, (bytes, bytearray)) else str(raw)
    except UnicodeDecodeError:
        raise Malformed(f"field {name!r} is not UTF-8 text") from None


def _bytes(fields: dict, name: str) -> bytes:
    raw = fields.get(name, fields.get(name.encode()))
    if raw is None:
        raise Malformed(f"missing field {name!r}")
    return raw if isinstance(raw, bytes) else str(raw).encode()


class FrameMessage(BaseModel):
    """One camera frame on the wire."""

    camera: str
    seq: int = Field(ge=0)
    t_pub: float = Field(allow_inf_nan=False)  # a NaN would poison every latency figure downstream
    encoding: Literal["raw", "png", "jpeg"] = "raw"
    shape: tuple[int, int, int]
    dtype: Literal["uint8"] = "uint8"
    payload: bytes
    truth: Truth | None = None
    _frame: np.ndarray | None = PrivateAttr(default=None)  # decoded once by from_fields

    @field_validator("camera")
    @classmethod
    def _camera(cls, v: str) -> str:
        if not _CAMERA.match(v):
            raise ValueError(f"camera id {v!r} must be 1-64 characters of [A-Za-z0-9_.:-]")
        return v

    @field_validator("shape")
    @classmethod
    def _shape(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if v[2] != 3 or not (1 <= v[0] <= MAX_SIDE and 1 <= v[1] <= MAX_SIDE):
            raise ValueError(f"shape {v} must be (H, W, 3) with 1 <= H, W <= {MAX_SIDE}")
        return v

    @classmethod
    def from_frame(cls, camera: str, seq: int, frame: np.ndarray, t_pub: float,
                   truth: Truth | None = None, encoding: str = "raw") -> "FrameMessage":
        """Encode a uint8 ``H x W x 3`` frame."""
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"frame must be uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
        if encoding == "raw":
            payload = np.ascontiguousarray(frame).tobytes()
        else:
            buf = io.BytesIO()
            Image.fromarray(frame).save(buf, format=encoding.upper(), **({"quality": 95} if encoding == "jpeg" else {}))
            payload = buf.getvalue()
        return cls(camera=camera, seq=seq, t_pub=t_pub, encoding=encoding, shape=frame.shape,
                   payload=payload, truth=truth)

    def to_fields(self) -> dict[str, bytes | str]:
        """Flat Redis stream fields."""
        fields = {"v": VERSION, "camera": self.camera, "seq": str(self.seq), "t_pub": repr(self.t_pub),
                  "encoding": self.encoding, "shape": ",".join(map(str, self.shape)), "dtype": self.dtype,
                  "payload": self.payload}
        if self.truth is not None:
            fields["truth"] = self.truth.model_dump_json()
        return fields

    @classmethod
    def from_fields(cls, fields: dict, max_payload: int = MAX_PAYLOAD_BYTES) -> "FrameMessage":
        """Parse stream fields; Malformed(reason) for anything missing, oversized or invalid."""
        if _text(fields, "v") != VERSION:
            raise Malformed(f"wire version {_text(fields, 'v')!r}, this worker reads {VERSION!r}")
        payload = _bytes(fields, "payload")
        if len(payload) > max_payload:
            raise Malformed(f"payload of {len(payload)} bytes exceeds the limit of {max_payload}")
        try:
            shape = tuple(int(s) for s in _text(fields, "shape").split(","))
        except ValueError:
            raise Malformed(f"invalid field shape: {_text(fields, 'shape')[:40]!r} is not H,W,C") from None
        truth = None
        if "truth" in fields or b"truth" in fields:
            try:
                truth = Truth.model_validate_json(_text(fields, "truth"))
            except ValidationError as exc:
                raise Malformed(f"invalid field truth: {_first_error(exc)}") from None
        try:
            msg = cls(camera=_text(fields, "camera"), seq=int(_text(fields, "seq")), t_pub=float(_text(fields, "t_pub")),
                      encoding=_text(fields, "encoding"), shape=shape, dtype=_text(fields, "dtype"),
                      payload=payload, truth=truth)
        except (ValueError, ValidationError) as exc:
            raise Malformed(f"invalid field: {_first_error(exc)}") from None
        msg._frame = msg.decode()  # a payload that does not decode is malformed now, not later
        return msg

    def decode(self) -> np.ndarray:
        """The frame as uint8 ``H x W x 3``; Malformed when truncated, undecodable or misshapen."""
        if self._frame is not None:
            return self._frame
        if self.encoding == "raw":
            want = int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize
            if len(self.payload) != want:
                raise Malformed(f"raw payload has {len(self.payload)} bytes, shape {self.shape} {self.dtype} needs {want}")
            return np.frombuffer(self.payload, dtype=self.dtype).reshape(self.shape)
        try:
            with warnings.catch_warnings():  # PIL warns of a bomb at open; the side check below refuses it
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(self.payload))
            with img:
                if img.format != self.encoding.upper():
                    raise Malformed(f"payload is {img.format}, the message says {self.encoding}")
                (w, h), (mh, mw, _) = img.size, self.shape
                if w > MAX_SIDE or h > MAX_SIDE:  # read from the header: refused before any pixel is decoded
                    raise Malformed(f"{self.encoding} payload is {w}x{h} pixels, over the limit of {MAX_SIDE} per side "
                                    "(a decompression bomb?)")
                if (h, w) != (mh, mw):
                    raise Malformed(f"{self.encoding} payload is {w}x{h} pixels, the message says shape {self.shape}")
                frame = np.asarray(img.convert("RGB"))
        except Malformed:
            raise
        except Exception as exc:  # PIL raises many types for damaged images
            raise Malformed(f"{self.encoding} payload does not decode ({type(exc).__name__}: {exc})") from None
        if frame.shape != self.shape:
            raise Malformed(f"decoded frame has shape {frame.shape}, the message says {self.shape}")
        return frame


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        return f"{'.'.join(map(str, err['loc'])) or 'value'}: {err['msg']}"
    return str(exc)


_RESULT_SCALARS = ("camera", "seq", "frame_id", "worker", "t_pub", "t_done", "label", "class_name", "confidence",
                   "condition", "severity", "detector_confidence")


class ResultMessage(BaseModel):
    """One frame's result: the served (first) arm's answer, every arm's class, timing and the frame's truth.

    ``condition`` is what the served arm normalised the frame for (a corruption, ``clean`` or
    ``unknown``; None for arms that do not detect), ``severity`` its severity estimate and
    ``detector_confidence`` the detector's probability of that condition for this frame.
    """

    camera: str
    seq: int
    frame_id: str
    worker: str
    t_pub: float
    t_done: float
    label: int
    class_name: str | None = None
    confidence: float
    condition: str | None = None
    severity: int | None = None
    detector_confidence: float | None = None
    truth: Truth | None = None
    preds: dict[str, int] = Field(default_factory=dict)
    detected: dict[str, str] = Field(default_factory=dict)

    def to_fields(self) -> dict[str, str]:
        fields = {"v": VERSION, **{k: json.dumps(getattr(self, k)) for k in _RESULT_SCALARS},
                  "preds": json.dumps(self.preds), "detected": json.dumps(self.detected)}
        if self.truth is not None:
            fields["truth"] = self.truth.model_dump_json()
        return fields

    @classmethod
    def from_fields(cls, fields: dict) -> "ResultMessage":
        try:
            values = {k: json.loads(_text(fields, k)) for k in _RESULT_SCALARS}
            has_truth = "truth" in fields or b"truth" in fields
            truth = Truth.model_validate_json(_text(fields, "truth")) if has_truth else None
            return cls(**values, truth=truth, preds=json.loads(_text(fields, "preds")),
                       detected=json.loads(_text(fields, "detected")))
        except (ValueError, ValidationError) as exc:
            raise Malformed(f"invalid result: {_first_error(exc)}") from None

    def public(self) -> dict:
        """The JSON line ``dynbn results`` prints: the answer, the condition and the publish-to-result latency
        (clocks of the publishing and the serving machine; keep them synchronised, e.g. NTP)."""
        out = {k: getattr(self, k) for k in ("camera", "seq", "label", "class_name", "confidence", "condition",
                                             "severity", "detector_confidence")}
        out["latency_ms"] = round((self.t_done - self.t_pub) * 1000, 3)
        out.update(t_pub=self.t_pub, t_done=self.t_done, worker=self.worker, frame_id=self.frame_id)
        if len(self.preds) > 1:
            out["preds"] = self.preds
        return out


class Event(BaseModel):
    """A camera's condition changed at frame ``seq``: ``from_`` -> ``to`` (say clean -> fog), at ``time``."""

    camera: str
    seq: int
    from_: str = Field(alias="from")
    to: str
    severity: int | None = None
    confidence: float | None = None
    time: float

    model_config = {"populate_by_name": True}

    def to_fields(self) -> dict[str, str]:
        return {"v": VERSION, **{k: json.dumps(v) for k, v in self.public().items()}}

    @classmethod
    def from_fields(cls, fields: dict) -> "Event":
        try:
            return cls(**{k: json.loads(_text(fields, k)) for k in ("camera", "seq", "from", "to", "severity",
                                                                   "confidence", "time")})
        except (ValueError, ValidationError) as exc:
            raise Malformed(f"invalid event: {_first_error(exc)}") from None

    def public(self) -> dict:
        """The JSON line ``dynbn events`` prints."""
        return self.model_dump(by_alias=True)


def dead_fields(reason: str, stream: str, entry_id: str, fields: dict, worker: str) -> dict[str, str]:
    """A dead-letter entry: the reason, where it came from, and the original fields minus the payload."""
    summary = {}
    for k, v in fields.items():
        key = k.decode(errors="replace") if isinstance(k, bytes) else str(k)
        if key == "payload":
            summary["payload_bytes"] = len(v)
        else:
            text = v.decode(errors="replace") if isinstance(v, bytes) else str(v)
            summary[key] = text[:200]
    return {"reason": reason[:500], "stream": stream, "id": entry_id, "worker": worker, "fields": json.dumps(summary)}
