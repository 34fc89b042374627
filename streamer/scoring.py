"""What a worker does to a batch of frame entries between reading and committing, Redis aside.

``parse`` splits entries into usable frames and dead letters (with the reason), ``predict``
runs every arm on the usable ones, ``result`` builds one frame's result message and ``track``
turns a change of a camera's condition into an event.
"""

from __future__ import annotations

import torch

from dynbn.device import FrameLoader, autocast

from .transport import Entry
from .wire import Event, FrameMessage, Malformed, ResultMessage


class ArmFailed(RuntimeError):
    """An arm raised on a batch; the message (arm, error) is the dead-letter reason of the batch's frames."""


def parse(batch: list[Entry], max_deliveries: int, max_payload: int, input_shape: tuple, checked=None):
    """Split a batch into usable (entry, message, frame) and dead (entry, reason), in the batch's order.

    ``checked``: entry -> what ``check`` made of it earlier (the worker's read-ahead checks entries in its
    reader thread), used instead of checking the entry again; None for an entry not checked yet."""
    good, dead = [], []
    for e in batch:
        got = checked(e) if checked is not None else None
        if got is None:
            got = check(e, max_deliveries, max_payload, input_shape)
        if isinstance(got, str):
            dead.append((e, got))
        else:
            good.append((e, *got))
    return good, dead


def check(e: Entry, max_deliveries: int, max_payload: int, input_shape: tuple) -> tuple[FrameMessage, object] | str:
    """One entry as (message, decoded frame), or the reason it is a dead letter."""
    if e.oversized:
        return f"entry of {e.size} bytes exceeds the limit of {max_payload} payload bytes (not read)"
    if e.deliveries > max_deliveries:
        return f"delivered {e.deliveries} times (limit {max_deliveries}): poison message?"
    try:
        msg = FrameMessage.from_fields(e.fields, max_payload)
        frame = msg.decode()
        if frame.shape != input_shape:
            raise Malformed(f"frame shape {frame.shape}, the model takes {input_shape}")
    except Malformed as exc:
        return str(exc)
    return msg, frame


@torch.no_grad()
def predict(arms: dict, good, loader: FrameLoader, precision: str = "fp32") -> dict[str, tuple[list[int], list[float], list | None]]:
    """Every arm on the batch, under ``autocast(loader.device, precision)``: arm -> (class per frame, its
    probability, conditions or None); ArmFailed names the arm that raised. The frames reach the device
    through ``loader`` (one copy of the batch's uint8 pixels)."""
    x = loader.load([f for _, _, f in good])  # B x 3 x H x W float on the device
    cams = [m.camera for _, m, _ in good]
    # the true domains, for oracle arms only; a camera's frames carry none
    truth = None if any(m.truth is None for _, m, _ in good) else [m.truth.domain for _, m, _ in good]
    out = {}
    for name, arm in arms.items():
        try:
            with autocast(loader.device, precision):
                logits = arm(x, cams, truth)
            confidence, classes = logits.float().softmax(1).max(1)
        except Exception as exc:  # one arm's bug must not stop the worker: it dead-letters the batch
            raise ArmFailed(f"arm {name} failed: {type(exc).__name__}: {exc}") from exc
        out[name] = (classes.tolist(), confidence.tolist(), arm.last_conditions())
    return out


def result(e: Entry, m: FrameMessage, i: int, outputs: dict, t_done: float, worker: str,
           class_names: list[str] | None) -> ResultMessage:
    """Frame i's result: the first (served) arm's answer and every arm's class."""
    classes, confidence, conditions = next(iter(outputs.values()))
    c = conditions[i] if conditions else None
    label = classes[i]
    name = class_names[label] if class_names and label < len(class_names) else None
    return ResultMessage(camera=m.camera, seq=m.seq, frame_id=e.id, worker=worker, t_pub=m.t_pub, t_done=t_done,
                         label=label, class_name=name, confidence=confidence[i],
                         condition=c.domain if c else None, severity=c.severity if c else None,
                         detector_confidence=c.confidence if c else None, truth=m.truth,
                         preds={a: o[0][i] for a, o in outputs.items()},
                         detected={a: o[2][i].domain for a, o in outputs.items() if o[2]})


def track(conditions: dict[str, str], r: ResultMessage) -> Event | None:
    """An event when the camera's condition differs from the one last announced in ``conditions`` (updated;
    none for a camera's first frame)."""
    if r.condition is None:
        return None
    before = conditions.get(r.camera)
    conditions[r.camera] = r.condition
    if before is None or before == r.condition:
        return None
    return Event(camera=r.camera, seq=r.seq, to=r.condition, severity=r.severity, confidence=r.detector_confidence,
                 time=r.t_done, **{"from": before})
