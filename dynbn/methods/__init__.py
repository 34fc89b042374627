"""Adaptation methods, one class per file; all share ``Method``'s interface (see base.py)."""

from .base import Method, batch_statistics
from .bn_adapt import BNAdapt
from .dynbn import DynBNFrame, DynBNOracle
from .source import Source

__all__ = ["Method", "batch_statistics", "BNAdapt", "DynBNFrame", "DynBNOracle", "Source"]
