"""Ctrl-C that Python swallowed is raised at the next checkpoint.

Python turns SIGINT into ``KeyboardInterrupt`` in whatever Python code runs at that
moment. When that is a garbage-collector callback or a ``__del__`` -- JAX runs one at
every collection, often while XLA compiles -- Python prints "Exception ignored in ..."
and carries on: the interrupt is lost and a long fit runs to its end (seen in CI: a
Ctrl-C during compilation of an NLME fit).

Within :func:`counted_sigint` every SIGINT is counted before it is raised; a loop calls
:func:`raise_pending` between its steps (after each compiled chunk), which raises the
``KeyboardInterrupt`` again if one was counted but nobody caught it, and a handler that
does catch it calls :func:`handled`. A swallowed one is not printed either (Python's
"Exception ignored ... Traceback" on stderr): it is counted, so it is not lost, and the
command's own one-line message is what the user reads. The samplers' own handler
(:mod:`~bayes_ude.inference._interrupt`) counts the same way when it raises; outside the
block, or under any other handler (IPython's), nothing changes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

_COUNT = {"received": 0, "handled": 0}


def raise_counted(signum, frame):
    """Python's default SIGINT handler, counting."""
    _COUNT["received"] += 1
    raise KeyboardInterrupt


@contextlib.contextmanager
def counted_sigint() -> Iterator[None]:
    """Count SIGINTs in this block (main thread, Python's default handler only)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    handled()  # a Ctrl-C swallowed in an earlier block, after its last checkpoint, is old
    previous = signal.signal(signal.SIGINT, raise_counted)
    previous_hook = sys.unraisablehook

    def quiet_when_counted(unraisable):
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            previous_hook(unraisable)

    sys.unraisablehook = quiet_when_counted
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = previous_hook


def handled() -> None:
    """A ``KeyboardInterrupt`` was caught: every SIGINT so far is accounted for."""
    _COUNT["handled"] = _COUNT["received"]


def raise_pending() -> None:
    """Raise ``KeyboardInterrupt`` if a counted SIGINT was never caught."""
    if _COUNT["received"] > _COUNT["handled"]:
        handled()
        raise KeyboardInterrupt


def pause_for_tests(stage: str) -> None:
    """Testing hook, not for users: with ``BAYES_UDE_TEST_PAUSE=<stage>`` in the environment,
    say so on stderr and sleep (60 s at most) at that stage, so that a test can send SIGINT
    to a ``bayes-ude`` process at a known moment. Stages: ``fit`` (between chunks of outer
    iterations), ``covariance`` (before the covariance step), ``writing`` (in ``bayes-ude pk
    fit``, after the estimates are saved, before diagnostics, VPC and plots)."""
    if os.environ.get("BAYES_UDE_TEST_PAUSE") == stage:
        print(f"bayes-ude: BAYES_UDE_TEST_PAUSE: paused at {stage}", file=sys.stderr,
              flush=True)
        time.sleep(60.0)
