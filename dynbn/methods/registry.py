"""Build adaptation methods by name: the benchmark's and the streaming service's arms.

``build_method(name, model, table=..., detector=..., **kw)`` returns a fresh method; extra
keywords go to the method's constructor (e.g. ``prior=`` for bn_prior, ``rule=`` for
dynbn_vote). Methods that need the BN table or the detector say so when they are missing.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..bn_table import BNTable
from ..detector import Detector
from .base import Method
from .bn_adapt import BNAdapt
from .bn_ema import BNEMA
from .bn_prior import BNPrior
from .dynbn import DynBNFrame, DynBNOracle, DynBNVote
from .dynbn_open import DynBNOpen
from .dynbn_prior import DynBNPrior
from .dynbn_soft import DynBNSoft
from .source import Source
from .tent import Tent
from .unmix_tns import UnMixTNS


def _needs(name: str, **parts) -> None:
    missing = [k for k, v in parts.items() if v is None]
    if missing:
        raise ValueError(f"method {name!r} needs {' and '.join(missing)}: pass {', '.join(f'{k}=...' for k in missing)}")


def _plain(cls) -> Callable[..., Method]:
    return lambda model, table, detector, **kw: cls(model, **kw)


def _with_table(cls) -> Callable[..., Method]:
    def build(model, table, detector, **kw):
        _needs(cls.name, table=table)
        return cls(model, table, **kw)
    return build


def _with_detector(cls) -> Callable[..., Method]:
    def build(model, table, detector, **kw):
        _needs(cls.name, table=table, detector=detector)
        return cls(model, table, detector, **kw)
    return build


# name -> builder(model, table, detector, **kw); the order is the benchmark's column order
REGISTRY: dict[str, Callable[..., Method]] = {
    "source": _plain(Source),
    "bn_adapt": _plain(BNAdapt),
    "bn_prior": _plain(BNPrior),
    "bn_ema": _plain(BNEMA),
    "tent": _plain(Tent),
    "unmix_tns": _plain(UnMixTNS),
    "dynbn_frame": _with_detector(DynBNFrame),
    "dynbn_vote": _with_detector(DynBNVote),
    "dynbn_open": _with_detector(DynBNOpen),
    "dynbn_soft": _with_detector(DynBNSoft),
    "dynbn_prior": _with_detector(DynBNPrior),
    "dynbn_oracle": _with_table(DynBNOracle),
}

# the test-time-adaptation baselines dynbn_vote is compared against
BASELINES = ("bn_adapt", "bn_prior", "bn_ema", "tent", "unmix_tns")


def build_method(name: str, model: nn.Module, *, table: BNTable | None = None,
                 detector: Detector | None = None, **kw) -> Method:
    """A new method called ``name`` wrapping ``model`` (see ``REGISTRY`` for the names)."""
    if name not in REGISTRY:
        raise KeyError(f"unknown method {name!r}; choose from {', '.join(REGISTRY)}")
    return REGISTRY[name](model, table, detector, **kw)
