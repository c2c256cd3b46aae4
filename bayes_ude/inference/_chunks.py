"""Run a sampler in compiled chunks: progress per chunk, Ctrl-C keeps what was drawn."""

from __future__ import annotations

import warnings
from collections.abc import Callable


def run_chunks(total: int, chunk_size: int, advance: Callable[[int, int], object], bar,
               what: str = "draws per chain"):
    """Call ``advance(done, n)`` for chunks of ``n <= chunk_size`` until ``total``.

    Returns ``(pieces, done, partial)``: the outputs of the completed chunks, how many
    units they cover, and whether Ctrl-C stopped the run early (a warning says so). An
    interrupt before the first chunk completes is re-raised: there is nothing to keep.
    """
    pieces, done, partial = [], 0, False
    try:
        while done < total:
            n = min(chunk_size, total - done)
            piece = advance(done, n)
            if piece is not None:
                pieces.append(piece)
            done += n
            bar.update(n)
    except KeyboardInterrupt:
        if not pieces:
            raise
        partial = True
        warnings.warn(f"interrupted: returning the {done} {what} taken so far", stacklevel=3)
    return pieces, done, partial
