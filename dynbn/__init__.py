"""dynbn: dynamic BatchNorm statistics for streams of corrupted frames (arXiv 2310.20649).

A shallow MLP reads each frame's Fourier spectrum and names its corruption; BatchNorm
statistics calibrated beforehand for that corruption are swapped into the unchanged
pretrained model, per frame. The names below are the public API (see the README's example).
"""

from .bn.table import BNTable
from .corruptions import corrupt
from .data import frost_dir, load_cifar10
from .detector import Detector
from .fitting import FitConfig, build
from .methods import REGISTRY, build_method
from .models import build_model
from .spectrum import to_tensor
from .vote import VoteRule

__version__ = "0.1.0"

__all__ = ["BNTable", "Detector", "FitConfig", "REGISTRY", "VoteRule", "build", "build_method", "build_model",
           "corrupt", "frost_dir", "load_cifar10", "to_tensor"]
