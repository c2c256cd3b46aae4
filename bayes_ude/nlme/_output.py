"""The ``--out`` folder of ``bayes-ude pk fit``, written atomically.

Files go into a temporary folder beside the target and are renamed into place when the
whole result is there (:class:`Output`); single files are written whole or not at all
(:func:`write_atomically`); the commit holds Ctrl-C off (:func:`sigint_deferred`). Light on
purpose (standard library only): the command imports it before any numerical library.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

from .. import _sigint
from .._json import json_safe

__all__ = ["OUTPUT_FILES", "Output", "sigint_deferred", "write_atomically"]

#: Every file ``bayes-ude`` writes into an output folder (``pk fit`` and ``demo``): an
#: existing ``--out`` folder is replaced as a whole, so it may hold nothing else.
OUTPUT_FILES = frozenset({
    "summary.json", "estimates.csv", "diagnostics.csv", "ebe.csv", "vpc.csv", "gof.png",
    "vpc.png", "individual.png", "individual.pdf", "posterior.nc", "eta_posterior_median.csv",
    "trace.png", "sdtab.csv", "bootstrap.csv", "bootstrap_ci.csv", "simtab.csv",
    "simulation.png",
    "lynx_hare_fit.png", "lynx_hare_map.csv"})


@contextlib.contextmanager
def sigint_deferred():
    """Within the block SIGINT (Ctrl-C) is recorded, not raised, so the block always
    completes; the yielded list is non-empty if one came."""
    got: list[int] = []
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield got
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    try:
        yield got
    finally:
        signal.signal(signal.SIGINT, previous)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomically(path: Path, text: str) -> None:
    """``path`` gets ``text`` whole or not at all (a temporary file renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class Output:
    """The ``--out`` folder, written atomically: files go into a temporary folder beside it
    (same file system), each first under a hidden part name and renamed when complete;
    :meth:`commit` adds ``summary.json`` and renames the folder into place, replacing the
    earlier one as a whole; :meth:`discard` removes it if it was not committed."""

    def __init__(self, out: Path, json_copy: Path | None):
        self.shown = out
        self.target = Path(os.path.abspath(out))
        self.json_copy = json_copy
        parent = self.target.parent
        self.created = []  # ancestors made here, deepest first (discard removes them)
        p = parent
        while not p.exists():
            self.created.append(p)
            p = p.parent
        parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.tmp-", dir=parent))
        self.tmp.chmod(0o777 & ~_umask())  # as mkdir would make it, not mkdtemp's 0o700
        self.files: list[str] = []
        self.interrupted_at: str | None = None
        self.committed = False

    def save(self, name: str, write) -> None:
        """Write ``name`` with ``write(path)``; listed only once complete."""
        write(self.part(name))
        self.adopt(name)

    def part(self, name: str) -> Path:
        """Where ``name`` is written until it is complete (:meth:`adopt`)."""
        assert name in OUTPUT_FILES, f"add {name!r} to OUTPUT_FILES"
        return self.tmp / f".part.{name}"  # same suffix: writers choose the format by it

    def adopt(self, name: str) -> None:
        """List ``name``, complete at :meth:`part`'s path (written by another process)."""
        os.replace(self.part(name), self.tmp / name)
        if name not in self.files:
            self.files.append(name)

    def write_stages(self, stages) -> None:
        """Run the writing ``stages`` (``(name, function)`` pairs) in order once there are
        results, unless an interruption is already recorded. Each stage begins with a check
        for a Ctrl-C that the last one swallowed (:mod:`bayes_ude._sigint`); a Ctrl-C
        skips the rest and records where it came (``interrupted_at``)."""
        if self.interrupted_at:
            return
        stage = "writing"
        try:
            with _sigint.counted_sigint():
                _sigint.pause_for_tests("writing")
                for name, write in stages:
                    _sigint.raise_pending()
                    stage = name
                    write()
                _sigint.raise_pending()
        except KeyboardInterrupt:
            _sigint.handled()
            self.interrupted_at = stage

    def commit(self, summary: dict) -> bool:
        """Write ``summary.json`` (with ``status``, ``files``, ``warnings``), put the folder
        in place and write the ``--json`` copy, with Ctrl-C held off meanwhile. Returns
        whether a Ctrl-C came during it."""
        with sigint_deferred() as late:
            summary["status"] = "interrupted" if self.interrupted_at else "complete"
            if self.interrupted_at:
                summary["interrupted"] = True
                summary["interrupted_at"] = self.interrupted_at
            summary["files"] = [*self.files, "summary.json"]
            summary.setdefault("warnings", [])
            replaced: list[str] = []
            safe = json_safe(summary, replaced=replaced)
            if replaced:
                safe["warnings"].append("not finite, written as null: " + ", ".join(replaced))
            text = json.dumps(safe, indent=2, allow_nan=False) + "\n"
            self.save("summary.json", lambda path: path.write_text(text))
            for leftover in self.tmp.glob(".part.*"):
                leftover.unlink()
            target = self.target
            if target.exists() or target.is_symlink():
                old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
                old.rmdir()
                os.replace(target, old)
                os.replace(self.tmp, target)
                if old.is_symlink():
                    old.unlink()
                else:
                    shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(self.tmp, target)
            self.committed = True
            if self.json_copy is not None:
                write_atomically(self.json_copy, text)
        return bool(late)

    def discard(self) -> None:
        if self.committed:
            return
        shutil.rmtree(self.tmp, ignore_errors=True)
        for folder in self.created:
            try:
                folder.rmdir()
            except OSError:
                break

    def report(self, quiet: bool) -> None:
        """Say what was written (only files that exist) and, on stderr, an interruption."""
        names = [f for f in self.files if (self.target / f).exists()]
        if not quiet:
            print(f"wrote {', '.join(names)} to {self.shown}/"
                  + (f" (summary also in {self.json_copy})" if self.json_copy else ""))
        if self.interrupted_at:
            print(f"bayes-ude pk fit: interrupted ({self.interrupted_at}); {self.shown}/ holds "
                  f"what was done, summary.json has \"status\": \"interrupted\"",
                  file=sys.stderr)
