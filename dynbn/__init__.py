"""dynbn: dynamic BatchNorm statistics for streams of corrupted frames (arXiv 2310.20649)."""

__version__ = "0.1.0"
