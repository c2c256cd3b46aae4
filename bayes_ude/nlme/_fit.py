"""``fit``: one entry point over every estimation method of a population model.

The top of the ``nlme`` layers: maximum-likelihood methods go to :func:`._estimate.fit_ml`,
the samplers to :func:`._bayes.fit_bayes`. The Bayesian layer is imported on the first
Bayesian fit, not with ``bayes_ude.nlme``: it loads NumPyro, BlackJAX and ArviZ (about a
second), which a maximum-likelihood fit or the command line's start-up never needs. That
deferred import is the one function-level import of the estimation layers.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence

from .._sampler_options import SAMPLERS
from ._estimate import fit_ml
from ._likelihood import METHODS
from ._model import PopulationModel
from ._results import PopulationFit

__all__ = ["fit"]


def fit(
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
    **bayes,
) -> PopulationFit:
    """Fit a population model: maximum likelihood, or a posterior by NUTS or SG-MCMC.

    Maximum likelihood (:mod:`._estimate`): the outer iteration is BFGS with a backtracking
    line search on the unconstrained parameters (theta, Cholesky factor of omega with log
    diagonal, log sigma).

    Parameters
    ----------
    model : the :class:`PopulationModel`.
    population : a :class:`Population` (see :func:`read_nonmem`).
    method : ``"fo"``, ``"foce"``, ``"focei"`` (default), ``"laplace"``, or ``"lb"``:
        the Lindstrom–Bates algorithm of R's ``nlme`` (additive error only), which
        alternates penalised nonlinear least squares for theta with a linear
        mixed-effects step for omega and sigma. Its fixed point is *not* the maximum of
        the FOCE likelihood it reports (on Theophylline FOCE finds a −2LL 0.06 lower);
        use it to reproduce ``nlme``.
    fixed : names of natural-scale parameters held at their initial values (or a
        mapping name -> value to hold them at); names as in
        :meth:`PopulationModel.parameter_names` (theta names, ``omega_<eta>``, sigma names).
    init : initial values overriding the model's (natural scale; same names).
    max_iter : maximum outer (BFGS) iterations.
    tol : convergence when the largest gradient component of the OFV is below ``tol``
        (or the OFV stops changing).
    covariance : compute standard errors (observed information; finite differences of
        the exact gradient). A Hessian that is not positive definite gives a warning and
        NaN standard errors.
    progress : show a progress bar.
    chunk : outer iterations per compiled call (progress updates between chunks).
    devices : where the subjects are computed: ``None`` (default: every local GPU, or one
        CPU device), ``"all"``, a count, or a list of devices. Subjects are padded to a
        multiple of the device count and split evenly; the objective and the estimates are
        the same as on one device, to rounding (see :func:`bayes_ude._batching.batch_map`).
        The Bayesian methods split the subjects the same way (NUTS: inside each chain's
        log density, the chains then all on the default device; SG-MCMC: each
        minibatch); given explicitly, the draws are the same on 1, 2 or 4 devices (see
        :func:`bayes_ude.nlme.fit_bayes`). Where a few subjects have many more
        observations than the rest (padding them all would waste more than half the
        computed slots), the subjects are computed in a few size groups, each padded to
        its own largest subject (``bayes_ude.nlme._buckets``; the summary's
        ``padding_efficiency`` and ``computed_padding_efficiency``).

    Returns
    -------
    FitResult. Ctrl-C during the fit returns the current estimates with
    ``interrupted=True`` (no covariance step); Ctrl-C during the covariance step returns
    the estimates without standard errors, also ``interrupted=True``. Ctrl-C before the
    first chunk of iterations has finished (during compilation) is re-raised: there are
    no estimates to keep. Estimates that ran away to absurd values are listed in
    :attr:`FitResult.degenerate` (with a warning).

    Notes
    -----
    Bayesian methods: ``method="nuts"`` (NUTS on the population and random effects) or
    ``"sgld"``, ``"psgld"``, ``"sghmc"`` (minibatches of subjects) run the same model
    through :func:`bayes_ude.nlme.fit_bayes`; ``bayes`` holds its options (``priors``,
    ``key``, ``options`` (a :class:`bayes_ude.inference.SamplerOptions`) or single
    sampler settings such as ``num_samples``, ...) and the result is a
    :class:`BayesianFitResult`.
    """
    if method in SAMPLERS:
        if fixed:
            raise ValueError("fixed parameters are not supported by the Bayesian methods; "
                             "give them a tight prior instead (Priors)")
        given = {"max_iter": max_iter, "tol": tol, "covariance": covariance, "chunk": chunk}
        defaults = inspect.signature(fit).parameters
        ml_only = [k for k, v in given.items() if v != defaults[k].default]
        if ml_only:
            raise TypeError(f"fit() options {ml_only} are maximum-likelihood settings, "
                            f"which method {method!r} does not use; leave them out")
        from . import _bayes  # the deferred import (NumPyro): see the module docstring

        return _bayes.fit_bayes(model, population, method, progress=progress, init=init,
                                devices=devices, **bayes)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS + SAMPLERS}, got {method!r}")
    if bayes:
        raise TypeError(f"fit() got options {sorted(bayes)} that only the Bayesian methods "
                        f"{SAMPLERS} take")
    return fit_ml(model, population, method, fixed=fixed, init=init, max_iter=max_iter, tol=tol,
                  covariance=covariance, progress=progress, chunk=chunk, devices=devices)
