"""Build adaptation methods by name: the benchmark's and the streaming service's arms.

``build_method(name, model, table=..., detector=..., **kw)`` returns a fresh method; extra
keywords go to the method's constructor (e.g. ``prior=`` for bn_prior, ``rule=`` for
dynbn_vote). Methods that need the BN table or the detector say so when they are missing.

``arm_kwargs(name, settings)`` turns an arm's plain settings, as a scenario file, an arms
config file or ``--arm NAME.key=value`` give them, into those keywords: every key must be a
parameter of the arm's constructor, and a vote rule may be written ``W,M,H[,K]``, a list or
a mapping.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from ..bn.table import BNTable
from ..detector import Detector
from ..vote import VoteRule
from .base import Method
from .bn_adapt import BNAdapt
from .bn_ema import BNEMA
from .bn_prior import BNPrior
from .dynbn import DynBNFrame, DynBNOracle, DynBNVote
from .dynbn_open import DynBNOpen
from .dynbn_prior import DynBNPrior
from .dynbn_soft import DynBNSoft
from .lame import LAME
from .rotta import RoTTA
from .source import Source
from .tent import Tent
from .unmix_tns import UnMixTNS


def _needs(name: str, **parts) -> None:
    missing = [k for k, v in parts.items() if v is None]
    if missing:
        raise ValueError(f"method {name!r} needs {' and '.join(missing)}: pass {', '.join(f'{k}=...' for k in missing)}")


def _builder(cls) -> Callable[..., Method]:
    """A builder passing ``cls`` the parts its constructor names (``table``, ``detector``), checked present."""
    parts = [p for p in ("table", "detector") if p in inspect.signature(cls.__init__).parameters]

    def build(model, table, detector, **kw):
        given = {"table": table, "detector": detector}
        _needs(cls.name, **{p: given[p] for p in parts})
        return cls(model, *(given[p] for p in parts), **kw)
    return build


# name -> the class behind each arm (its constructor gives the parts it needs and its settings)
CLASSES: dict[str, type[Method]] = {
    "source": Source, "bn_adapt": BNAdapt, "bn_prior": BNPrior, "bn_ema": BNEMA, "tent": Tent, "unmix_tns": UnMixTNS,
    "dynbn_frame": DynBNFrame, "dynbn_vote": DynBNVote, "dynbn_open": DynBNOpen, "dynbn_soft": DynBNSoft,
    "dynbn_prior": DynBNPrior, "dynbn_oracle": DynBNOracle, "lame": LAME, "rotta": RoTTA,
}

# name -> builder(model, table, detector, **kw); the order is the benchmark's column order
REGISTRY: dict[str, Callable[..., Method]] = {name: _builder(cls) for name, cls in CLASSES.items()}

# the test-time-adaptation baselines dynbn_vote is compared against
BASELINES = ("bn_adapt", "bn_prior", "bn_ema", "tent", "unmix_tns", "lame", "rotta")


def build_method(name: str, model: nn.Module, *, table: BNTable | None = None,
                 detector: Detector | None = None, **kw) -> Method:
    """A new method called ``name`` wrapping ``model`` (see ``REGISTRY`` for the names)."""
    if name not in REGISTRY:
        raise KeyError(f"unknown method {name!r}; choose from {', '.join(REGISTRY)}")
    return REGISTRY[name](model, table, detector, **kw)


_PARTS = ("self", "model", "table", "detector", "return")  # what build_method passes itself, never a setting


def settings_of(name: str) -> dict[str, Any]:
    """The settings arm ``name`` takes: name -> type."""
    if name not in CLASSES:
        raise KeyError(f"unknown arm {name!r}; choose from {', '.join(REGISTRY)}")
    return {k: hint for k, hint in typing.get_type_hints(CLASSES[name].__init__).items() if k not in _PARTS}


def arm_kwargs(name: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Plain settings of arm ``name`` (numbers, booleans, strings, lists, mappings) -> its constructor's keywords.

    Raises ValueError naming the arm and the key for an unknown key or a value of the wrong form.
    """
    known = settings_of(name)
    out = {}
    for key, value in settings.items():
        if key not in known:
            raise ValueError(f"arm {name!r} has no setting {key!r}; its settings: {', '.join(known) or 'none'}")
        try:
            out[key] = _coerce(value, known[key])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"arm {name!r}, setting {key!r}: {exc}") from None
    return out


def _coerce(value: Any, hint: Any) -> Any:
    """A plain value as the setting's type (a vote rule, a tuple, a flag or a number; None where allowed)."""
    args = typing.get_args(hint)
    if type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is VoteRule:
        return VoteRule.parse(value)
    if typing.get_origin(hint) is tuple:
        return tuple(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise TypeError(f"expected true or false, got {value!r}")
        return value
    if hint in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"expected a number, got {value!r}")
        if hint is int and value != int(value):
            raise TypeError(f"expected an integer, got {value!r}")
        return hint(value)
    return value
