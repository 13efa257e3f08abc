"""A progress bar on stderr for long work: bytes, rate, ETA and the current file."""

from __future__ import annotations

import time
from typing import IO


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


class ProgressBar:
    """Redrawn at most ten times a second; does nothing unless ``enabled``."""

    def __init__(
        self, stream: IO[str], total: int, done: int = 0, enabled: bool = True, width: int = 80
    ) -> None:
        self.stream = stream
        self.total = max(total, 1)
        self.done = done
        self.enabled = enabled
        self.width = width
        self.started = time.monotonic()
        self.start_bytes = done
        self.current = ""
        self._drawn = 0.0

    def advance(self, n: int, current: str) -> None:
        self.done += n
        self.current = current
        now = time.monotonic()
        if self.enabled and now - self._drawn >= 0.1:
            self._drawn = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self.started, 1e-6)
        rate = (self.done - self.start_bytes) / elapsed
        left = max(self.total - self.done, 0)
        eta = f"{int(left / rate) // 60}:{int(left / rate) % 60:02d}" if rate > 0 else "--:--"
        fraction = min(self.done / self.total, 1.0)
        bar = "#" * int(fraction * 20)
        name = self.current.rsplit("/", 1)[-1]
        line = (
            f"[{bar:<20}] {fraction * 100:5.1f}% {_size(self.done)}/{_size(self.total)} "
            f"{_size(rate)}/s ETA {eta} {name}"
        )
        self.stream.write("\r" + line[: self.width - 1].ljust(self.width - 1))
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._drawn:
            self.stream.write("\r" + " " * (self.width - 1) + "\r")
            self.stream.flush()
