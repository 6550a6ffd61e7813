"""What a training run tells people: a tqdm bar on a terminal, plain lines in logs, TensorBoard scalars.

Only the main process reports. Every ``log_every`` steps it shows the mean loss over those steps, the
learning rate, clips per second (the global batch over the wall time of those steps, everything included)
and the time left at that rate: as the bar's postfix on a terminal, else as one line
``step S/N loss L lr R C clips/s eta H:MM:SS``. With a TensorBoard folder (and the ``tensorboard`` package)
the same numbers go there too, as ``train/loss``, ``train/lr``, ``train/clips_per_s`` and ``val/loss``.
"""
from __future__ import annotations

import sys
import time

from tqdm import tqdm


class TrainLog:
    """Reports of one run from step ``start`` to ``steps``; ``log``: where plain lines go (default: stderr,
    as a bar when stderr is a terminal); ``main``: False on the other processes, which report nothing."""

    def __init__(self, steps: int, start: int, batch: int, log_every: int, main: bool, log=None,
                 tensorboard: str | None = None):
        self.steps, self.batch, self.every, self.main = steps, batch, max(1, log_every), main
        self.bar = self.writer = None
        if main and log is None and sys.stderr.isatty():
            self.bar = tqdm(total=steps, initial=start, unit="step", dynamic_ncols=True, file=sys.stderr)
            log = lambda s: tqdm.write(s, file=sys.stderr)  # noqa: E731 - lines above the bar
        self.log = log or (lambda s: print(s, file=sys.stderr, flush=True))
        self.losses, self.t0, self.last = [], time.perf_counter(), None
        if main and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.info(f"TensorBoard logging to {tensorboard} is off: the tensorboard package is not installed "
                          f"(pip install tensorboard)")
            else:  # purge_step drops what a stopped run logged after the checkpoint this run resumes
                self.writer = SummaryWriter(tensorboard, purge_step=start or None)

    def info(self, line: str) -> None:
        if self.main:
            self.log(line)

    def step(self, step: int, loss: float, lr: float) -> None:
        """After optimizer step ``step`` (counted from 1) with global mean loss ``loss``."""
        if not self.main:
            return
        self.losses.append(loss)
        if self.bar is not None:
            self.bar.update(1)
        if step % self.every and step != self.steps:
            return
        now = time.perf_counter()
        rate = self.batch * len(self.losses) / max(now - self.t0, 1e-9)
        mean = sum(self.losses) / len(self.losses)
        self.last, self.losses, self.t0 = mean, [], now
        eta = tqdm.format_interval((self.steps - step) * self.batch / rate)
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {mean:.4f} lr {lr:.2e} {rate:.1f} clips/s")
        else:
            self.log(f"step {step}/{self.steps} loss {mean:.5f} lr {lr:.2e} {rate:.1f} clips/s eta {eta}")
        if self.writer is not None:
            for name, value in (("train/loss", mean), ("train/lr", lr), ("train/clips_per_s", rate)):
                self.writer.add_scalar(name, value, step)

    def val(self, step: int, loss: float, clips: int) -> None:
        self.info(f"step {step}/{self.steps} val loss {loss:.5f} (EMA weights, {clips} held-out clips)")
        if self.writer is not None:
            self.writer.add_scalar("val/loss", loss, step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
