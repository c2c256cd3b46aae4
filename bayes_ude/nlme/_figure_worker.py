"""The command's figures, drawn by a second process.

``bayes-ude pk fit`` spent 1.5-1.8 s of a 4 s run in matplotlib: loading it (0.4-0.6 s)
and drawing and saving the figures. :class:`Figures` starts :mod:`._draw` as a script in
another Python process (at low priority) when the command starts. It loads matplotlib
(not JAX) while the fit runs, and draws each job it is sent (the individual fits right
after the fit, the goodness of fit after the diagnostics, while this process computes
what comes next) into the files named in the job. The command waits for a job
(:meth:`Figures.wait`) before it lists its files. A job that raises in a figure process
raises here, with its traceback.

Where no figure process can start or all have ended early, or with
``BAYES_UDE_FIGURE_PROCESS=0``, the jobs are drawn in this process, at
:meth:`Figures.wait`. The files are the same either way. Standard library only: matplotlib
loads in this process only in that case.
"""

from __future__ import annotations

import os
import pickle
import queue
import subprocess
import sys
import threading
from pathlib import Path

__all__ = ["ENV", "Figures"]

#: ``0``: draw the figures in the command's own process; ``n``: in n figure processes
ENV = "BAYES_UDE_FIGURE_PROCESS"

_SCRIPT = Path(__file__).with_name("_draw.py")
# -P: not the working folder on the path; run_path: the file alone, not the package (JAX)
_BOOT = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')"


class Figures:
    """Drawing jobs (:data:`._draw.JOBS`) of one command run; a context manager that
    stops the figure processes on leaving (before the output folder is committed)."""

    def __init__(self, second_process: bool = True):
        self._jobs: dict[int, tuple[str, dict]] = {}  # submitted, not yet waited for
        self._owner: dict[int, _Process] = {}  # which process draws it
        self._answers: dict[int, str | None] = {}  # its traceback, or None
        self._changed = threading.Condition()
        self._next = 0
        self._processes: list[_Process] = []
        if second_process and _SCRIPT.is_file():  # not from a zip archive
            for _ in range(_count()):
                try:
                    self._processes.append(_Process(self))
                except OSError:
                    break

    @property
    def in_second_process(self) -> bool:
        return any(p.alive for p in self._processes)

    def submit(self, job: str, **kwargs) -> int:
        """Start drawing ``job`` in the least busy figure process (without one: here, at
        :meth:`wait`); returns its ticket."""
        ticket = self._next
        self._next += 1
        self._jobs[ticket] = (job, kwargs)
        with self._changed:
            alive = [p for p in self._processes if p.alive]
            if alive:
                process = min(alive, key=lambda p: len(p.open))
                process.open.add(ticket)
                self._owner[ticket] = process
                process.send((ticket, job, kwargs))
        return ticket

    def wait(self, ticket: int) -> None:
        """Until job ``ticket``'s files are written; its error, if it raised."""
        with self._changed:
            owner = self._owner.pop(ticket, None)
            while owner is not None and owner.alive and ticket not in self._answers:
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
        """From a reader thread: ``ticket``'s answer (``None``: ``process`` ended)."""
        with self._changed:
            if ticket is None:
                process.alive = False
            else:
                self._answers[ticket] = error
                process.open.discard(ticket)
            self._changed.notify_all()

    def close(self) -> None:
        """Stop the figure processes (at once if jobs are left: an interruption), so that
        no file appears after this; again: nothing."""
        processes, self._processes = self._processes, []
        for process in processes:
            process.stop(kill=bool(self._jobs))

    def __enter__(self) -> Figures:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _count() -> int:
    """How many figure processes: ``BAYES_UDE_FIGURE_PROCESS`` if set (0: none), else
    one. (Two, on 2 cores: the figures end sooner, but loading matplotlib twice slows the
    fit as much; the command took 3.33 s against 3.27 s, median of 6.)"""
    value = os.environ.get(ENV, "").strip()
    return int(value) if value.isdigit() else 1


class _Process:
    """One figure process: :mod:`._draw` run as a script, a thread sending it jobs (a
    large job must not hold the command up while the process is busy) and one reading
    its answers."""

    def __init__(self, figures: Figures):
        self.popen = subprocess.Popen([sys.executable, "-P", "-c", _BOOT, str(_SCRIPT)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      start_new_session=os.name == "posix")
        self.alive = True
        self.open: set[int] = set()  # sent, not answered
        self._outbox: queue.Queue = queue.Queue()
        threading.Thread(target=self._send, daemon=True).start()
        self._reader = threading.Thread(target=self._receive, args=(figures,), daemon=True)
        self._reader.start()

    def send(self, message) -> None:
        self._outbox.put(pickle.dumps(message, pickle.HIGHEST_PROTOCOL))

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
                # its jobs are drawn in the command's process from now on: this one must
                # not go on writing the same files
                self.popen.kill()
                figures._answered(self, None)
                return
            figures._answered(self, ticket, error)

    def stop(self, kill: bool) -> None:
        self._outbox.put(None)
        if kill:
            self.popen.kill()
        else:
            try:
                self.popen.stdin.close()  # it ends after its last job
            except OSError:
                pass
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        self._reader.join(timeout=10)
        self.popen.stdout.close()
