"""A failed solve inside a NumPyro model becomes a rejected proposal, not a crash."""

from __future__ import annotations

import numpyro
from jaxtyping import Array, Float

from ..solvers import Solution, log_density_penalty, sanitize


def reject_failed_solve(
    sol: Solution, name: str = "solve_failed", fill: float = 1.0
) -> Float[Array, "n_save ..."]:
    """Add ``-inf`` to the model's log density if ``sol`` failed; return safe values.

    Call it right after :func:`bayes_ude.solvers.solve` inside a NumPyro model and build
    the likelihood from the returned array::

        sol = solvers.solve(f, u0, ts, theta)
        ys = reject_failed_solve(sol)
        numpyro.sample("obs", dist.Normal(ys, sigma), obs=data)

    A proposal whose solve fails gets log density ``-inf``: NUTS treats it as a divergent
    transition and rejects it. The returned values replace the failed solve's NaNs by
    ``fill`` so that the gradient of the log density stays finite. Under vmapped solves
    (a ``Solution`` with a batch axis), any failed member rejects the proposal.
    """
    penalty = log_density_penalty(sol)
    numpyro.factor(name, penalty.sum())
    ys = sanitize(sol, fill)
    return ys
