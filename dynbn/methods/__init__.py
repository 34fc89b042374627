"""Adaptation methods, one class per file; all share ``Method``'s interface (see base.py).

``registry.build_method(name, model, table=..., detector=...)`` builds any of them by name.
"""

from .base import Method, batch_statistics
from .bn_adapt import BNAdapt
from .bn_ema import BNEMA
from .bn_prior import BNPrior
from .dynbn import DynBNFrame, DynBNFrameSeverity, DynBNOracle, DynBNVote
from .dynbn_open import DynBNOpen
from .dynbn_prior import DynBNPrior
from .dynbn_soft import DynBNSoft
from .lame import LAME
from .rotta import RoTTA
from .registry import BASELINES, REGISTRY, build_method
from .source import Source
from .tent import Tent
from .unmix_tns import UnMixTNS

__all__ = ["Method", "batch_statistics", "BNAdapt", "BNEMA", "BNPrior", "DynBNFrame", "DynBNFrameSeverity", "DynBNOracle", "DynBNVote", "DynBNOpen", "DynBNPrior", "DynBNSoft",
           "Source", "Tent", "UnMixTNS", "LAME", "RoTTA", "REGISTRY", "BASELINES", "build_method"]
