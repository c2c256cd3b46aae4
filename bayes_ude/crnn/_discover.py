"""From data to a mechanism in one call: collocation restarts, trajectory polish of the
best few, pruning and a refit."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import jax
import numpy as np
import optax

from .. import solvers
from ._fit import DEFAULT_SOLVE, Experiments, TrajectoryLoss, fit, fit_collocation
from ._model import CRNN
from ._prune import prune


@dataclasses.dataclass
class Discovery:
    """Result of :func:`discover`.

    Attributes
    ----------
    model : the pruned and refitted CRNN (the mechanism).
    unpruned : the trajectory fit before pruning.
    candidate_losses : trajectory loss of each polished candidate (the lowest won).
    loss : trajectory loss of ``model``.
    seconds : wall time, compilation included.
    """

    model: CRNN
    unpruned: CRNN
    candidate_losses: np.ndarray
    loss: float
    seconds: float


def discover(
    data: Experiments,
    n_reactions: int,
    *,
    key: jax.Array | None = None,
    restarts: int = 8,
    candidates: int = 3,
    collocation_steps: int = 3000,
    steps: int = 300,
    refit_steps: int = 1000,
    learning_rate: float = 1e-2,
    refit_learning_rate: float = 5e-3,
    l1: float = 1e-3,
    thresholds: Sequence[float] = (0.1, 0.4),
    loss: str = "mae",
    options: solvers.SolveOptions = DEFAULT_SOLVE,
    progress: bool = True,
    **model_kwargs,
) -> Discovery:
    """Discover a mechanism with ``n_reactions`` candidate reactions from ``data``.

    1. :func:`fit_collocation` from ``restarts`` random starts (no ODE solves);
    2. :func:`fit` (AdamW on the solved trajectories, ``steps`` steps at
       ``learning_rate``, with the sparsity penalty ``l1 * sum |nu|``) of the
       ``candidates`` restarts with the lowest collocation loss; the lowest trajectory
       loss wins. Collocation alone cannot be the judge: on small data sets its losses
       for the true mechanism and for near-degenerate neighbours (``2A -> B + 0.4C``
       beside ``A -> C``) differ by less than their noise, while the trajectory loss
       after a polish separates them;
    3. sequential thresholding (as STLSQ in sparse regression): for each of
       ``thresholds`` in turn, :func:`prune` and :func:`fit` again (``refit_steps`` at
       ``refit_learning_rate``, no penalty: it undoes the shrinkage of the kept
       coefficients). The first, 0.1, removes what is left of unneeded coefficients;
       the second, 0.4, breaks up a local minimum that the loss surface has for every
       small data set we tried, one reaction doing part of another's work
       (``1.6A -> 0.5B + 0.3C`` beside ``0.9A -> 1.1C`` instead of ``2A -> B`` and
       ``A -> C``): without the stray 0.3 the refit slides to the true pair. A true
       coefficient below 0.4 (a half-integer stoichiometry of 0.25) would be lost: pass
       ``thresholds=(0.1,)`` for such mechanisms.

    The penalty decides the sloppy directions: a reaction ``2A -> B + xC`` beside
    ``A -> C`` fits the data nearly equally well for a range of ``x``, and without it
    AdamW drifts along that valley for thousands of steps. The default 1e-3 is a tenth
    of the scaled mean absolute error of data with a few percent noise, per unit of
    coefficient: enough to push an unneeded coefficient to zero, too little to move one
    that the data determine.

    ``model_kwargs`` go to :class:`CRNN` (``species``, ``orders``, ...).
    """
    start = time.perf_counter()
    key = jax.random.key(0) if key is None else key
    k_model, k_restarts = jax.random.split(key)
    n_species = int(data.ys.shape[2])
    model = CRNN(n_species, n_reactions, key=k_model, **model_kwargs)
    warm = fit_collocation(model, data, steps=collocation_steps, restarts=restarts,
                           loss=loss, key=k_restarts, progress=progress)
    colloc = np.array([v for _, v in warm.stages])
    order = np.argsort(colloc)[:max(1, min(candidates, restarts))]
    objective = TrajectoryLoss(data, loss, options)
    # Cosine decay to 1 % of the learning rate: the candidates' final losses are those of
    # converged weights, not of AdamW's jitter, and can be compared.
    schedule = optax.cosine_decay_schedule(learning_rate, steps, alpha=0.01)
    polished, losses = [], []
    for r in order:
        result = fit(warm.restarts[int(r)], data, steps=steps, learning_rate=schedule,
                     loss=loss, l1=l1, options=options, progress=progress)
        polished.append(result.params)
        losses.append(float(objective(result.params)))
    losses = np.where(np.isfinite(losses), losses, np.inf)
    best = polished[int(np.argmin(losses))]
    refit = best
    for threshold in thresholds:
        refit = fit(prune(refit, threshold), data, steps=refit_steps,
                    learning_rate=refit_learning_rate, loss=loss, options=options,
                    progress=progress).params
    return Discovery(model=refit, unpruned=best, candidate_losses=np.asarray(losses),
                     loss=float(objective(refit)), seconds=time.perf_counter() - start)
