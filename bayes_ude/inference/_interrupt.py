"""Ctrl-C after sampling never loses the draws.

Once a sampler has draws, what remains (constrained values, log-likelihood, posterior
predictive, InferenceData) can take a while: compiling the log-likelihood of an ODE model
alone takes tens of seconds. A Ctrl-C there used to raise ``KeyboardInterrupt`` and
discard a finished run. Under :func:`interrupt_guard` it cannot:

* while sampling, Ctrl-C raises ``KeyboardInterrupt`` as usual (the sampler's chunk loop,
  :func:`~bayes_ude.inference._chunks.run_chunks`, catches it and keeps the draws so far);
* from :meth:`InterruptGuard.defer` on (called by the chunk loop once it has the draws),
  Ctrl-C is recorded, not raised: the required steps finish;
* steps run through :meth:`InterruptGuard.optional` (log-likelihood, posterior
  predictive) can still be interrupted, and are skipped -- as are all later optional
  steps -- once an interrupt has come; the caller marks the result
  (:meth:`InterruptGuard.mark`: ``attrs["partial"] = 1``, ``attrs["skipped"]`` names
  them) and a warning says so.

Signals reach only the main thread, so only there is a handler installed; guards are
shared by nesting (``nlme.fit_bayes`` around ``run_nuts``): deferral, once the innermost
sampler has its draws, lasts until the outermost guard exits, and a nested sampler's own
sampling is interruptible again.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator

from .. import _sigint


class InterruptGuard:
    """State of the Ctrl-C handling of one thread (see the module notes)."""

    def __init__(self, active: bool):
        self.active = active  # a SIGINT handler is installed (main thread)
        self.deferring = False
        self.received = False
        self._depth = 0
        self._previous = None

    # ----------------------------------------------------------------- the handler
    def _handle(self, signum, frame):
        if not self.deferring:
            if self._previous is signal.default_int_handler:
                return _sigint.raise_counted(signum, frame)  # see bayes_ude._sigint
            return self._previous(signum, frame)
        if not self.received:
            print("interrupt received: finishing the draws (the remaining optional steps "
                  "are skipped)", file=sys.stderr, flush=True)
        self.received = True
        return None

    # --------------------------------------------------------------------- the API
    def defer(self) -> None:
        """The draws exist: from now on Ctrl-C is recorded, not raised."""
        self.deferring = True

    def optional(self, fn: Callable[[], object]) -> tuple[object, bool]:
        """``(fn(), True)``, with Ctrl-C raising inside ``fn``; ``(None, False)`` when an
        interrupt came during ``fn`` or before it."""
        if self.received:
            return None, False
        saved = self.deferring
        try:
            self.deferring = False
            try:
                return fn(), True
            finally:
                self.deferring = saved
        except KeyboardInterrupt:
            _sigint.handled()
            self.deferring = saved  # the finally clause itself may have been interrupted
            if not self.received:
                print("interrupt received: skipping the optional steps, finishing the draws",
                      file=sys.stderr, flush=True)
            self.received = True
            return None, False

    def mark(self, attrs: dict, skipped: list[str], what: str = "draws",
             stacklevel: int = 2) -> dict:
        """Record skipped optional steps in ``attrs`` (``partial``, ``skipped``) and warn
        (``stacklevel`` as in ``warnings.warn``, counted from the caller)."""
        if skipped:
            attrs["partial"] = 1
            previous = [s for s in str(attrs.get("skipped", "")).split(", ") if s]
            attrs["skipped"] = ", ".join(dict.fromkeys([*previous, *skipped]))
            warnings.warn(f"interrupted: returning the {what} without {', '.join(skipped)}",
                          stacklevel=stacklevel + 1)
        return attrs


_LOCAL = threading.local()


@contextlib.contextmanager
def interrupt_guard() -> Iterator[InterruptGuard]:
    """The calling thread's :class:`InterruptGuard`, its SIGINT handler installed (main
    thread only) for the outermost ``with``; see the module notes."""
    guard = getattr(_LOCAL, "guard", None)
    if guard is None:
        main = threading.current_thread() is threading.main_thread()
        previous = signal.getsignal(signal.SIGINT) if main else None
        # a handler installed outside Python (None), SIG_IGN and SIG_DFL are left alone
        guard = InterruptGuard(active=main and callable(previous))
        guard._previous = previous
        _LOCAL.guard = guard
        if guard.active:
            _sigint.handled()  # an old swallowed Ctrl-C is not this run's
            signal.signal(signal.SIGINT, guard._handle)
    guard._depth += 1
    outer_deferring = guard.deferring
    guard.deferring = False  # this level's sampling can be interrupted
    try:
        yield guard
    finally:
        guard._depth -= 1
        # deferral is sticky outwards: the caller holds this level's draws now
        guard.deferring = guard.deferring or outer_deferring
        if guard._depth == 0:
            _LOCAL.guard = None
            if guard.active:
                signal.signal(signal.SIGINT, guard._previous)
