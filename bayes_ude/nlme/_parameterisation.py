"""Centred or non-centred random effects: which of a subject's effects a Bayesian
population fit samples as they are (``eta ~ N(0, Omega)``) and which as ``eta = L z``.

The two parameterisations give the same posterior and different geometry for NUTS.
Centred suits informative data: a subject's effect is pinned by its observations and
hardly depends on omega. Non-centred suits sparse data, where it avoids the funnel
between an effect and its SD. :func:`choose_centred` judges each random effect by how much
the data say about it (``CENTRED_MIN_INFORMATION``); :func:`eta_columns` maps the choice to
the columns of ``eta`` (occasion effects have one column per occasion), for
:mod:`._priors`' NumPyro model. Nothing here imports NumPyro.
"""

from __future__ import annotations

from collections.abc import Collection

import jax
import jax.numpy as jnp
import numpy as np

from .._compile import ONE_OFF, filter_jit
from ._likelihood import at_limits
from ._model import PopulationModel
from ._results import FitResult

__all__ = ["choose_centred", "eta_columns", "omega_blocks", "resolve_centred", "typical_links",
           "typical_shifts"]


def omega_blocks(model: PopulationModel) -> list[list[int]]:
    """Index blocks of omega (singletons for the diagonal)."""
    om = model.omega
    q = len(om.names)
    if om.structure == "diagonal":
        return [[i] for i in range(q)]
    if om.structure == "full":
        return [list(range(q))]
    blocks = [[om.names.index(n) for n in b] for b in om.structure]
    used = {i for b in blocks for i in b}
    return blocks + [[i] for i in range(q) if i not in used]


def eta_columns(model: PopulationModel, centred: Collection[str] = ()):
    """Which of a subject's random effects (:attr:`PopulationModel.eta_names`, columns of
    ``eta``) are sampled centred and which non-centred: ``(centred columns, non-centred
    columns)``, index arrays. ``centred`` names random effects of omega; a correlated
    block is centred as a whole or not at all."""
    names = model.omega.names
    unknown = [n for n in centred if n not in names]
    if unknown:
        raise ValueError(f"centred random effects {unknown} are not random effects of omega "
                         f"{list(names)}")
    for block in omega_blocks(model):
        inside = [names[i] in centred for i in block]
        if any(inside) and not all(inside):
            raise ValueError(f"random effects {[names[i] for i in block]} are correlated: "
                             "centre all of them or none")
    is_centred = np.isin(_omega_index(model), [names.index(n) for n in centred])
    return np.flatnonzero(is_centred), np.flatnonzero(~is_centred)


def _omega_index(model: PopulationModel) -> np.ndarray:
    """The omega name (its index) of each column of eta: occasion effects repeat theirs
    once per occasion."""
    q = len(model.omega.names)
    return (np.diag(model.expand_omega(np.diag(np.arange(1.0, q + 1)))) - 1).astype(int)


def centred_factor_is_diagonal(model: PopulationModel, c_cols) -> bool:
    """Whether the centred columns' factor is diagonal (independent normals); an error if
    it is not lower triangular (as ``MultivariateNormal(scale_tril=)`` needs)."""
    pattern = model.expand_omega(np.tril(model.omega.pattern.astype(float)))
    pattern = pattern[np.ix_(c_cols, c_cols)] != 0
    if np.any(np.triu(pattern, 1)):
        raise ValueError("the centred random effects' Cholesky factor is not lower "
                         "triangular in the order of eta_names (occasion effects listed in "
                         "iov in another order than in omega); list them in omega's order")
    return not np.any(np.tril(pattern, -1))


def typical_links(model: PopulationModel, population, c_cols) -> tuple:
    """How each centred column's effect enters an individual parameter, when it simply
    shifts one: ``(name, "log")`` if ``log p = log p(eta = 0) + eta_j``, ``(name,
    "identity")`` if ``p = p(eta = 0) + eta_j``, else ``None``. Read off at the model's
    initial theta for the first subject, at two random ``eta``; occasion columns get
    ``None``. A centred effect with a link is sampled on its parameter's scale, centred on
    the typical value (``log ka_i ~ N(log ka(eta = 0), omega)``): the likelihood then
    depends on theta only through the prior of the subjects' values, with no ridge between
    theta and all N effects. Any shift gives the same posterior; the link only decides
    the geometry."""
    n_between = len(model.between_names)
    theta = {k: jnp.asarray(v) for k, v in model.theta.items()}
    rng = np.random.default_rng(0)
    etas = np.zeros((3, model.n_eta))
    signs = rng.choice([-1.0, 1.0], (2, n_between))
    etas[1:, :n_between] = rng.uniform(0.2, 0.6, (2, n_between)) * signs
    first = jax.tree.map(lambda x: x[0], population)
    values = {k: np.asarray(v) for k, v in _individual_at(model, theta, jnp.asarray(etas),
                                                          first).items() if v.ndim == 1}
    links = []
    for col in c_cols:
        link = None
        for name, v in values.items():
            with np.errstate(all="ignore"):
                if np.all(v > 0) and np.allclose(np.log(v[1:]) - np.log(v[0]),
                                                 etas[1:, col], rtol=0, atol=1e-10):
                    link = (name, "log")
                elif np.allclose(v[1:] - v[0], etas[1:, col], rtol=0, atol=1e-10):
                    link = (name, "identity")
            if link is not None:
                break
        links.append(link if col < n_between else None)
    return tuple(links)


