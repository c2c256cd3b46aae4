"""Maximum-likelihood estimation: FO, FOCE, FOCEI, Laplace and Lindstrom–Bates.

:func:`fit_ml` sets up the unconstrained problem (fixed parameters, initial values), runs the
optimiser of :mod:`._optimise` in compiled chunks (progress bar between them, Ctrl-C keeps
the current estimates), and assembles a :class:`FitResult` with the covariance step, EBEs and
the degenerate-solution check. :func:`bayes_ude.nlme.fit` (in :mod:`._fit`) dispatches here
for the maximum-likelihood methods.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .. import _sigint
from .._batching import resolve_devices
from ._buckets import subject_buckets
from ._likelihood import LOG_2PI, check_censoring, check_method, population_ebes
from ._model import PopulationModel
from ._model_checks import check_parameters_informed
from ._optimise import (
    Problem,
    bfgs_init,
    covariance_step,
    lindstrom_bates,
    natural_summary,
    run_chunk,
)
from ._results import FitResult

__all__ = ["fit_ml", "setup_problem"]


def fit_ml(
    model: PopulationModel,
    population,
    method: str = "focei",
    *,
    fixed: Sequence[str] | Mapping[str, float] = (),
    init: Mapping[str, float] | None = None,
    max_iter: int = 500,
    tol: float = 1e-6,
    covariance: bool = True,
    progress: bool = True,
    chunk: int = 25,
    devices=None,
) -> FitResult:
    """Maximum-likelihood fit of a population model; the options and the result are those of
    :func:`bayes_ude.nlme.fit`, which documents them (and dispatches here)."""
    check_method(method)
    check_censoring(method, population)  # FO, FOCE, LB: no M3 (before any compilation)
    if method == "lb" and model.l2:
        raise ValueError("method='lb' does not support l2 penalties; use 'focei' or 'foce'")
    if method == "lb" and model.iov:
        raise ValueError("method='lb' does not support inter-occasion variability (iov); "
                         "use 'focei' or 'foce'")
    start = time.perf_counter()
    problem, names, fixed_names = setup_problem(model, population, method, fixed=fixed,
                                                init=init, devices=devices)
    model, free = problem.model, np.asarray(problem.free, int)
    x = jax.device_put(np.asarray(problem.u_fixed)[free])
    eta = jax.device_put(np.zeros((population.n_subjects, model.n_eta)))
    if method == "lb":
        bar = tqdm(total=max_iter, desc="LB", disable=not progress, leave=False)
        try:
            x, eta, n_alt = lindstrom_bates(problem, x, eta, max_iter, tol, bar)
        finally:
            bar.close()
        problem = Problem(model, "foce", problem.free, problem.u_fixed, population,
                          problem.devices, problem.buckets)
        state = run_chunk(problem, bfgs_init(x, eta, problem.devices), jnp.asarray(1, int),
                          jnp.asarray(0.0, float))
        return _finish(method, problem, state, names=names, free=free,
                       fixed_names=fixed_names, iterations=n_alt,
                       converged=n_alt < max_iter, interrupted=False, covariance=covariance,
                       start=start, history=[float(state.value)], gradient_check=False,
                       tol=tol)
    state = bfgs_init(x, eta, problem.devices)
    history: list[float] = []
    iterations, interrupted = 0, False
    bar = tqdm(total=max_iter, desc=f"{method.upper()}", disable=not progress, leave=False)
    try:
        with _sigint.counted_sigint():
            _sigint.raise_pending()  # one swallowed before the fit (JAX starting up)
            while iterations < max_iter:
                n = min(chunk, max_iter - iterations)
                state = run_chunk(problem, state, np.asarray(n, np.int64),
                                  np.asarray(tol, float))
                done_now = int(state.iteration)
                iterations += done_now
                history.append(float(state.value))
                bar.update(done_now)
                bar.set_postfix(ofv=f"{float(state.value):.4f}")
                _sigint.raise_pending()  # a Ctrl-C swallowed during the chunk
                if bool(state.done):
                    break
                _sigint.pause_for_tests("fit")
    except KeyboardInterrupt:
        _sigint.handled()
        if iterations == 0:
            raise  # during compilation or the first chunk: no estimates to keep
        interrupted = True
    finally:
        bar.close()
    return _finish(method, problem, state, names=names, free=free, fixed_names=fixed_names,
                   iterations=iterations, converged=False, interrupted=interrupted,
                   covariance=covariance, start=start, history=history, tol=tol)


def setup_problem(model: PopulationModel, population, method: str, *,
                  fixed: Sequence[str] | Mapping[str, float] = (),
                  init: Mapping[str, float] | None = None, u0=None, devices=None):
    """The unconstrained problem of a fit: ``(problem, names, fixed_names)``, the data
    checked and the model specialised to them. Start: the model's initial values, or
    ``u0`` (a full unconstrained vector), with ``init`` and a ``fixed`` mapping set over
    it; ``fixed`` names (or a mapping name -> value) are held there."""
    model.check(population)
    model = model.specialised(population)
    u0 = model.initial_vector() if u0 is None else np.array(u0, float)
    if init:
        u0 = model.natural_to_vector(dict(init), u0, "init")
    names = model.parameter_names()
    if isinstance(fixed, Mapping):
        u0 = model.natural_to_vector(dict(fixed), u0)
        fixed_names = tuple(fixed)
    else:
        fixed_names = tuple(fixed)
        unknown = [n for n in fixed_names if n not in names]
        if unknown:
            raise ValueError(f"unknown parameters to fix {unknown}; parameters are {names}")
        _check_fixed_blocks(model.omega, fixed_names)
    check_parameters_informed(model, population, fixed_names)
    free = tuple(i for i, n in enumerate(names) if n not in fixed_names)
    # device_put, not jnp.asarray: no eager (compiled) conversions at start-up
    problem = Problem(model, method, free, jax.device_put(np.asarray(u0, float)), population,
                      tuple(resolve_devices(devices)), subject_buckets(population))
    return problem, names, fixed_names


def _check_fixed_blocks(omega, fixed_names) -> None:
    """An element of an omega block is estimated through the block's Cholesky factor: held
    alone, its Cholesky entry stays while the element moves with the others (omega_eta_v
    of a [cl, v] block fixed at 0.1 was reported at 0.109, fixed). A whole block can be."""
    elements = omega.elements()
    for name in fixed_names:
        if name not in elements:
            continue
        row = omega.pattern[omega.names.index(elements[name][0])]
        block = {omega.names[j] for j in np.flatnonzero(row)}
        whole = [n for n, (a, b) in elements.items() if a in block and b in block]
        if len(block) > 1 and not set(whole) <= set(fixed_names):
            raise ValueError(f"fixed: {name} is an element of the omega block "
                             f"{sorted(block)}, estimated through the block's Cholesky "
                             f"factor: it cannot be held alone (it would move with the "
                             f"others); fix the whole block {whole}, or none of it")


def _finish(method: str, problem: Problem, state, *, names, free, fixed_names, iterations,
            converged, interrupted, covariance, start, history, gradient_check=True,
            tol=1e-6) -> FitResult:
    """Assemble the :class:`FitResult` (convergence check, covariance step, EBE table) from
    the optimiser's last ``state`` on ``problem`` (``method``: the one the user asked for;
    Lindstrom–Bates reports through a FOCE problem)."""
    model, population = problem.model, problem.population
    x, f, eta = state.x, state.value, state.eta
    grad_final = np.asarray(state.grad)
    if gradient_check:
        converged = bool(np.isfinite(float(f)) and np.max(np.abs(grad_final)) < tol)
        if not converged and np.isfinite(float(f)) and bool(state.done) and not interrupted:
            # the line search can no longer improve: converged to the precision available
            converged = bool(np.max(np.abs(grad_final)) < 1e3 * tol)
    message = "" if converged else (
        "interrupted" if interrupted else
        f"did not converge in {iterations} iterations (largest gradient "
        f"{np.max(np.abs(grad_final)):.3g})")
    if not converged and not interrupted:
        warnings.warn(f"NLME fit: {message}", stacklevel=3)

    u, natural, penalty, jac = jax.tree.map(np.asarray, natural_summary(problem, x))
    if method == "fo" and not interrupted:
        # FO's objective needs no EBEs (its eta are 0): POSTHOC, the conditional modes at
        # the estimates, as NONMEM and nlmixr2 report (shrinkage, IPRED, CWRES use them)
        eta = population_ebes(model, jnp.asarray(u), population, jnp.asarray(eta),
                              problem.devices, problem.buckets)
    n_obs = population.n_obs
    ofv = float(f)
    # the objective includes the l2 penalty; the likelihood does not
    penalty = float(penalty)
    minus2ll = ofv - penalty + n_obs * LOG_2PI
    p = free.size
    estimates = pd.Series(natural, index=names)
    se = pd.Series(np.nan, index=names)
    cov_df = cov_u = None
    if covariance and not interrupted:
        try:
            with _sigint.counted_sigint():
                _sigint.pause_for_tests("covariance")
                cov_df, se, cov_u = covariance_step(problem, x, eta, names, free, jac)
                _sigint.raise_pending()
        except KeyboardInterrupt:
            _sigint.handled()
            interrupted = True
            message = "interrupted during the covariance step: no standard errors"
    eta_df = pd.DataFrame(np.asarray(eta), columns=list(model.eta_names),
                          index=pd.Index(population.ids, name="ID"))
    result = FitResult(
        method=method, model=model, population=population, u=u, minus2ll=minus2ll, ofv=ofv,
        aic=minus2ll + 2 * p, bic=minus2ll + p * np.log(n_obs), n_obs=n_obs, n_parameters=p,
        estimates=estimates, se=se, covariance=cov_df, eta=eta_df, converged=converged,
        iterations=iterations, seconds=time.perf_counter() - start, message=message,
        interrupted=interrupted, fixed=fixed_names, history=history,
        covariance_unconstrained=cov_u if free.size == len(names) else None,
        devices=problem.devices)
    reasons = result.degenerate
    if reasons:
        warnings.warn(f"NLME fit: {'converged to' if converged else 'stopped at'} a "
                      f"degenerate solution: {'; '.join(reasons)}", stacklevel=3)
    return result

