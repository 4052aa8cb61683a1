"""Progress for logs that a cluster keeps: one readable line per epoch, and one every few minutes within a long one.

A progress bar rewrites itself on every step. In a terminal that is what one wants; in a file (a cluster job's log,
`runner.py > log`) every rewrite stays: the quick preset wrote 310 KB of bar updates for two small cells, the paper's
10,009 steps an epoch would write hundreds of MB per run. The CLI uses `LogLines` instead of the bar when its output
is not a terminal (cli.py).
"""

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import lightning as L
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar
from lightning.pytorch.trainer.states import TrainerFn
from tqdm import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, total: int | None = None, every_s: float = 300.0) -> Iterable[T]:
    """tqdm's bar in a terminal; in a log, a line every ``every_s`` seconds and one at the end."""
    if sys.stderr.isatty():
        return tqdm(items, desc=desc, total=total)
    return _lines(items, desc, total, every_s)


def _lines(items: Iterable[T], desc: str, total: int | None, every_s: float) -> Iterator[T]:
    start = last = time.monotonic()
    count = 0
    of = f"/{total}" if total is not None else ""
    for count, item in enumerate(items, 1):
        yield item
        if time.monotonic() - last >= every_s:
            last = time.monotonic()
            print(f"{desc}: {count}{of} ({last - start:.0f} s)", file=sys.stderr, flush=True)
    print(f"{desc}: {count}{of} done in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)


def _format(metrics: dict[str, Any], prefixes: tuple[str, ...]) -> str:
    shown = {k: float(v) for k, v in sorted(metrics.items())
             if k.startswith(prefixes) and not k.endswith(("_step", "_epoch"))}  # train/loss is the epoch's mean
    return " ".join(f"{k} {v:.4g}" for k, v in shown.items())


class LogLines(ProgressBar):
    """Prints to stderr one line per training epoch (its metrics, validation's, time, images per second), one line
    every `every_s` seconds within an epoch, and one line at the end of validation and test runs outside `fit`."""

    def __init__(self, every_s: float = 300.0) -> None:
        super().__init__()
        self.every_s = every_s
        self._enabled = True
        self._epoch_start = self._last_line = 0.0
        self._images = 0
        self._pending: tuple[int, float, int] | None = None  # an epoch whose line waits for its error rates

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _print(self, text: str) -> None:
        if self._enabled and self.trainer.is_global_zero:
            print(text, file=sys.stderr, flush=True)

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # A run resumed within an epoch starts no epoch: its time and images count from here, in this process.
        self._epoch_start = self._last_line = time.monotonic()
        self._images = 0

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._epoch_line(trainer)
        self._epoch_start = self._last_line = time.monotonic()
        self._images = 0

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._images += len(batch[1]) if isinstance(batch, (list, tuple)) and len(batch) > 1 else 0
        now = time.monotonic()
        if now - self._last_line >= self.every_s:
            self._last_line = now
            done, total = batch_idx + 1, self.total_train_batches
            rate = self._images / max(now - self._epoch_start, 1e-9)
            self._print(f"epoch {trainer.current_epoch + 1} step {done}/{total} ({rate:.0f} img/s) "
                        + _format(trainer.callback_metrics, ("train/loss",)))

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # Called before the module's own on_train_epoch_end, which logs the epoch's error rates: print at the next
        # epoch's start or at the end of fit, when they are there.
        self._pending = trainer.current_epoch, time.monotonic() - self._epoch_start, self._images

    def _epoch_line(self, trainer: L.Trainer) -> None:
        if self._pending is None:
            return
        epoch, seconds, images = self._pending
        self._pending = None
        # An epoch resumed after its last batch trains nothing here: no speed to report, not "0 img/s"
        rate = images / max(seconds, 1e-9)
        speed = f"in {seconds:.0f} s ({rate:.0f} img/s)" if images else "(resumed after its training)"
        self._print(f"epoch {epoch + 1}/{trainer.max_epochs} done {speed}: "
                    + _format(trainer.callback_metrics, ("train/", "val/")))

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._epoch_line(trainer)

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn != TrainerFn.FITTING:
            self._print("validation: " + _format(trainer.callback_metrics, ("val/",)))

    def on_test_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._print("test: " + _format(trainer.callback_metrics, ("test/",)))
