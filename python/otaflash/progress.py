"""Progress from long native work: the callback shape and reporters.

Native operations call ``progress(operation, done, total)``: ``operation`` is
one of ``hash``, ``download``, ``patch``, ``erase``, ``program``, ``verify``,
``transfer``; ``done`` and ``total`` count bytes (``total`` is ``None`` when
unknown). Calls come at most every 100 ms per operation, plus a final call
with ``done == total`` when an operation completes. Raising from the callback
stops the operation and the exception propagates.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:  # tqdm loads when a bar is first shown, not with every command
    from tqdm import tqdm

__all__ = ["ProgressBars", "ProgressCallback"]

ProgressCallback = Callable[[str, int, "int | None"], object]


class ProgressBars:
    """tqdm bars on stderr, one per operation, closed as each completes (an
    operation that runs again gets a new bar)."""

    def __init__(self, *, label: str = "", stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self._bars: dict[str, tqdm[Any]] = {}
        self._finished: dict[str, int] = {}

    def __call__(self, operation: str, done: int, total: int | None) -> None:
        bar = self._bars.get(operation)
        if bar is None:
            if total is not None and done >= total and self._finished.get(operation) == total:
                return  # the final call of a finished run, repeated
            from tqdm import tqdm

            desc = f"{self.label} {operation}".strip()
            bar = self._bars[operation] = tqdm(
                total=total, unit="B", unit_scale=True, desc=desc, file=self.stream, leave=False
            )
        if total is not None and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)
        if total is not None and done >= total:
            bar.close()
            # The next run of this operation (a second write) gets a new bar.
            del self._bars[operation]
            self._finished[operation] = total

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()

    def __enter__(self) -> ProgressBars:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
