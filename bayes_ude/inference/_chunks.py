"""Run a sampler in compiled chunks: progress per chunk, Ctrl-C keeps what was drawn."""

from __future__ import annotations

import warnings
from collections.abc import Callable

from .. import _sigint


def run_chunks(total: int, chunk_size: int, advance: Callable[[int, int], object], bar,
               what: str = "draws per chain", guard=None):
    """Call ``advance(done, n)`` for chunks of ``n <= chunk_size`` until ``total``.

    Returns ``(pieces, done, partial)``: the outputs of the completed chunks, how many
    units they cover, and whether Ctrl-C stopped the run early (a warning says so). An
    interrupt before the first chunk completes is re-raised: there is nothing to keep.
    With an :class:`~bayes_ude.inference._interrupt.InterruptGuard`, a later Ctrl-C is
    deferred from the moment the draws are complete or the loop was interrupted
    (``guard.defer()``), so that the caller can finish them.
    """
    pieces, done, partial = [], 0, False
    try:
        with _sigint.counted_sigint():
            while done < total:
                n = min(chunk_size, total - done)
                piece = advance(done, n)
                if piece is not None:
                    pieces.append(piece)
                done += n
                bar.update(n)
                _sigint.raise_pending()  # a Ctrl-C swallowed during the chunk
        if guard is not None:
            guard.defer()
    except KeyboardInterrupt:
        _sigint.handled()
        if not pieces:
            raise
        if guard is not None:
            guard.defer()
        partial = done < total
        if partial:
            warnings.warn(f"interrupted: returning the {done} {what} taken so far",
                          stacklevel=3)
    return pieces, done, partial
