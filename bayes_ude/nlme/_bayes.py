"""Bayesian population fits: the same :class:`PopulationModel` under NUTS and SG-MCMC.

NUTS
    :func:`numpyro_model` turns a population model into a NumPyro model: priors on theta,
    on the random-effect standard deviations (half-normal by default) and correlations
    (LKJ), and on the residual-error standard deviations; non-centred random effects
    ``eta_i = L z_i`` with ``z_i ~ N(0, I)``, all subjects at once (``vmap``); the
    observations' likelihood per subject (so ``az.loo`` leaves out a subject).
    :func:`fit_bayes` runs it with :func:`bayes_ude.inference.run_nuts`.

SG-MCMC over subjects
    For large populations, minibatches of subjects: the random effects are integrated out
    per subject (the FOCEI/Laplace marginal likelihood of the maximum-likelihood layer,
    with the EBEs differentiated implicitly), and the minibatch log likelihood is scaled by
    ``N / batch``; SGLD, pSGLD or SGHMC move the population parameters (on the
    unconstrained scale of :meth:`PopulationModel.initial_vector`, priors with their
    Jacobians).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
from numpyro.distributions.transforms import biject_to

from .._batching import batch_map, resolve_devices
from .._compile import compiler_options, filter_jit
from ._estimate import SAMPLERS
from ._model import PopulationModel, _chol_to_vector

__all__ = ["BayesianFitResult", "Priors", "fit_bayes", "numpyro_model", "subject_log_density"]

_LOG_2PI = float(np.log(2.0 * np.pi))


# ------------------------------------------------------------------------------ priors
@dataclasses.dataclass(frozen=True)
class Priors:
    """Priors of a Bayesian population fit (NumPyro distributions; any left out get the
    defaults below).

    Parameters
    ----------
    theta : ``{name: distribution}``. Defaults: for a name with an ``l2`` penalty in the
        model, ``Normal(0, 1/sqrt(2 l2))`` on every entry (the penalty's prior); otherwise
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
            unknown = [k for k in self.omega_sd if k not in model.eta_names]
            if unknown:
                raise ValueError(f"omega_sd priors for unknown random effects {unknown}; "
                                 f"the model's are {list(model.eta_names)}")
        if not self.omega_corr > 0:
            raise ValueError(f"omega_corr (LKJ concentration) must be > 0, got "
                             f"{self.omega_corr}")

    def theta_dist(self, model: PopulationModel, name: str) -> dist.Distribution:
        init = np.asarray(model.theta[name], float)
        if name in self.theta:
            d = self.theta[name]
        elif name in model.l2:
            d = dist.Normal(0.0, 1.0 / math.sqrt(2.0 * model.l2[name]))
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


def _blocks(model: PopulationModel) -> list[list[int]]:
    """Index blocks of omega (singletons for the diagonal)."""
    om = model.omega
    q = model.n_eta
    if om.structure == "diagonal":
        return [[i] for i in range(q)]
    if om.structure == "full":
        return [list(range(q))]
    blocks = [[om.names.index(n) for n in b] for b in om.structure]
    used = {i for b in blocks for i in b}
    return blocks + [[i] for i in range(q) if i not in used]


# ----------------------------------------------------------------------- NumPyro model
def numpyro_model(model: PopulationModel, population, priors: Priors | None = None, *,
                  devices=None):
    """The population model as a NumPyro model (a function of no arguments).

    Sites: one per theta name; ``omega_sd`` (one per random effect, in the model's order)
    and ``omega_corr_<k>`` (Cholesky factor of each non-diagonal block's correlation),
    with the (co)variances as deterministic sites named as in
    :meth:`PopulationModel.parameter_names` (``omega_<eta>``); one per sigma name; ``eta_z`` (subject x random effect, standard normal) with
    ``eta = z L'`` and the individual parameters ``<name>_i`` as deterministic sites;
    ``y``, the observations on the error models' scale (``log DV`` for the exponential
    model; padding masked), one event per subject.

    ``devices`` (as in :func:`bayes_ude.nlme.fit`; default one device on a CPU, every
    local GPU): the subjects' predictions, the costly part of the log density and its
    gradient, are split evenly over them (:func:`bayes_ude._batching.batch_map`) and
    gathered for the observation site. Given explicitly on a CPU (even ``devices=1``), the
    subjects run in blocks of a fixed size inside a loop (``isolate``), and the log density
    and its gradient are the same to the last bit on 1, 2 or 4 devices, and so are the NUTS
    draws; that program costs about twice the default single-device one per gradient
    (1,000 subjects: 1.7 against 1.0 ms), which the default (``None``) runs instead.
    """
    priors = Priors() if priors is None else priors
    priors.check(model)
    model = model.specialised(population)
    blocks = _blocks(model)
    q = model.n_eta
    n_subjects = population.n_subjects
    mask = jnp.asarray(population.obs_mask)
    # devices given on a CPU: the program that gives the same draws on any number of
    # devices (isolate: subjects in blocks of a fixed size in a loop); by default the
    # single vectorised block, twice as fast per gradient (see batch_map)
    isolate = devices is not None and jax.default_backend() == "cpu"
    devices = tuple(resolve_devices(devices))

    def subject(item, shared):
        eta_i, s = item
        theta, sigma = shared
        ind = model.individual_parameters(theta, eta_i, s)
        scalars = {k: v for k, v in ind.items() if jnp.shape(v) == ()}
        return scalars, model.residual(model.predict(theta, eta_i, s), sigma, s)

    def fn():
        theta = {k: numpyro.sample(k, priors.theta_dist(model, k)) for k in model.theta}
        sds = numpyro.sample("omega_sd", _stacked([priors.omega_sd_dist(model, n)
                                                   for n in model.eta_names]))
        chol = jnp.diag(sds)
        for k, block in enumerate(blocks):
            if len(block) > 1:
                corr = numpyro.sample(f"omega_corr_{k}",
                                      dist.LKJCholesky(len(block), priors.omega_corr))
                idx = np.asarray(block)
                chol = chol.at[np.ix_(idx, idx)].set(sds[idx, None] * corr)
        omega = chol @ chol.T
        for name, r, c in zip(model.omega.element_names(), *model.omega.free, strict=True):
            numpyro.deterministic(name, omega[r, c])
        sigma = {k: numpyro.sample(k, priors.sigma_dist(model, k)) for k in model.sigma_names}
        with numpyro.plate("subject", n_subjects):
            z = numpyro.sample("eta_z", dist.Normal(0.0, 1.0).expand([q]).to_event(1))
        eta = numpyro.deterministic("eta", z @ chol.T)
        ind, (y, f_t, r) = batch_map(subject, (eta, population), (theta, sigma),
                                     block="auto" if isolate else None, isolate=isolate,
                                     devices=devices)
        for name, value in ind.items():
            numpyro.deterministic(f"{name}_i", value)
        # padding must not reach the density (nor its gradient) through NaNs
        y = jnp.where(mask, y, 0.0)
        f_t = jnp.where(mask, f_t, 0.0)
        sd = jnp.sqrt(jnp.where(mask, r, 1.0))
        with numpyro.plate("subject", n_subjects):
            numpyro.sample("y", dist.Normal(f_t, sd).mask(mask).to_event(1), obs=y)

    return fn


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


def _init_near(values: Mapping[str, np.ndarray], radius: float = 0.2):
    """NumPyro init strategy: the given values, each chain moved by ``U(-radius, radius)``
    on the unconstrained scale (so that chains start apart); other sites uniform."""
    return functools.partial(_init_near_site, values=values, radius=radius)


def _init_near_site(site=None, values=None, radius=0.2):
    from numpyro.infer import init_to_uniform

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


def _initial_values(model: PopulationModel, population, init) -> dict:
    """Initial site values from the model's initial values or a maximum-likelihood fit."""
    from ._estimate import FitResult

    # unpack compiled once (run eagerly it compiles each of its ~25 primitives)
    if isinstance(init, FitResult):
        theta, omega, sigma = jax.jit(init.model.unpack)(jnp.asarray(init.u))
        eta = np.asarray(init.eta.to_numpy())
    else:
        u = model.initial_vector()
        if init is not None:
            u = model.natural_to_vector(dict(init), u)
        theta, omega, sigma = jax.jit(model.unpack)(jnp.asarray(u))
        eta = np.zeros((population.n_subjects, model.n_eta))
    omega = np.asarray(omega)
    sds = np.sqrt(np.diag(omega))
    values = {k: np.asarray(v) for k, v in theta.items()}
    values["omega_sd"] = sds
    corr_full = omega / np.outer(sds, sds)
    chol = np.diag(sds)
    for k, block in enumerate(_blocks(model)):
        if len(block) > 1:
            lc = np.linalg.cholesky(corr_full[np.ix_(block, block)])
            values[f"omega_corr_{k}"] = lc
            chol[np.ix_(block, block)] = sds[block, None] * lc
    values.update({k: np.asarray(float(v)) for k, v in sigma.items()})
    values["eta_z"] = np.linalg.solve(chol, eta.T).T
    return values


# ------------------------------------------------------------------------------ result
@dataclasses.dataclass(eq=False)
class BayesianFitResult:
    """The result of a Bayesian population fit (:func:`fit_bayes`, or
    :func:`bayes_ude.nlme.fit` with ``method="nuts"`` or an SG-MCMC method).

    Attributes
    ----------
    method : ``"nuts"``, ``"sgld"``, ``"psgld"`` or ``"sghmc"``.
    idata : ArviZ InferenceData: ``posterior`` (sampled sites; for NUTS also ``eta`` and
        the individual parameters with a ``subject`` dimension), ``sample_stats``,
        ``log_likelihood`` (NUTS: per subject), ``posterior_predictive`` (``dv``:
        replicate observations of the same subjects, in DV units), ``observed_data``;
        ``attrs`` has timings, and ``partial = 1`` when Ctrl-C cut the sampling short or,
        once the draws existed, skipped optional groups (named in ``attrs["skipped"]``;
        an interrupt after sampling never loses the draws).
    draws : natural-scale parameter draws, ``{name: (chain, draw)}``, names as in
        :meth:`PopulationModel.parameter_names` (theta, ``omega_*`` (co)variances,
        sigma).
    estimates : posterior medians of ``draws`` (a Series, like ``FitResult.estimates``).
    u : a central unconstrained parameter vector (posterior medians of theta and sigma,
        posterior mean of omega) for population predictions and the VPC's correction.
    u_draws : every draw as an unconstrained vector ``(chain, draw, p)``.
    """

    method: str
    model: PopulationModel
    population: object
    idata: object
    draws: dict
    u: np.ndarray
    u_draws: np.ndarray
    seconds: float
    priors: Priors

    # ---- views
    @property
    def estimates(self) -> pd.Series:
        return pd.Series({k: float(np.median(v)) for k, v in self.draws.items()})

    @property
    def theta(self) -> dict:
        return self.model._theta_from_vector(
            jnp.asarray([float(np.median(self.draws[n])) for n in
                         self.model.parameter_names()[:self.model.n_theta]]))

    @property
    def sigma(self) -> dict:
        return {k: float(np.median(self.draws[k])) for k in self.model.sigma_names}

    @property
    def eta(self) -> pd.DataFrame | None:
        """Posterior medians of the random effects (NUTS only), subject x random effect."""
        if "eta" not in self.idata.posterior:
            return None
        med = np.median(np.asarray(self.idata.posterior["eta"]), axis=(0, 1))
        return pd.DataFrame(med, columns=list(self.model.eta_names),
                            index=pd.Index(self.population.ids, name="ID"))

    @property
    def num_divergent(self) -> int:
        return int(self.idata.attrs.get("num_divergent", 0))

    def table(self, ci: float = 0.9) -> pd.DataFrame:
        """Posterior median, equal-tailed ``ci`` credible interval, R-hat and bulk/tail
        ESS per natural-scale parameter."""
        import arviz as az

        lo, hi = (1 - ci) / 2, 1 - (1 - ci) / 2
        rows = {}
        for name, x in self.draws.items():
            x = np.asarray(x, float)
            rows[name] = {
                "median": np.median(x), f"q{100 * lo:g}": np.quantile(x, lo),
                f"q{100 * hi:g}": np.quantile(x, hi), "sd": np.std(x),
                "r_hat": float(az.rhat(x)) if x.shape[0] > 1 else np.nan,
                "ess_bulk": float(az.ess(x, method="bulk")),
                "ess_tail": float(az.ess(x, method="tail"))}
        return pd.DataFrame.from_dict(rows, orient="index")

    def summary(self) -> dict:
        """JSON-ready summary: method, timings, the table, divergences."""
        table = self.table()
        return {"method": self.method, "n_subjects": self.population.n_subjects,
                "n_obs": self.population.n_obs, "seconds": self.seconds,
                "num_divergent": self.num_divergent,
                "max_r_hat": float(np.nanmax(table["r_hat"])) if len(table) else float("nan"),
                "min_ess_bulk": float(table["ess_bulk"].min()),
                "parameters": {k: {c: float(v) for c, v in row.items()}
                               for k, row in table.iterrows()}}

    def to_netcdf(self, path) -> None:
        self.idata.to_netcdf(str(path))

    def posterior_simulations(self, n: int = 500, key=None, population=None) -> np.ndarray:
        """Observations of *new* subjects ``(n, subjects, records)`` on ``population``'s
        design (default: the fitted data's), each replicate from a different posterior
        draw of (theta, omega, sigma): the posterior predictive for a VPC."""
        key = jax.random.key(0) if key is None else key
        population = self.population if population is None else population
        us = _draw_vectors(self, n, jax.random.fold_in(key, 1))
        return np.asarray(_simulate_draws(self.model, us, population, key))

    def vpc(self, n_sim: int = 500, key=None, **kwargs) -> pd.DataFrame:
        """Visual predictive check from the posterior predictive (new subjects from
        posterior draws; see :func:`bayes_ude.nlme.vpc` for the options)."""
        from ._diagnostics import vpc

        return vpc(self, sims=self.posterior_simulations(n_sim, key), **kwargs)

    def plot_vpc(self, n_sim: int = 500, key=None, ax=None, **kwargs):
        from ._diagnostics import plot_vpc

        table = self.vpc(n_sim, key, **kwargs)
        return plot_vpc(self, table=table, ax=ax,
                        title="Posterior predictive check (prediction-corrected VPC)")

    def log_predictive_density(self, population, n_draws: int = 200, key=None,
                               method: str = "laplace") -> np.ndarray:
        """Per-subject log predictive density of (held-out) subjects,
        ``log E_posterior[p(y_i | theta, omega, sigma)]`` with each subject's random
        effects integrated out by the Laplace approximation, over ``n_draws`` posterior
        draws."""
        key = jax.random.key(0) if key is None else key
        us = _draw_vectors(self, n_draws, key)
        self.model.check(population)
        model = self.model.specialised(population)
        per = np.asarray(_subject_lpd(model, method, us, population))  # (draws, subjects)
        return np.asarray(jax.scipy.special.logsumexp(per, axis=0) - np.log(per.shape[0]))

    def __repr__(self) -> str:
        with pd.option_context("display.float_format", "{:.4g}".format, "display.width", 120):
            a = self.idata.attrs
            head = (f"Bayesian NLME fit ({self.method.upper()}): "
                    f"{self.population.n_subjects} subjects, {self.population.n_obs} "
                    f"observations; {self.seconds:.1f} s"
                    + (f", {a.get('num_divergent', 0)} divergences" if self.method == "nuts"
                       else "") + "\n")
            return head + self.table().to_string()


def _draw_vectors(result: BayesianFitResult, n: int, key) -> jax.Array:
    """``n`` posterior draws (chains pooled, drawn without replacement where possible)
    as unconstrained vectors."""
    flat = np.reshape(result.u_draws, (-1, result.u_draws.shape[-1]))
    idx = jax.random.choice(key, flat.shape[0], (min(n, flat.shape[0]),), replace=False)
    if n > flat.shape[0]:
        idx = jax.random.choice(key, flat.shape[0], (n,), replace=True)
    return jnp.asarray(flat[np.asarray(idx)])


@filter_jit
def _simulate_draws(model, us, population, key):
    from ._diagnostics import _sample_y

    keys = jax.random.split(key, (us.shape[0], population.obs_time.shape[0]))

    def one(u, ks):
        theta, omega, sigma = model.unpack(u)
        return jax.vmap(lambda s, k: _sample_y(model, theta, omega, sigma, s, k))(
            population, ks)

    return jax.lax.map(lambda a: one(*a), (us, keys))


@filter_jit
def _subject_lpd(model, method, us, population):
    from ._estimate import _Subject

    n_obs = jnp.sum(population.obs_mask, axis=1)

    def one(u):
        theta, omega, sigma = model.unpack(u)
        m2 = jax.vmap(lambda s: _Subject(model, method, theta, omega, sigma, s).minus2ll(
            jnp.zeros(model.n_eta))[0])(population)
        return -0.5 * (m2 + n_obs * _LOG_2PI)

    return jax.lax.map(one, us)


def subject_log_density(model: PopulationModel, u, population, method: str = "laplace"):
    """Per-subject ``log p(y_i | u)`` with the random effects integrated out (Laplace)."""
    model.check(population)
    model = model.specialised(population)
    return np.asarray(_subject_lpd(model, method, jnp.asarray(u)[None], population))[0]


def _natural_draws(model: PopulationModel, u_draws: np.ndarray) -> dict:
    nat = np.asarray(jax.jit(jax.vmap(jax.vmap(model.natural)),
                             compiler_options=compiler_options())(jnp.asarray(u_draws)))
    return {name: nat[..., i] for i, name in enumerate(model.parameter_names())}


def _u_from_sites(model: PopulationModel, samples: Mapping[str, np.ndarray]) -> np.ndarray:
    """Unconstrained vectors ``(chain, draw, p)`` from NUTS site draws."""
    lead = np.shape(samples["omega_sd"])[:2]
    th = np.concatenate([np.reshape(samples[k], (*lead, -1)) for k in model.theta], axis=-1)
    sds = np.asarray(samples["omega_sd"])
    chol = sds[..., :, None] * np.eye(model.n_eta)
    for k, block in enumerate(_blocks(model)):
        if len(block) > 1:
            idx = np.ix_(block, block)
            chol[(..., *idx)] = sds[..., block, None] * np.asarray(samples[f"omega_corr_{k}"])
    rows, cols = model.omega.free
    om = chol[..., rows, cols]
    om = np.where(rows == cols, np.log(np.maximum(om, 1e-300)), om)
    sg = np.log(np.stack([np.asarray(samples[k]) for k in model.sigma_names], axis=-1))
    return np.concatenate([th, om, sg], axis=-1)


def _central_u(model: PopulationModel, u_draws: np.ndarray) -> np.ndarray:
    """Posterior medians of theta and sigma, posterior mean of omega (positive definite)."""
    flat = np.reshape(u_draws, (-1, u_draws.shape[-1]))
    n_th = model.n_theta
    n_om = len(model.omega.element_names())
    omegas = np.asarray(jax.jit(jax.vmap(lambda u: model.unpack(u)[1]),
                                compiler_options=compiler_options())(jnp.asarray(flat)))
    om = _chol_to_vector(model.omega, omegas.mean(axis=0))
    med = np.median(flat, axis=0)
    return np.concatenate([med[:n_th], om, med[n_th + n_om:]])


# ---------------------------------------------------------------------------- fitting
def fit_bayes(model: PopulationModel, population, method: str = "nuts", *,
              priors: Priors | None = None, init=None, key=None, progress: bool = True,
              num_warmup: int = 1000, num_samples: int = 1000, num_chains: int = 4,
              target_accept: float = 0.8, max_tree_depth: int = 10,
              dense_mass: bool = False, metric: str = "adapt", backend: str = "numpyro",
              batch_size: int | None = None,
              num_steps: int = 5000, burn_in: int | None = None, step_size=None,
              thin: int = 1, marginal: str = "focei",
              control_variates: bool = True, devices=None) -> BayesianFitResult:
    """Bayesian fit of a population model (usually through :func:`bayes_ude.nlme.fit`).

    Parameters
    ----------
    method : ``"nuts"`` (all subjects' random effects sampled jointly with the population
        parameters), or ``"sgld"``, ``"psgld"``, ``"sghmc"`` (minibatches of subjects,
        random effects integrated out; diagonal omega only).
    priors : :class:`Priors` (defaults described there).
    init : where chains start: ``None`` (the model's initial values, chains jittered by
        ±0.2 on the unconstrained scale), a mapping of natural-scale values overriding
        some of them, or a maximum-likelihood :class:`FitResult` (its estimates and
        EBEs, jittered the same way).
    key : PRNG key (default ``jax.random.key(0)``).
    num_warmup, num_samples, num_chains, target_accept, max_tree_depth, dense_mass,
        backend : NUTS settings (see :func:`bayes_ude.inference.run_nuts`).
    metric : NUTS metric: ``"adapt"`` (default: estimated during warmup, diagonal or
        ``dense_mass``) or ``"laplace"``: the inverse Hessian of the log joint at the
        starting point (``init``, best a maximum-likelihood fit: its estimates and EBEs),
        fixed, with warmup adapting only the step size
        (:func:`bayes_ude.inference.laplace_inverse_mass`). For networks inside the
        dynamics, whose posteriors are too ill-conditioned for the warmup's estimate
        (docs/pkpd.md: the Michaelis-Menten network mixes with it and not without).
    batch_size, num_steps, burn_in, step_size, thin : SG-MCMC settings: subjects per
        minibatch (default ``min(N, 64)``), steps per chain, discarded steps (default half),
        step size in whitened coordinates (default 0.1 with control variates, else
        ``min(0.05, 0.2 batch/N)``). The chains move in coordinates whitened by the
        maximum-likelihood covariance (from ``init`` when it is a FitResult with a
        covariance step, else from a fit run first), so the posterior there is close to
        ``N(0, I)``.
    marginal : SG-MCMC subject likelihood: ``"focei"`` (default) or ``"laplace"``.
    control_variates : SGLD-CV: subtract each subject's gradient at the
        maximum-likelihood point from its minibatch term and add their sum back (same
        mean, far smaller minibatch noise near the mode; default on).
    devices : where the subjects are computed (as in :func:`bayes_ude.nlme.fit`; default
        every local GPU, or one CPU device). NUTS: each chain's log density has its
        subjects split over them (and the chains all run on the default device, one after
        the other on a CPU, vectorised elsewhere); SG-MCMC: each minibatch's subjects and
        the control variates' gradients are split over them. Given explicitly, the draws
        are the same on 1, 2 or 4 devices (same key); the default on a CPU runs a faster
        single-device program whose draws differ in the last bits (NUTS: ~2x per gradient,
        see :func:`numpyro_model`).
    """
    if method not in SAMPLERS:
        raise ValueError(f"Bayesian method must be one of {SAMPLERS}, got {method!r}")
    if metric not in ("adapt", "laplace"):
        raise ValueError(f"metric must be 'adapt' or 'laplace', got {metric!r}")
    if metric == "laplace" and (method != "nuts" or dense_mass):
        raise ValueError("metric='laplace' is a NUTS metric (method='nuts', without "
                         "dense_mass)")
    priors = Priors() if priors is None else priors
    priors.check(model)
    model.check(population)
    model = model.specialised(population)
    key = jax.random.key(0) if key is None else key
    resolve_devices(devices)  # a bad value is an error before any work
    start = time.perf_counter()
    from ..inference._interrupt import interrupt_guard

    # Once the sampler has its draws, a Ctrl-C is deferred until the result is built (the
    # posterior predictive, optional, is skipped): the draws are never lost
    with interrupt_guard() as guard:
        if method == "nuts":
            idata, u_draws = _fit_nuts(model, population, priors, init, key, progress,
                                       num_warmup, num_samples, num_chains, target_accept,
                                       max_tree_depth, backend, dense_mass, metric, guard,
                                       devices)
        else:
            idata, u_draws = _fit_sgmcmc(model, population, priors, init, key, progress,
                                         method, batch_size, num_steps, burn_in, step_size,
                                         thin, num_chains, marginal, control_variates,
                                         devices)
        result = BayesianFitResult(method=method, model=model, population=population,
                                   idata=idata, draws=_natural_draws(model, u_draws),
                                   u=_central_u(model, u_draws), u_draws=u_draws,
                                   seconds=time.perf_counter() - start, priors=priors)
    return result


def _fit_nuts(model, population, priors, init, key, progress, num_warmup, num_samples,
              num_chains, target_accept, max_tree_depth, backend, dense_mass=False,
              metric="adapt", guard=None, devices=None):
    from ..inference import laplace_inverse_mass, run_nuts

    # as given: devices=None and an explicit choice are different programs (see there)
    fn = numpyro_model(model, population, priors, devices=devices)
    devices = resolve_devices(devices)
    values = _initial_values(model, population, init)
    ids = list(population.ids)
    n_sub = population.n_subjects
    dims = {"eta": ["subject", "eta_name"], "eta_z": ["subject", "eta_name"],
            "omega_sd": ["eta_name"], "y": ["subject", "record"]}
    ind_names = [k for k in _individual_names(model, population)]
    dims.update({f"{k}_i": ["subject"] for k in ind_names})
    coords = {"subject": ids, "eta_name": list(model.eta_names),
              "record": np.arange(population.obs_time.shape[1])}
    idata = run_nuts(fn, num_warmup=num_warmup, num_samples=num_samples,
                     num_chains=num_chains, key=key, target_accept=target_accept,
                     max_tree_depth=max_tree_depth, dense_mass=dense_mass,
                     inverse_mass_matrix=(laplace_inverse_mass(fn, values=values)
                                          if metric == "laplace" else None),
                     init=_init_near(values), progress=progress, posterior_predictive=False,
                     dims=dims, coords=coords, backend=backend,
                     # subjects split over several devices: the chains stay together
                     spread_chains=len(devices) == 1)
    post = {k: np.asarray(v) for k, v in idata.posterior.items()}
    u_draws = _u_from_sites(model, post)
    mask = np.asarray(population.obs_mask)

    def replicate():
        # posterior predictive: replicate observations of the same subjects, in DV units
        eta = jnp.asarray(post["eta"])
        flat_u = jnp.reshape(jnp.asarray(u_draws), (-1, u_draws.shape[-1]))
        flat_eta = jnp.reshape(eta, (-1, n_sub, model.n_eta))
        dv = np.asarray(_replicate(model, flat_u, flat_eta, population,
                                   jax.random.fold_in(key, 7)))
        return dv.reshape((*u_draws.shape[:2], *dv.shape[1:]))

    import xarray as xr

    # optional: a Ctrl-C here (or earlier, in run_nuts's assembly) skips it
    dv, done = (replicate(), True) if guard is None else guard.optional(replicate)
    if done:
        idata.add_groups(posterior_predictive=xr.Dataset(
            {"dv": (("chain", "draw", "subject", "record"), np.where(mask, dv, np.nan))},
            coords={"chain": idata.posterior.chain, "draw": idata.posterior.draw,
                    "subject": ids, "record": coords["record"]}))
    else:
        guard.mark(idata.attrs, ["posterior_predictive"], stacklevel=3)
    idata.observed_data["dv"] = (("subject", "record"),
                                 np.where(mask, np.asarray(population.obs_dv), np.nan))
    return idata, u_draws


def _individual_names(model, population):
    sub = jax.tree.map(lambda x: x[0], population)
    out = jax.eval_shape(lambda: model.individual_parameters(
        {k: jnp.asarray(v) for k, v in model.theta.items()}, jnp.zeros(model.n_eta), sub))
    return [k for k, v in out.items() if v.shape == ()]


def _replicate(model, us, etas, population, key):
    return _replicate_impl(model, us, etas, population, key)


@filter_jit
def _replicate_impl(model, us, etas, population, key):
    from ._diagnostics import _sample_obs

    keys = jax.random.split(key, us.shape[0])

    def one(u, eta, k):
        theta, _, sigma = model.unpack(u)
        ks = jax.random.split(k, population.obs_time.shape[0])

        def subj(s, e, kk):
            return _sample_obs(model, model.predict(theta, e, s), sigma, s, kk)

        return jax.vmap(subj)(population, eta, ks)

    return jax.lax.map(lambda a: one(*a), (us, etas, keys))


# ---------------------------------------------------------------------------- SG-MCMC
def _subject_gradients(loglik, p, population, devices):
    return _subject_gradients_jit(loglik, p, population, tuple(resolve_devices(devices)))


@filter_jit
def _subject_gradients_jit(loglik, p, population, devices):
    # in blocks on a CPU (each subject's inner Newton loop), over the devices
    return batch_map(lambda s, _: jax.grad(loglik)(jnp.zeros(p), s), population,
                     devices=devices)


def _fit_sgmcmc(model, population, priors, init, key, progress, method, batch_size,
                num_steps, burn_in, step_size, thin, num_chains, marginal, control_variates,
                devices=None):
    """SG-MCMC on the population parameters, subjects in minibatches.

    The chains move in whitened coordinates ``v``: ``u = u_ml + C v`` with ``C C'`` the
    maximum-likelihood covariance of ``u`` (a constant preconditioner, as in Ahn et al.'s
    SGFS), so that one step size suits every model: the posterior is close to
    ``N(0, I)`` in ``v``.
    """
    from .. import inference
    from ._estimate import FitResult, _Subject, fit

    if model.omega.structure != "diagonal":
        raise ValueError("SG-MCMC population fits support a diagonal omega only; use "
                         "method='nuts' for correlated random effects")
    if marginal not in ("focei", "laplace"):
        raise ValueError(f"marginal must be 'focei' or 'laplace', got {marginal!r}")
    n = population.n_subjects
    # minibatches split over the devices when they are given (the same draws on 1, 2 or 4)
    # or several by default (GPUs); on one CPU device by default, BlackJAX's estimator
    sharded = tuple(resolve_devices(devices))
    if devices is None and len(sharded) == 1:
        sharded = None
    batch_size = min(n, 64) if batch_size is None else batch_size
    burn_in = num_steps // 2 if burn_in is None else burn_in
    if step_size is None:
        # Langevin discretisation inflates variances by ~eps/4; without control variates
        # the minibatch noise adds ~eps N / (4 b)
        step_size = 0.1 if control_variates else min(0.05, 0.2 * batch_size / n)
    ml = init
    if not (isinstance(ml, FitResult) and ml.covariance_unconstrained is not None):
        ml = fit(model, population, marginal, init=init if isinstance(init, Mapping) else None,
                 progress=progress, devices=devices)
        if ml.covariance_unconstrained is None:
            raise RuntimeError("SG-MCMC needs the maximum-likelihood covariance as its "
                               "preconditioner, and the covariance step failed (see the "
                               "warning); check the model, or use method='nuts'")
    center = jnp.asarray(ml.u)
    chol = jnp.asarray(np.linalg.cholesky(ml.covariance_unconstrained))
    n_th = model.n_theta
    q = model.n_eta
    theta_dists = {k: priors.theta_dist(model, k) for k in model.theta}
    sd_dists = [priors.omega_sd_dist(model, nme) for nme in model.eta_names]
    sigma_dists = [priors.sigma_dist(model, k) for k in model.sigma_names]

    def to_u(v):
        return center + chol @ v

    def logprior(v):
        u = to_u(v)
        theta, _, _ = model.unpack(u)
        lp = sum(jnp.sum(theta_dists[k].log_prob(theta[k])) for k in model.theta)
        log_sd = u[n_th:n_th + q]
        log_sig = u[n_th + q:]
        # densities of the SDs, with the Jacobian of the log transform (the linear map
        # v -> u has a constant Jacobian)
        lp = lp + sum(d.log_prob(jnp.exp(x)) + x for d, x in zip(sd_dists, log_sd,
                                                                   strict=True))
        return lp + sum(d.log_prob(jnp.exp(x)) + x for d, x in zip(sigma_dists, log_sig,
                                                                    strict=True))

    def loglik(v, subject):
        theta, omega, sigma = model.unpack(to_u(v))
        m2, _ = _Subject(model, marginal, theta, omega, sigma, subject).minus2ll(
            jnp.zeros(q))
        return -0.5 * (m2 + jnp.sum(subject.obs_mask) * _LOG_2PI)

    pop = jax.tree.map(jnp.asarray, population)
    p = center.shape[0]
    if control_variates:
        # SGLD-CV (Baker et al. 2019): each subject's log likelihood minus its tangent at
        # the ML point v = 0, and the sum of those tangents added back exactly, so the
        # minibatch estimate keeps its mean and loses most of its variance near the mode
        g = _subject_gradients(loglik, p, pop, devices)  # (N, p)
        g_total = jnp.sum(g, axis=0)

        def prior_term(v):
            return logprior(v) + g_total @ v

        def item_term(v, item):
            subject, g_i = item
            return loglik(v, subject) - g_i @ v

        grad = inference.grad_estimator(prior_term, item_term, n, devices=sharded)
        data = (pop, g)
    else:
        grad = inference.grad_estimator(logprior, loglik, n, devices=sharded)
        data = pop
    kernel = {"sgld": inference.sgld, "psgld": inference.psgld,
              "sghmc": inference.sghmc}[method](grad)
    idata = inference.run_sgmcmc(
        kernel, jnp.zeros(p), data,
        num_steps=num_steps, batch_size=batch_size, step_size=step_size, burn_in=burn_in,
        thin=thin, num_chains=num_chains, init_spread=1.0, key=key, progress=progress,
        name="v")
    v = np.asarray(idata.posterior["v"])
    u_draws = np.asarray(center) + v @ np.asarray(chol).T
    nat = _natural_draws(model, u_draws)
    import xarray as xr

    # the posterior in named natural-scale parameters (the unconstrained draws are kept
    # in the result as ``u_draws``)
    idata.posterior = xr.Dataset(
        {k: (("chain", "draw"), x) for k, x in nat.items()},
        coords={"chain": idata.posterior.chain, "draw": idata.posterior.draw},
        attrs=dict(idata.posterior.attrs))
    idata.attrs.update({"step_size": float(step_size) if not callable(step_size) else -1.0,
                        "marginal": marginal, "control_variates": int(control_variates),
                        "preconditioner": "maximum-likelihood covariance"})
    return idata, u_draws
