"""The command's figures, drawn by a second process.

``bayes-ude pk fit`` spent 1.5-1.8 s of a 4 s run in matplotlib: loading it (0.4-0.6 s)
and drawing and saving the figures. :class:`Figures` starts :mod:`._draw` as a script in
another Python process (at low priority) when the command starts. It loads matplotlib
(not JAX) while the fit runs, and draws each job it is sent (the individual fits right
after the fit, the goodness of fit after the diagnostics, while this process computes
what comes next) into the files named in the job: where ``os.fork`` exists, each job in
a child forked from it, as many at once as there are cores (up to 4), matplotlib
loaded already. The command waits for a job (:meth:`Figures.wait`) before it lists its
files. A job that raises in the figure process raises here, with its traceback.

Where the figure process cannot start or ends early, or with
``BAYES_UDE_FIGURE_PROCESS=0``, the jobs are drawn in this process, at
:meth:`Figures.wait`. The files are the same either way. Standard library only: matplotlib
loads in this process only in that case.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
from pathlib import Path

__all__ = ["ENV", "Figures"]

#: ``0``: draw the figures in the command's own process
ENV = "BAYES_UDE_FIGURE_PROCESS"

_SCRIPT = Path(__file__).with_name("_draw.py")
# -P: not the working folder on the path; run_path: the file alone, not the package (JAX)
_BOOT = ("import runpy, sys; sys.argv = sys.argv[1:]; "
         "runpy.run_path(sys.argv[0], run_name='__main__')")


class Figures:
    """Drawing jobs (:data:`._draw.JOBS`) of one command run; a context manager that
    stops the figure process on leaving (before the output folder is committed)."""

    def __init__(self, second_process: bool = True):
        self._jobs: dict[int, tuple[str, dict]] = {}  # submitted, not yet waited for
        self._answers: dict[int, str | None] = {}  # its traceback, or None
        self._changed = threading.Condition()
        self._next = 0
        self._process: _Process | None = None
        if (second_process and os.environ.get(ENV, "1") != "0"
                and _SCRIPT.is_file()):  # not from a zip archive
            with contextlib.suppress(OSError):
                self._process = _Process(self)

    @property
    def in_second_process(self) -> bool:
        return self._process is not None and self._process.alive

    def submit(self, job: str, **kwargs) -> int:
        """Start drawing ``job`` in the figure process (without one: here, at
        :meth:`wait`); returns its ticket."""
        ticket = self._next
        self._next += 1
        self._jobs[ticket] = (job, kwargs)
        if self.in_second_process:
            self._process.send((ticket, job, kwargs))
        return ticket

    def wait(self, ticket: int) -> None:
        """Until job ``ticket``'s files are written; its error, if it raised."""
        with self._changed:
            while self.in_second_process and ticket not in self._answers:
                self._changed.wait()
        job, kwargs = self._jobs.pop(ticket)
        if ticket not in self._answers:  # no figure process, or it ended first
            from . import _draw  # matplotlib, here only without a figure process

            _draw.matplotlib.use("Agg")
            _draw.JOBS[job](**kwargs)
            return
        error = self._answers.pop(ticket)
        if error is not None:
            raise RuntimeError(f"drawing {job} failed in the figure process:\n{error}")

    def _answered(self, process: _Process, ticket: int | None, error=None) -> None:
        """From the reader thread: ``ticket``'s answer (``None``: ``process`` ended)."""
        with self._changed:
            if ticket is None:
                process.alive = False
            else:
                self._answers[ticket] = error
            self._changed.notify_all()

    def close(self) -> None:
        """Stop the figure process (at once if jobs are left: an interruption), so that
        no file appears after this; again: nothing."""
        process, self._process = self._process, None
        if process is not None:
            process.stop(kill=bool(self._jobs))

    def __enter__(self) -> Figures:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Process:
    """The figure process: :mod:`._draw` run as a script (in a session of its own, with
    the children it forks), a thread sending it jobs (a large job must not hold the
    command up while the process is busy) and one reading its answers."""

    def __init__(self, figures: Figures):
        parallel = max(1, min(os.cpu_count() or 1, 4))
        self.popen = subprocess.Popen(
            [sys.executable, "-P", "-c", _BOOT, str(_SCRIPT), str(parallel)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            start_new_session=os.name == "posix")
        self.alive = True
        self._outbox: queue.Queue = queue.Queue()
        threading.Thread(target=self._send, daemon=True).start()
        self._reader = threading.Thread(target=self._receive, args=(figures,), daemon=True)
        self._reader.start()

    def send(self, message) -> None:
        data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        self._outbox.put(struct.pack("<Q", len(data)) + data)  # as _draw.frame

    def _send(self) -> None:
        while (data := self._outbox.get()) is not None:
            try:
                self.popen.stdin.write(data)
                self.popen.stdin.flush()
            except (OSError, ValueError):  # it ended: the reader says so
                return

    def _receive(self, figures: Figures) -> None:
        while True:
            try:
                ticket, error = pickle.load(self.popen.stdout)
            except Exception:  # it ended, was stopped, or wrote something else
                # its jobs are drawn in the command's process from now on: it must not
                # go on writing the same files
                self.kill()
                figures._answered(self, None)
                return
            figures._answered(self, ticket, error)

    def kill(self) -> None:
        """The process and the children drawing for it, at once."""
        try:
            if os.name == "posix":
                os.killpg(self.popen.pid, signal.SIGKILL)  # its session's group
            else:
                self.popen.kill()
        except OSError:  # gone already
            pass

    def stop(self, kill: bool) -> None:
        self._outbox.put(None)
        if kill:
            self.kill()
        else:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()  # it ends after its last job
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
            self.popen.wait()
        self._reader.join(timeout=10)
        self.popen.stdout.close()
