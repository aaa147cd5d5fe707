"""Progress reporting: a tqdm bar on a terminal, a few plain lines with ETA elsewhere.

Nested tqdm bars written to a log file turn into hundreds of lines of escape codes. When standard
error is not a terminal, :func:`progress` therefore logs one plain line at 0 %, every 25 % and at
the end (with the elapsed time and an ETA), and inner bars (``inner=True``) stay silent.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator, Sized
from typing import Any

from ._logging import logger

__all__ = ["PlainProgress", "format_seconds", "progress"]


def format_seconds(seconds: float) -> str:
    """``75`` → ``"1 min 15 s"``; ``3725`` → ``"1 h 02 min"``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def _is_terminal() -> bool:
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


class PlainProgress:
    """A tqdm-like counter that logs a line at every ``step`` fraction of ``total``, with an ETA."""

    def __init__(
        self, iterable: Iterable | None, total: int | None, desc: str, unit: str, step: float = 0.25
    ) -> None:
        self.iterable = iterable
        self.total = total if total is not None else (len(iterable) if isinstance(iterable, Sized) else None)
        self.desc, self.unit, self.step = desc, unit, step
        self.n = 0
        self._next = 0.0
        self._start = time.perf_counter()
        self._postfix = ""
        self._report()

    def _report(self, force: bool = False) -> None:
        if not self.total:
            return
        frac = self.n / self.total
        if not force and frac < self._next:
            return
        while self._next <= frac:
            self._next += self.step
        elapsed = time.perf_counter() - self._start
        eta = (
            "" if self.n == 0 or self.n >= self.total else f", ETA {format_seconds(elapsed / frac - elapsed)}"
        )
        logger.info(
            f"{self.desc}: {self.n}/{self.total} {self.unit} ({100 * frac:.0f} %), "
            f"{format_seconds(elapsed)} elapsed{eta}{self._postfix}"
        )

    def update(self, n: int = 1) -> None:
        """Count ``n`` more items."""
        self.n += n
        self._report()

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        """Append ``key=value`` pairs to the next lines (as tqdm does on its bar)."""
        items = dict(*args, **kwargs)
        self._postfix = "".join(f", {k}={v}" for k, v in items.items())

    def set_description(self, desc: str) -> None:
        """Change the label of the next lines."""
        self.desc = desc

    def close(self) -> None:
        """Nothing to release."""

    def __iter__(self) -> Iterator:
        for item in self.iterable or ():
            yield item
            self.update()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Silent(PlainProgress):
    def _report(self, force: bool = False) -> None:
        return


def progress(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    enabled: bool = True,
    inner: bool = False,
) -> Any:
    """A progress bar over ``iterable`` (or a counter of ``total`` items to ``update``).

    Parameters
    ----------
    iterable
        What to iterate over; ``None`` for a counter advanced with ``update(n)``.
    total
        Number of items (default: ``len(iterable)``).
    desc, unit
        Label and unit name.
    enabled
        ``False`` shows nothing.
    inner
        A bar nested in another one: removed when done on a terminal, silent elsewhere.

    Returns
    -------
    A :class:`tqdm.tqdm` on a terminal, else a :class:`PlainProgress`.
    """
    if not enabled or (inner and not _is_terminal()):
        return _Silent(iterable, total, desc, unit)
    if _is_terminal():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=not inner)
    return PlainProgress(iterable, total, desc, unit)
