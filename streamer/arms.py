"""Arms by name: build the methods a scenario compares, each on its own copy of the model.

Names and constructors come from ``dynbn.methods.registry``; an arm's plain settings (a
scenario's ``arm_settings``) become its constructor's keywords through ``arm_kwargs``.
Each arm gets its own deep copy of the model (and detector), so stateful arms never see
each other's changes and arms run side by side on the same batch.

Per-camera state that travels: dynbn_vote's vote state (``dynbn.vote.CameraVote``, a few
hundred bytes, its severity evidence included) is exported here as JSON, and any arm may implement
``export_state(camera) -> dict`` / ``import_state(camera, dict)``; the worker commits each
camera's state with its results, so a worker that takes a camera over resumes it exactly.
Arms without either (bn_ema, tent: model-sized state) keep their per-camera state in the
worker only: after a hand-over the new owner starts that camera from the arm's initial
state, so their results after a worker failure differ from an undisturbed run.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import torch

from dynbn.methods.registry import REGISTRY, arm_kwargs, build_method


def available() -> list[str]:
    """Every arm name this installation can build (``dynbn.methods.registry``)."""
    return list(REGISTRY)


def build_arms(names: list[str], model: torch.nn.Module, table, detector, settings: dict[str, dict] | None = None,
               device: str = "cpu") -> dict:
    """name -> method, in the order given; ``settings`` holds each arm's plain settings (a scenario's ``arm_settings``).
    Every arm lives on ``device``: its copies of the model and detector, and the BN table it reads."""
    settings = settings or {}
    table = table.to(device) if table is not None else None  # the arms that read it build their statistics from it
    arms = {}
    for name in names:
        if name not in REGISTRY:
            raise ValueError(f"unknown arm {name!r}; available: {', '.join(available())}")
        own = copy.deepcopy(model).to(device).eval()
        det = copy.deepcopy(detector).to(device).eval() if detector is not None else None
        arms[name] = build_method(name, own, table=table, detector=det, **arm_kwargs(name, settings.get(name, {})))
    return arms


def input_shape(model) -> tuple[int, int, int]:
    """The frame shape the model takes (``Normalized.input_size``, 32 for CIFAR models)."""
    size = getattr(model, "input_size", 32)
    return (size, size, 3)


def detected(arm) -> list[str] | None:
    """Domain names the arm used for the last batch (None for arms that do not detect)."""
    conditions = arm.last_conditions()
    return None if conditions is None else [c.domain for c in conditions]


def _votes(arm):
    """The per-camera vote states of a dynbn_vote arm (``dynbn.vote.Votes``), else None."""
    votes = getattr(arm, "votes", None)
    return votes if votes is not None and hasattr(votes, "cameras") and hasattr(votes, "state") else None


def export_state(arm, camera: str) -> dict | None:
    """JSON-able state of one camera in one arm: the arm's own ``export_state``, or a vote's fields."""
    if hasattr(arm, "export_state"):
        return arm.export_state(camera)
    votes = _votes(arm)
    if votes is None or camera not in votes.cameras:
        return None
    v = votes.cameras[camera]
    return {"probs": v.probs.tolist(), "seen": v.seen, "active": v.active, "candidate": v.candidate,
            "count": v.count, "switches": v.switches,
            # the severity evidence of the camera's current segment (dynbn_vote with a severity head)
            "level_domain": v.level_domain, "level_sum": None if v.level_sum is None else v.level_sum.tolist()}


def import_state(arm, camera: str, state: dict) -> None:
    if hasattr(arm, "import_state"):
        arm.import_state(camera, state)
        return
    votes = _votes(arm)
    if votes is not None:
        v = votes.state(camera)
        v.probs = np.asarray(state["probs"], dtype=np.float64).reshape(v.probs.shape)
        v.seen, v.active, v.candidate = int(state["seen"]), int(state["active"]), int(state["candidate"])
        v.count, v.switches = int(state["count"]), int(state["switches"])
        v.level_domain = int(state.get("level_domain", -1))  # states committed before severity existed lack it
        level_sum = state.get("level_sum")
        v.level_sum = None if level_sum is None else np.asarray(level_sum, dtype=np.float64)


CONDITION = "_condition"  # the key of a camera's last announced condition in its committed state


def export_states(arms: dict, cameras, conditions: dict[str, str] | None = None) -> dict[str, str]:
    """camera -> JSON of every exportable arm's state for that camera, and its last announced condition."""
    out = {}
    for cam in sorted(set(cameras)):
        states = {name: st for name, arm in arms.items() if (st := export_state(arm, cam)) is not None}
        if conditions and cam in conditions:
            states[CONDITION] = conditions[cam]
        if states:
            out[cam] = json.dumps(states)
    return out


def import_states(arms: dict, states: dict[str, str]) -> dict[str, str]:
    """Restore per-camera states committed by whichever worker owned the cameras before; returns the
    cameras' last announced conditions (so a condition change is announced once, across hand-overs)."""
    conditions = {}
    for cam, blob in states.items():
        for name, state in json.loads(blob).items():
            if name == CONDITION:
                conditions[cam] = state
            elif name in arms:
                import_state(arms[name], cam, state)
    return conditions


def forget(arms: dict, cameras) -> None:
    """Drop local state of cameras this worker no longer owns (the next owner has the committed one)."""
    for arm in arms.values():
        votes = _votes(arm)
        for cam in cameras:
            if hasattr(arm, "forget"):
                arm.forget(cam)
            elif votes is not None:
                votes.cameras.pop(cam, None)
