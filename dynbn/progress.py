"""Progress bars for the long runs (fitting, reproduce, stream-bench, publishing).

One place decides how progress looks: a tqdm bar on stderr when stderr is a terminal, and
nothing otherwise (``disable=None``), so logs, CI output and reports stay clean.
"""

from __future__ import annotations

from collections.abc import Iterable

from tqdm import tqdm


def progress(iterable: Iterable | None = None, *, desc: str, total: int | None = None, unit: str = "it") -> tqdm:
    """``iterable`` wrapped in a progress bar (or a bare bar to ``update`` when it is None)."""
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=None, leave=False, dynamic_ncols=True)
