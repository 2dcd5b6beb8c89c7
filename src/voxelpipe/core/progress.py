"""Progress for long work: a bar on a terminal, log lines otherwise (logger ``voxelpipe``)."""
from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("voxelpipe")

_BAR_WIDTH = 30
_LOG_EVERY_SECONDS = 10.0


class Progress:
    """Counts ``done`` of ``total`` items; draws a bar on a TTY stderr, else logs every 10 s and at the end."""

    def __init__(self, total: int, label: str, unit: str = "files", enabled: bool = True):
        self.total = total
        self.label = label
        self.unit = unit
        self.done = 0
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.start = self.last_log = time.perf_counter()

    def update(self, count: int = 1) -> None:
        self.done += count
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.tty:
            self._draw(now)
        elif now - self.last_log >= _LOG_EVERY_SECONDS:
            self.last_log = now
            log.info("%s: %d/%d %s (%.0f/s)", self.label, self.done, self.total, self.unit, self._rate(now))

    def close(self) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.tty:
            self._draw(now)
            sys.stderr.write("\n")
            sys.stderr.flush()
        log.info("%s: %d/%d %s in %.1f s (%.0f/s)", self.label, self.done, self.total, self.unit,
                 now - self.start, self._rate(now))

    def _rate(self, now: float) -> float:
        return self.done / max(now - self.start, 1e-9)

    def _draw(self, now: float) -> None:
        fraction = self.done / self.total if self.total else 1.0
        filled = int(fraction * _BAR_WIDTH)
        bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
        sys.stderr.write(f"\r{self.label} [{bar}] {self.done}/{self.total} {self.unit} {self._rate(now):.0f}/s")
        sys.stderr.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
