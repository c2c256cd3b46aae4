"""The Bayesian result: posterior draws behind the :class:`PopulationFit` interface.

:class:`BayesianFitResult` is built by :mod:`._bayes` (NUTS, SG-MCMC); it reads the
posterior from ArviZ InferenceData, simulates new subjects from posterior draws for the
posterior predictive check, and averages the held-out predictive density over draws. The
interface and the maximum-likelihood result are in :mod:`._results`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .._compile import ONE_OFF, compiler_options, filter_jit
from . import _diagnostics, _plots, _vpc
from ._buckets import map_subjects, padding_report, subject_buckets
from ._likelihood import subject_log_densities
from ._model import PopulationModel, _chol_to_vector
from ._model_checks import data_or_design
from ._results import PopulationFit

if TYPE_CHECKING:
    # annotation only: the result never builds priors, and _priors imports NumPyro
    from ._priors import Priors

__all__ = ["BayesianFitResult", "central_u"]


@dataclasses.dataclass(eq=False)
class BayesianFitResult(PopulationFit):
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
    u : a central unconstrained parameter vector (posterior medians of theta's scalars and
        of sigma, posterior mean of omega; array entries of theta, a network's weights,
        from the one draw whose typical predictions are closest to their posterior
        median) for diagnostics, sdtab and the VPC's correction.
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
        """The plug-in theta of :attr:`u` (medians; a network's weights from one draw)."""
        return self.model._theta_from_vector(jnp.asarray(self.u[:self.model.n_theta]))

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

    def summary(self, table: pd.DataFrame | None = None) -> dict:
        """JSON-ready summary: method, timings, the table (default :meth:`table`'s; one
        already computed, e.g. with other intervals, is used as it is), divergences."""
        table = self.table() if table is None else table
        attrs = self.idata.attrs
        return {"method": self.method, "n_subjects": self.population.n_subjects,
                "n_obs": self.population.n_obs, **padding_report(self.population),
                "seconds": self.seconds, "num_divergent": self.num_divergent,
                **({"random_effects_centred": [n for n in attrs["centred"].split(",") if n],
                    "dense_mass": bool(attrs["dense_mass"])} if "centred" in attrs else {}),
                # R-hat needs two chains: NaN (null in JSON) with one
                "max_r_hat": (float(np.nanmax(table["r_hat"])) if table["r_hat"].notna().any()
                              else float("nan")),
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
        population = data_or_design(self, population)
        us = _draw_vectors(self, n, jax.random.fold_in(key, 1))
        # specialised to the design (its dose types), not to the fitted data
        return np.asarray(_simulate_draws(self.model.specialised(population), us, population,
                                          key, subject_buckets(population)))

    def simulate(self, n: int = 100, key=None, population=None) -> np.ndarray:
        """As :meth:`posterior_simulations`: each replicate from its own posterior draw."""
        return self.posterior_simulations(n, key, population)

    def vpc(self, n_sim: int = 500, key=None, **kwargs) -> pd.DataFrame:
        """Visual predictive check from the posterior predictive (new subjects from
        posterior draws; see :func:`bayes_ude.nlme.vpc` for the options)."""
        return _vpc.vpc(self, sims=self.posterior_simulations(n_sim, key), **kwargs)

    def plot_vpc(self, n_sim: int = 500, key=None, ax=None, **kwargs):
        table = self.vpc(n_sim, key, **kwargs)
        return _plots.plot_vpc(
            self, table=table, ax=ax,
            title="Posterior predictive check (prediction-corrected VPC)", **kwargs)

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
        # (draws, subjects)
        per = np.asarray(subject_log_densities(model, method, us, population,
                                               subject_buckets(population)))
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


@filter_jit(quick_below=ONE_OFF)
def _simulate_draws(model, us, population, key, buckets=None):
    keys = jax.random.split(key, (us.shape[0], population.obs_time.shape[0]))

    def subject(item, u):
        s, k = item
        theta, omega, sigma = model.unpack(u)
        return _diagnostics._sample_y(model, theta, omega, sigma, s, k)

    def one(u, ks):
        return map_subjects(subject, population, ks, u, buckets=buckets, obs_outputs=True,
                            block=None)

    return jax.lax.map(lambda a: one(*a), (us, keys))


def central_u(model: PopulationModel, u_draws: np.ndarray, population=None) -> np.ndarray:
    """The plug-in point of a posterior (diagnostics, sdtab, the VPC's prediction
    correction): posterior medians of the scalar theta entries and of sigma, posterior mean
    of omega (positive definite), and the array entries of theta (a network's weights)
    from one draw, :func:`_representative_draw`: weight by weight medians can describe a
    network no draw supports (two chains in mirrored modes of the same function give
    median weights near 0, and the covariate effect vanishes)."""
    flat = np.reshape(u_draws, (-1, u_draws.shape[-1]))
    n_th = model.n_theta
    n_om = len(model.omega.element_names())
    omegas = np.asarray(jax.jit(jax.vmap(lambda u: model.unpack_estimates(u)[1]),
                                compiler_options=compiler_options())(jnp.asarray(flat)))
    om = _chol_to_vector(model.omega, omegas.mean(axis=0))
    med = np.median(flat, axis=0)
    arrays = [k for k, v in model.theta.items() if np.ndim(v) > 0]
    if arrays and population is not None:
        draw = flat[_representative_draw(model, flat, population)]
        start = 0
        for k, v in model.theta.items():
            size = int(np.size(v))
            if k in arrays:
                med[start:start + size] = draw[start:start + size]
            start += size
    return np.concatenate([med[:n_th], om, med[n_th + n_om:]])


def _representative_draw(model, flat: np.ndarray, population, max_draws: int = 200) -> int:
    """The draw (row of ``flat``) whose typical predictions (random effects 0) are closest,
    in summed squared relative difference over the observations, to their pointwise
    posterior median; among up to ``max_draws`` evenly spaced draws."""
    idx = np.unique(np.linspace(0, flat.shape[0] - 1, min(max_draws, flat.shape[0])
                                ).astype(int))
    distance = np.asarray(_distance_to_median(model.specialised(population),
                                              jnp.asarray(flat[idx]), population))
    return int(idx[np.argmin(np.where(np.isfinite(distance), distance, np.inf))])


@filter_jit(quick_below=ONE_OFF)
def _distance_to_median(model, us, population):
    eta0 = jnp.zeros(model.n_eta)

    def typical(u):
        theta = model.unpack(u)[0]
        return jax.vmap(lambda s: model.predict(theta, eta0, s))(population)

    preds = jax.lax.map(typical, us)  # (draws, subjects, records)
    median = jnp.nanmedian(preds, axis=0)
    rel = (preds - median) / (jnp.abs(median) + 1e-12)
    return jnp.sum(jnp.where(population.obs_mask, rel**2, 0.0), axis=(1, 2))
