"""The progress bar of `fxforge bench`: tqdm on stderr when installed, else a one-line bar."""

from __future__ import annotations

import sys
import time


class Progress:
    """tqdm on stderr when installed, else a one-line bar; silent when disabled."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.enabled, self._bar = total, 0, enabled, None
        self.start = time.perf_counter()
        if enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, file=sys.stderr, unit="step", dynamic_ncols=True,
                                 bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<"
                                            "{remaining}]")
            except ImportError:
                self._bar = None

    def step(self, label: str, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_description_str(label[:48])
            self._bar.update(n)
            return
        width = 30
        filled = int(width * self.done / max(1, self.total))
        elapsed = time.perf_counter() - self.start
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                         f"{elapsed:5.0f}s {label[:48]:48}")
        sys.stderr.flush()

    def label(self, text: str) -> None:
        if self.enabled and self._bar is not None:
            self._bar.set_description_str(text[:48])

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        else:
            sys.stderr.write("\n")
