"""Progress of long steps (downloads, llama-perplexity chunks, needle trials): a tqdm bar on a
terminal, a plain line per step where stderr is a log (CI, a pipe), so logs stay readable."""
from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


class Progress:
    """`with Progress("tq3", total=20, unit="chunk") as p: p.update_to(n)`.

    Without a terminal it writes "tq3: 5/20 chunk" lines, at most one per `every` seconds (and
    always the last), instead of a bar's carriage returns."""

    def __init__(self, desc: str, total: Optional[int] = None, unit: str = "it", unit_scale: bool = False,
                 file: Optional[TextIO] = None, every: float = 5.0, enabled: bool = True) -> None:
        self.desc, self.total, self.unit, self.n = desc, total, unit, 0
        self.file = file or sys.stderr
        self.enabled = enabled
        self._every, self._last = every, 0.0
        self._bar = None
        if enabled and self.file.isatty():
            from tqdm import tqdm  # noqa: PLC0415

            self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale, file=self.file,
                             leave=True, dynamic_ncols=True)

    def update_to(self, n: int, total: Optional[int] = None) -> None:
        if total is not None and total != self.total:
            self.total = total
            if self._bar is not None:
                self._bar.total = total
        if n <= self.n or not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n - self.n)
            self.n = n
            return
        self.n = n
        now = time.monotonic()
        if now - self._last >= self._every or (self.total is not None and n >= self.total):
            self._last = now
            unit = "MiB" if self.unit == "B" else self.unit
            self.file.write(f"{self.desc}: {self._fmt(n)}" + (f"/{self._fmt(self.total)}" if self.total else "")
                            + f" {unit}\n")
            self.file.flush()

    def write(self, message: str) -> None:
        """A line of its own (above the bar on a terminal)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message, file=self.file)
        else:
            self.file.write(message + "\n")
            self.file.flush()

    def _fmt(self, n: int) -> str:
        return f"{n / 2**20:.0f}" if self.unit == "B" else str(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
