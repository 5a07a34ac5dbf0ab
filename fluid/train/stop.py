"""Stopping a training run the way job schedulers do: a signal asks it to save and exit.

SLURM, Kubernetes and ``torchrun`` stop a job with SIGTERM (and, some seconds later,
SIGKILL); a user at a terminal presses Ctrl-C (SIGINT). Inside :class:`StopSignals` the
first of either only sets a flag: the trainer finishes the step it is in, writes a
checkpoint and returns. A second signal means "now": it exits at once, leaving the last
checkpoint as it was (checkpoints are written under a temporary name, so none is half-made).
"""

from __future__ import annotations

import signal
import sys
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """Catches SIGTERM and SIGINT for the duration of a ``with`` block.

    ``requested`` turns True at the first signal; ``signal_name`` names it. Handlers can only
    be installed from the main thread; elsewhere (a trainer driven from a worker thread) the
    block catches nothing and the process keeps its usual reaction to signals.
    """

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def signal_name(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum is not None else None

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            print(
                f"\n{name} again: stopping now, without a checkpoint of this step (the last one is kept)",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(128 + signum)  # the shell's convention for "ended by this signal"
        self.signum = signum
        print(
            f"\n{name} received: saving a checkpoint after this step, then stopping (send it again to stop at once)",
            file=sys.stderr,
            flush=True,
        )
