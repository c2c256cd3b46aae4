"""Priors and the NumPyro model of a Bayesian population fit.

:class:`Priors` gives every parameter of a :class:`PopulationModel` a prior (defaults for
any left out); :func:`numpyro_model` turns the model into a NumPyro model: priors on theta,
on the random-effect standard deviations (half-normal by default) and correlations (LKJ),
and on the residual-error standard deviations; non-centred random effects ``eta_i = L z_i``
with ``z_i ~ N(0, I)``, all subjects at once (``vmap``); the observations' likelihood per
subject (so ``az.loo`` leaves out a subject). The initial values of the chains (from the
model or a maximum-likelihood fit) are built here too. Imported on first use (NumPyro is
slow to import): ``bayes_ude.nlme`` loads this module lazily.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Collection, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions.transforms import biject_to
from numpyro.infer import init_to_uniform

from .._batching import resolve_devices
from ._buckets import map_subjects, subject_buckets
from ._likelihood import LOG_2PI, at_limits, censored, data_terms
from ._model import PopulationModel
from ._parameterisation import (
    centred_factor_is_diagonal,
    eta_columns,
    omega_blocks,
    typical_links,
    typical_shifts,
    typical_shifts_compiled,
)
from ._results import FitResult

__all__ = ["CensoredNormal", "Priors", "numpyro_model"]


@dataclasses.dataclass(frozen=True)
class Priors:
    """Priors of a Bayesian population fit (NumPyro distributions; any left out get the
    defaults below).

    Parameters
    ----------
    theta : ``{name: distribution}``. Defaults: for a name with an ``l2`` penalty in the
        model, ``Normal(0, 1/sqrt(l2))`` on every entry (the penalty's prior: ``l2 w^2`` on
        the OFV is its −2 log density); otherwise
        ``Normal(initial value, theta_scale)`` (with the usual log-scale typical values,
        ``theta_scale = 2`` allows a factor of ``e^4`` either way at two SDs).
    omega_sd : distribution of each random effect's standard deviation, or
        ``{eta name: distribution}``; default ``HalfNormal(1)`` (on log-scale parameters:
        up to ~200 % CV at two SDs).
    omega_corr : LKJ concentration for the correlations of non-diagonal omega blocks
        (default 2: mildly favours small correlations).
    sigma : ``{name: distribution}`` for residual-error standard deviations; default
        ``HalfNormal(5 x initial value)``.
    """

    theta: Mapping[str, dist.Distribution] = dataclasses.field(default_factory=dict)
    omega_sd: dist.Distribution | Mapping[str, dist.Distribution] | None = None
    omega_corr: float = 2.0
    sigma: Mapping[str, dist.Distribution] = dataclasses.field(default_factory=dict)
    theta_scale: float = 2.0

    def check(self, model: PopulationModel) -> None:
        for label, given, known in (("theta", self.theta, model.theta),
                                    ("sigma", self.sigma, model.sigma_names)):
            unknown = [k for k in given if k not in known]
            if unknown:
                raise ValueError(f"priors for unknown {label} names {unknown}; the model's "
                                 f"{label} names are {list(known)}")
        if isinstance(self.omega_sd, Mapping):
            unknown = [k for k in self.omega_sd if k not in model.omega.names]
            if unknown:
                raise ValueError(f"omega_sd priors for unknown random effects {unknown}; "
                                 f"the model's are {list(model.omega.names)}")
        if not self.omega_corr > 0:
            raise ValueError(f"omega_corr (LKJ concentration) must be > 0, got "
                             f"{self.omega_corr}")

    def check_sgmcmc(self, model: PopulationModel) -> None:
        """SG-MCMC moves theta on the whole real line and the SDs on their log scale; a prior
        with a narrower support gives -inf outside it, every step there is rejected and the
        chains stand still (Uniform(0, 1) on a theta the data put at -0.5: 3000 of 3000 steps
        rejected, each chain at one value). Such priors are refused."""

        def covers(d, values) -> bool:  # the support holds values far out on both sides
            c = d.support
            while isinstance(c, dist.constraints.independent):
                c = c.base_constraint
            return bool(np.all(np.asarray(c(jnp.asarray(values)))))

        line, half = [-1e8, -1.0, 0.0, 1.0, 1e8], [1e-8, 1.0, 1e8]
        narrow = [k for k in model.theta if not covers(self.theta_dist(model, k), line)]
        narrow += [n for n in model.omega.names
                   if not covers(self.omega_sd_dist(model, n), half)]
        narrow += [k for k in model.sigma_names if not covers(self.sigma_dist(model, k), half)]
        if narrow:
            raise ValueError(f"SG-MCMC needs priors on the whole real line for theta and on "
                             f"(0, inf) for the SDs; the priors of {narrow} have a narrower "
                             "support, outside which every step would be rejected; use "
                             "method='nuts' (which samples within any support) or wider priors")

    def theta_dist(self, model: PopulationModel, name: str) -> dist.Distribution:
        init = np.asarray(model.theta[name], float)
        if name in self.theta:
            d = self.theta[name]
        elif name in model.l2:
            d = dist.Normal(0.0, 1.0 / math.sqrt(model.l2[name]))
        else:
            d = dist.Normal(jnp.asarray(init), self.theta_scale)
        if init.ndim and d.event_shape != init.shape:
            d = d.expand(init.shape).to_event(init.ndim)
        return d

    def omega_sd_dist(self, model: PopulationModel, name: str) -> dist.Distribution:
        if isinstance(self.omega_sd, Mapping):
            return self.omega_sd.get(name, dist.HalfNormal(1.0))
        return dist.HalfNormal(1.0) if self.omega_sd is None else self.omega_sd

    def sigma_dist(self, model: PopulationModel, name: str) -> dist.Distribution:
        return self.sigma.get(name, dist.HalfNormal(5.0 * model.sigma[name]))


# ----------------------------------------------------------------------- NumPyro model
def numpyro_model(model: PopulationModel, population, priors: Priors | None = None, *,
                  devices=None, centred: Collection[str] = ()):
    """The population model as a NumPyro model (a function of no arguments).

    Sites: one per theta name; ``omega_sd`` (one per random effect, in the model's order)
    and ``omega_corr_<k>`` (Cholesky factor of each non-diagonal block's correlation),
    with the (co)variances as deterministic sites named as in
    :meth:`PopulationModel.parameter_names` (``omega_<eta>``); one per sigma name; the
    random effects, non-centred by default: ``eta_z`` (subject x random effect, standard
    normal) with ``eta = z L'``; those named in ``centred`` (random effects of omega,
    :func:`eta_columns`) sampled centred, ``eta_c ~ N(shift, L L')`` over their columns,
    ``eta = eta_c - shift``: where an effect shifts one individual parameter (``ka =
    exp(tka + eta_ka)``), ``shift`` is that parameter's typical value on its scale
    (``log ka`` at ``eta = 0``) and ``eta_c`` the subject's own (``log ka_i``); otherwise
    0 (:func:`typical_links`).
    ``eta`` (all columns) and the individual parameters ``<name>_i`` are deterministic
    sites. Centred effects suit informative data (little shrinkage: the posterior of a
    subject's effect hardly depends on omega), non-centred ones sparse data (the funnel of
    an effect and its SD); :func:`choose_centred` picks per random effect;
    ``y``, the observations on the error models' scale (``log DV`` for the exponential
    model; padding masked), one event per subject; an observation below its limit of
    quantification (``Population.obs_lloq``) has the limit as its value and ``P(y <
    limit)`` as its likelihood (Beal's M3, :class:`CensoredNormal`).

    ``devices`` (as in :func:`bayes_ude.nlme.fit`; default one device on a CPU, every
    local GPU): the subjects' predictions, the costly part of the log density and its
    gradient, are split evenly over them (:func:`bayes_ude._batching.batch_map`) and
    gathered for the observation site. Given explicitly on a CPU (even ``devices=1``), the
    subjects run in blocks of a fixed size inside a loop (``isolate``), and the log density
    and its gradient are the same to the last bit on 1, 2 or 4 devices, and so are the NUTS
    draws; that program costs about twice the default single-device one per gradient
    (1,000 subjects: 1.7 against 1.0 ms), which the default (``None``) runs instead.
    Subjects of very different sizes are predicted in size groups (:mod:`._buckets`).
    """
    priors = Priors() if priors is None else priors
    priors.check(model)
    model = model.specialised(population)
    blocks = omega_blocks(model)
    q = model.n_eta
    n_subjects = population.n_subjects
    mask = jnp.asarray(population.obs_mask)
    # devices given on a CPU: the program that gives the same draws on any number of
    # devices (isolate: subjects in blocks of a fixed size in a loop); by default the
    # single vectorised block, twice as fast per gradient (see batch_map)
    isolate = devices is not None and jax.default_backend() == "cpu"
    devices = tuple(resolve_devices(devices))
    c_cols, nc_cols = eta_columns(model, centred)
    c_diagonal = centred_factor_is_diagonal(model, c_cols)
    links = typical_links(model, population, c_cols) if c_cols.size else ()
    linked = any(link is not None for link in links)

    buckets = subject_buckets(population)

    def subject(item, shared):
        s, eta_i = item
        theta, sigma = shared
        ind = model.individual_parameters(theta, eta_i, s)
        scalars = {k: v for k, v in ind.items() if jnp.shape(v) == ()}
        return scalars, model.residual(model.predict(theta, eta_i, s), sigma, at_limits(s))

    def fn():
        theta = {k: numpyro.sample(k, priors.theta_dist(model, k)) for k in model.theta}
        sds = numpyro.sample("omega_sd", _stacked([priors.omega_sd_dist(model, n)
                                                   for n in model.omega.names]))
        chol = jnp.diag(sds)
        for k, block in enumerate(blocks):
            if len(block) > 1:
                corr = numpyro.sample(f"omega_corr_{k}",
                                      dist.LKJCholesky(len(block), priors.omega_corr))
                idx = np.asarray(block)
                chol = chol.at[np.ix_(idx, idx)].set(sds[idx, None] * corr)
        omega = chol @ chol.T
        chol = model.expand_omega(chol)  # a subject's random effects (IOV: per occasion)
        for name, r, c in zip(model.omega.element_names(), *model.omega.free, strict=True):
            numpyro.deterministic(name, omega[r, c])
        sigma = {k: numpyro.sample(k, priors.sigma_dist(model, k)) for k in model.sigma_names}
        eta = jnp.zeros((n_subjects, q))
        with numpyro.plate("subject", n_subjects):
            if nc_cols.size:  # blocks never mix the two kinds: chol is block-diagonal
                z = numpyro.sample("eta_z", dist.Normal(0.0, 1.0).expand([nc_cols.size])
                                   .to_event(1))
                eta = eta.at[:, nc_cols].set(z @ chol[np.ix_(nc_cols, nc_cols)].T)
            if c_cols.size:
                shift = (typical_shifts(model, population, theta, links) if linked
                         else jnp.zeros((n_subjects, c_cols.size)))
                value = numpyro.sample("eta_c", _centred_dist(
                    shift, chol[np.ix_(c_cols, c_cols)], c_diagonal))
                eta = eta.at[:, c_cols].set(value - shift)
        eta = numpyro.deterministic("eta", eta)
        ind, (y, f_t, r) = map_subjects(subject, population, eta, (theta, sigma),
                                        buckets=buckets, obs_outputs=(False, True),
                                        block="auto" if isolate else None,
                                        isolate=isolate, devices=devices)
        for name, value in ind.items():
            numpyro.deterministic(f"{name}_i", value)
        # padding must not reach the density (nor its gradient) through NaNs
        y = jnp.where(mask, y, 0.0)
        f_t = jnp.where(mask, f_t, 0.0)
        sd = jnp.sqrt(jnp.where(mask, r, 1.0))
        y_dist = (CensoredNormal(f_t, sd, censored(population)) if population.has_censored
                  else dist.Normal(f_t, sd))
        with numpyro.plate("subject", n_subjects):
            numpyro.sample("y", y_dist.mask(mask).to_event(1), obs=y)

    return fn


def _centred_dist(loc, chol, diagonal: bool):
    """``N(loc, chol chol')`` per subject; independent normals when ``chol`` is diagonal."""
    if diagonal:
        return dist.Normal(loc, jnp.diagonal(chol)).to_event(1)
    return dist.MultivariateNormal(loc, scale_tril=chol)


class CensoredNormal(dist.Normal):
    """``Normal(loc, scale)`` whose values where ``censored`` are upper limits: their log
    density is ``log Phi((value - loc) / scale)`` (Beal's M3, as in the likelihood layer's
    ``data_terms``). Draws are the normal's (the values an assay without a limit would
    give)."""

    def __init__(self, loc, scale, censored, *, validate_args=None):
        super().__init__(loc, scale, validate_args=validate_args)
        self.censored = jnp.broadcast_to(censored, self.batch_shape)

    def log_prob(self, value):
        terms = data_terms(value, self.loc, self.scale**2, True, self.censored)
        return -0.5 * (terms + LOG_2PI)


class _Stacked(dist.Distribution):
    """Independent scalar distributions as one vector site (each its own prior)."""

    arg_constraints = {}
    support = dist.constraints.positive

    def __init__(self, parts):
        self.parts = list(parts)
        super().__init__(batch_shape=(), event_shape=(len(self.parts),))

    def sample(self, key, sample_shape=()):
        keys = jax.random.split(key, len(self.parts))
        return jnp.stack([p.sample(k, sample_shape) for p, k in zip(self.parts, keys,
                                                                       strict=True)], -1)

    def log_prob(self, value):
        return sum(p.log_prob(value[..., i]) for i, p in enumerate(self.parts))


def _stacked(parts):
    for p in parts:
        if p.support is not dist.constraints.positive or p.batch_shape or p.event_shape:
            raise ValueError(f"omega_sd priors must be scalar distributions on (0, inf) "
                             f"(e.g. HalfNormal, HalfCauchy), got {p}")
    return _Stacked(parts)


def init_near(values: Mapping[str, np.ndarray], radius: float = 0.2):
    """NumPyro init strategy: the given values, each chain moved by ``U(-radius, radius)``
    on the unconstrained scale (so that chains start apart); other sites uniform."""
    return functools.partial(_init_near_site, values=values, radius=radius)


def _init_near_site(site=None, values=None, radius=0.2):
    if site is None:
        return functools.partial(_init_near_site, values=values, radius=radius)
    if site["type"] == "sample" and not site["is_observed"] and site["name"] in values:
        value = jnp.asarray(values[site["name"]])
        transform = biject_to(site["fn"].support)
        unc = transform.inv(value)
        key = site["kwargs"].get("rng_key")
        if key is not None and radius > 0:
            unc = unc + jax.random.uniform(key, jnp.shape(unc), minval=-radius,
                                           maxval=radius)
        return transform(unc)
    return init_to_uniform(site)


def initial_values(model: PopulationModel, population, init,
                   centred: Collection[str] = ()) -> dict:
    """Initial site values from the model's initial values or a maximum-likelihood fit
    (``centred``: as :func:`numpyro_model` takes it)."""
    # unpack compiled once (run eagerly it compiles each of its ~25 primitives)
    if isinstance(init, FitResult):
        theta, omega, sigma = jax.jit(init.model.unpack_estimates)(jnp.asarray(init.u))
        eta = np.asarray(init.eta.to_numpy())
    else:
        u = model.initial_vector()
        if init is not None:
            u = model.natural_to_vector(dict(init), u, "init")
        theta, omega, sigma = jax.jit(model.unpack_estimates)(jnp.asarray(u))
        eta = np.zeros((population.n_subjects, model.n_eta))
    omega = np.asarray(omega)
    sds = np.sqrt(np.diag(omega))
    values = {k: np.asarray(v) for k, v in theta.items()}
    values["omega_sd"] = sds
    corr_full = omega / np.outer(sds, sds)
    chol = np.diag(sds)
    for k, block in enumerate(omega_blocks(model)):
        if len(block) > 1:
            lc = np.linalg.cholesky(corr_full[np.ix_(block, block)])
            values[f"omega_corr_{k}"] = lc
            chol[np.ix_(block, block)] = sds[block, None] * lc
    values.update({k: np.asarray(float(v)) for k, v in sigma.items()})
    c_cols, nc_cols = eta_columns(model, centred)
    if nc_cols.size:
        chol_x = model.expand_omega(chol)
        values["eta_z"] = np.linalg.solve(chol_x[np.ix_(nc_cols, nc_cols)], eta[:, nc_cols].T).T
    if c_cols.size:
        links = typical_links(model, population, c_cols)
        shift = np.asarray(typical_shifts_compiled(
            model, population, {k: jnp.asarray(v) for k, v in theta.items()}, links))
        values["eta_c"] = eta[:, c_cols] + shift
    return values
