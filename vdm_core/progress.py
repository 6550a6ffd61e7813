"""Progress of long work for people: a tqdm bar redrawn in place on a terminal, plain lines in a log."""
from __future__ import annotations

import sys
import time

from tqdm import tqdm


class ProgressBar:
    """``bar(done, total, preview=None)`` reports that ``done`` of ``total`` units are done (the shape of
    the jobs' and the sampler's progress callbacks; ``preview`` is ignored). On a terminal it is a tqdm bar
    with rate and ETA; on anything else (a log file, a pipe) a line in tqdm's format every 5 % and at the
    end. ``postfix`` (e.g. ``loss=0.041``) is shown after the rate; ``close()`` ends a bar cut short."""

    def __init__(self, label: str, *, unit: str = "step", stream=None):
        self.label, self.unit, self.stream = label, unit, stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.bar: tqdm | None = None
        self.start: tuple[float, int] | None = None  # (time, done) of the first report
        self.last = -1
        self.postfix = ""

    def __call__(self, done: int, total: int, preview=None) -> None:
        total = max(1, int(total))
        done = max(0, min(int(done), total))
        if self.tty:
            if self.bar is None:
                self.bar = tqdm(total=total, initial=done, desc=self.label, unit=self.unit, file=self.stream,
                                dynamic_ncols=True)
            self.bar.total = total
            self.bar.set_postfix_str(self.postfix, refresh=False)
            self.bar.update(done - self.bar.n)
            if done == total:
                self.close()
            return
        now = time.monotonic()
        if self.start is None:
            self.start = (now, done)
        tick = done * 20 // total
        if tick == self.last:
            return
        self.last = tick
        t0, d0 = self.start
        line = tqdm.format_meter(done, total, now - t0, prefix=self.label, unit=self.unit, initial=d0,
                                 postfix=self.postfix or None, ascii=True)
        print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