def typical_shifts(model: PopulationModel, population, theta, links) -> jax.Array:
    """``(subjects, centred columns)``: each linked column's individual parameter at
    ``eta = 0`` on its scale (0 for a column without a link)."""
    zero = jnp.zeros(model.n_eta)

    def subject(s):
        ind = model.individual_parameters(theta, zero, s)
        return jnp.stack([jnp.zeros(()) if link is None else
                          jnp.log(ind[link[0]]) if link[1] == "log" else ind[link[0]]
                          for link in links])

    return jax.vmap(subject)(population)


#: :func:`typical_shifts` compiled on its own (the chains' starting values)
typical_shifts_compiled = filter_jit(quick_below=ONE_OFF)(typical_shifts)


@filter_jit(quick_below=ONE_OFF)
def _individual_at(model, theta, etas, subject):
    return jax.vmap(lambda e: model.individual_parameters(theta, e, subject))(etas)


#: A random effect is sampled centred when, for the median subject, its data carry at
#: least ``CENTRED_MIN_INFORMATION`` times the information that omega's prior does
#: (``omega^2 I``, ``I`` the Fisher information of the subject's observations about the
#: effect): the subject's posterior is then mostly the data's, and hardly depends on omega.
#: In a linear model ``omega^2 I = 1`` is where a subject's estimate is shrunk halfway to
#: 0. Measured on Theophylline (``omega^2 I`` 25, 8, 8 at the maximum-likelihood fit;
#: shrinkage 2-10 %): centred with a dense metric, 12 leapfrog steps per draw and minimum
#: ESS 3,200 of 4,000 draws, against 43 steps and 1,100 non-centred with a diagonal one.
CENTRED_MIN_INFORMATION = 1.0


def choose_centred(model: PopulationModel, population, init=None) -> tuple[str, ...]:
    """The random effects to sample centred (see ``CENTRED_MIN_INFORMATION``), judged at
    ``init`` (as :func:`bayes_ude.nlme.fit_bayes` takes it: a maximum-likelihood fit,
    natural values, or ``None`` for the model's initial values) with every ``eta = 0``."""
    u = init.u if isinstance(init, FitResult) else model.natural_to_vector(
        dict(init or {}), model.initial_vector(), "init")
    ratio = np.asarray(_information_ratio(model, population, jnp.asarray(u)))
    names = model.omega.names
    median = np.median(ratio, axis=0)
    of_column = _omega_index(model)
    chosen = {n for i, n in enumerate(names)
              if np.min(median[of_column == i]) >= CENTRED_MIN_INFORMATION}
    for block in omega_blocks(model):  # a correlated block goes as a whole
        if not all(names[i] in chosen for i in block):
            chosen -= {names[i] for i in block}
    return tuple(n for n in names if n in chosen)


def resolve_centred(model: PopulationModel, population, init,
                    random_effects) -> tuple[str, ...]:
    """The random effects to sample centred, from ``fit_bayes``'s ``random_effects``:
    ``"auto"`` (:func:`choose_centred`), ``"centred"``, ``"noncentred"`` (either spelling,
    centred or centered), or names of random effects."""
    names = model.omega.names
    if isinstance(random_effects, str):
        if random_effects == "auto":
            chosen = choose_centred(model, population, init)
            try:
                centred_factor_is_diagonal(model, eta_columns(model, chosen)[0])
                return chosen
            except ValueError:  # occasion effects not in omega's order: not these
                return tuple(n for n in chosen if n not in model.iov)
        spelling = random_effects.replace("centered", "centred")  # either spelling
        if spelling in ("centred", "noncentred"):
            return names if spelling == "centred" else ()
        raise ValueError(f"random_effects must be 'auto', 'centred', 'noncentred' or names "
                         f"of random effects {list(names)}, got {random_effects!r}")
    chosen = tuple(random_effects)
    # unknown names, a split block, occasion effects out of order: a clear error
    centred_factor_is_diagonal(model, eta_columns(model, chosen)[0])
    return chosen


@filter_jit(quick_below=ONE_OFF)
def _information_ratio(model, population, u):
    """``omega_jj I_ij`` for each subject i and column j of eta (at eta = 0)."""
    theta, omega, sigma = model.unpack_estimates(u)
    variances = jnp.diagonal(model.expand_omega(omega))
    zero = jnp.zeros(model.n_eta)

    def subject(s):
        def transformed(eta):  # the prediction, and its residual variance alongside
            _, f, r = model.residual(model.predict(theta, eta, s), sigma, at_limits(s))
            return f, r

        jac, r = jax.jacfwd(transformed, has_aux=True)(zero)
        weight = jnp.where(s.obs_mask, 1.0 / jnp.where(s.obs_mask, r, 1.0), 0.0)
        return jnp.sum(weight[:, None] * jac ** 2, axis=0)

    return jax.vmap(subject)(population) * variances
