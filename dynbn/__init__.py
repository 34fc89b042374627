"""dynbn: dynamic BatchNorm statistics for streams of corrupted frames (arXiv 2310.20649).

A shallow MLP reads each frame's Fourier spectrum and names its corruption; BatchNorm
statistics calibrated beforehand for that corruption are swapped into the unchanged
pretrained model, per frame. The names below are the public API (see the README's example).
"""

from ._version import __version__
from .bn.table import BNTable
from .bundle import Bundle, fit_bundle, load_bundle
from .corruptions import corrupt
from .data import frost_dir, load_cifar10
from .detector import Detector
from .fitting import FitConfig, build
from .methods import REGISTRY, build_method
from .models import build_model
from .spectrum import to_tensor
from .vote import VoteRule

__all__ = ["BNTable", "Bundle", "Detector", "FitConfig", "REGISTRY", "VoteRule", "__version__", "build", "build_method",
           "build_model", "corrupt", "fit_bundle", "frost_dir", "load_bundle", "load_cifar10", "to_tensor"]
