"""Example: a simulated population with a known, non-linear covariate model for clearance.

An example factory, not part of the modelling library: it sits above ``bayes_ude.nlme`` and
uses only its public API.

The DeepNLME check (does a covariate network recover how covariates shape clearance?)
needs data whose truth is known. :func:`simulate_covariate_population` draws subjects with

* ``WT`` — body weight (kg), log-normal around 75 kg;
* ``AGE`` — years, uniform on 20–85;
* ``EGFR`` — a renal marker (mL/min/1.73 m²), log-uniform over about 15–150 and lower
  with age;
* ``ALB`` — albumin (g/dL), drawn independently: it has **no** effect on anything;

and one-compartment oral kinetics (a single 200 mg dose, four samples per subject at
random times in four windows over 30 h, log-normal residual error) with

``CL = 5 (WT/70)^0.75 · R(EGFR) · exp(-0.006 (AGE - 50)) · exp(eta_cl)``,
``R(e) = 0.25 + 0.75 e^4 / (e^4 + 50^4)``

— allometric weight, a sigmoidal (Emax/Hill) renal effect from 25 % to 100 % of the
renal-intact clearance, a mild age effect — and ``ka = 1.2 exp(eta_ka)``, ``V = 50
exp(eta_v)`` without covariates. Concentrations are computed here with numpy (the closed
form of the model), not with the package's structural models, so the data are an
independent reference for it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from ..nlme import (
    Exponential,
    OneCompartmentOral,
    Population,
    PopulationModel,
    partial_dependence,
    population_predictions,
    read_nonmem,
    subject_log_density,
)

__all__ = ["CovariateTruth", "compare_covariate_models", "covariate_table",
           "simulate_covariate_population"]

COVARIATES = ("WT", "AGE", "EGFR", "ALB")


@dataclasses.dataclass(frozen=True)
class CovariateTruth:
    """The model the data of :func:`simulate_covariate_population` come from.

    Attributes
    ----------
    cl, ka, v : typical values (L/h, 1/h, L) at WT 70 kg, AGE 50, renal function intact.
    weight_exponent : allometric exponent of CL (0.75).
    age_slope : ``CL ∝ exp(-age_slope (AGE - 50))``.
    renal_floor, egfr50, hill : ``R(e) = floor + (1 - floor) e^h / (e^h + e50^h)``.
    omega_sd : between-subject SDs of ``eta_ka, eta_cl, eta_v`` (log scale).
    exp_sd : residual SD on the log scale (exponential error model).
    dose : the single oral dose (mg).
    irrelevant : the covariate with no effect.
    eta : the subjects' true random effects, a DataFrame (``eta_ka, eta_cl, eta_v``)
        indexed by ``ID``.
    """

    cl: float = 5.0
    ka: float = 1.2
    v: float = 50.0
    weight_exponent: float = 0.75
    age_slope: float = 0.006
    renal_floor: float = 0.25
    egfr50: float = 50.0
    hill: float = 4.0
    omega_sd: tuple[float, float, float] = (0.3, 0.2, 0.2)
    exp_sd: float = 0.15
    dose: float = 200.0
    irrelevant: str = "ALB"
    eta: pd.DataFrame | None = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def omega_cl(self) -> float:
        """The true variance of ``eta_cl``."""
        return self.omega_sd[1] ** 2

    def renal(self, egfr) -> np.ndarray:
        """The renal factor ``R(EGFR)`` (between ``renal_floor`` and 1)."""
        return np.asarray(self._renal(np, np.asarray(egfr, float)))

    def _renal(self, xp, egfr):
        e = egfr**self.hill
        return self.renal_floor + (1 - self.renal_floor) * e / (e + self.egfr50**self.hill)

    def _clearance(self, xp, wt, age, egfr):
        return (self.cl * (wt / 70.0) ** self.weight_exponent * self._renal(xp, egfr)
                * xp.exp(-self.age_slope * (age - 50.0)))

    def clearance(self, covariates: Mapping[str, np.ndarray] | pd.DataFrame) -> np.ndarray:
        """Typical clearance (``eta_cl = 0``) for covariate values (mapping or DataFrame
        with columns ``WT, AGE, EGFR``; others are ignored)."""
        return np.asarray(self._clearance(np, *(np.asarray(covariates[c], float)
                                                 for c in ("WT", "AGE", "EGFR"))))

    def population_model(self):
        """The true model as a :class:`PopulationModel` with the true parameters as its
        initial values (``tka, tv`` log typical values; CL from :meth:`clearance`), for
        reference quantities such as the held-out log predictive density at the truth."""

        def individual(theta, eta, cov):
            cl = self._clearance(jnp, cov["WT"], cov["AGE"], cov["EGFR"])
            return {"ka": jnp.exp(theta["tka"] + eta["eta_ka"]),
                    "cl": cl * jnp.exp(eta["eta_cl"]),
                    "v": jnp.exp(theta["tv"] + eta["eta_v"])}

        sd = self.omega_sd
        return PopulationModel(
            OneCompartmentOral(), individual,
            theta={"tka": np.log(self.ka), "tv": np.log(self.v)},
            omega={"eta_ka": sd[0] ** 2, "eta_cl": sd[1] ** 2, "eta_v": sd[2] ** 2},
            sigma={"exp_sd": self.exp_sd}, error=Exponential(), covariates=COVARIATES[:3])

    def partial_dependence(self, population: Population, covariate: str,
                           grid: np.ndarray) -> np.ndarray:
        """The true partial dependence of typical CL on ``covariate``: for each grid
        value, the mean over ``population``'s subjects of CL with that covariate set to
        the value (the others as they are)."""
        table = covariate_table(population)
        if covariate not in table.columns:
            raise ValueError(f"unknown covariate {covariate!r}; the data have "
                             f"{list(table.columns)}")
        out = []
        for g in np.asarray(grid, float):
            out.append(self.clearance(table.assign(**{covariate: g})).mean())
        return np.asarray(out)

    def population_predictions(self, population: Population) -> np.ndarray:
        """Typical-subject concentrations (all ``eta = 0``, covariates as observed) at
        every observation record, ``(subjects, records)`` (padding included), by the
        closed form of the one-compartment oral model (superposition of doses)."""
        table = covariate_table(population)
        cl = self.clearance(table)[:, None, None]
        k = cl / self.v
        ka = self.ka
        t = np.asarray(population.obs_time)[:, :, None]
        td = np.asarray(population.dose_time)[:, None, :]
        amt = np.where(np.asarray(population.dose_mask), np.asarray(population.dose_amt),
                       0.0)[:, None, :]
        tau = t - td
        c = amt * ka / (self.v * (ka - k)) * (np.exp(-k * np.maximum(tau, 0.0))
                                               - np.exp(-ka * np.maximum(tau, 0.0)))
        return np.sum(np.where(tau > 0, c, 0.0), axis=2)


def covariate_table(population: Population) -> pd.DataFrame:
    """Baseline covariates, one row per subject (index ``ID``)."""
    return pd.DataFrame(np.asarray(population.cov_baseline),
                        columns=list(population.covariate_names),
                        index=pd.Index(population.ids, name="ID"))


# Sampling windows (h after the dose): one sample drawn uniformly in each.
_WINDOWS = ((0.5, 1.5), (2.0, 6.0), (8.0, 14.0), (20.0, 30.0))


def simulate_covariate_population(n_subjects: int, key: jax.Array | None = None,
                                  truth: CovariateTruth | None = None,
                                  first_id: int = 1) -> tuple[Population, CovariateTruth]:
    """Simulate ``n_subjects`` from :class:`CovariateTruth` (see the module docstring).

    Parameters
    ----------
    n_subjects : number of subjects (≥ 1).
    key : PRNG key (default ``jax.random.key(0)``); the same key gives the same data.
        Use different keys (e.g. ``jax.random.key(1)``) for held-out subjects.
    truth : the parameters (default :class:`CovariateTruth`).
    first_id : the ``ID`` of the first subject (IDs are consecutive).

    Returns
    -------
    (population, truth) : the data as a :class:`Population` (covariates ``WT, AGE, EGFR,
    ALB``) and the truth, with the subjects' true random effects in ``truth.eta``.
    """
    if not isinstance(n_subjects, int | np.integer) or n_subjects < 1:
        raise ValueError(f"n_subjects must be a positive integer, got {n_subjects!r}")
    key = jax.random.key(0) if key is None else key
    truth = CovariateTruth() if truth is None else truth
    n = int(n_subjects)
    k_wt, k_age, k_egfr, k_alb, k_eta, k_t, k_eps = jax.random.split(key, 7)
    wt = np.clip(75.0 * np.exp(0.2 * np.asarray(jax.random.normal(k_wt, (n,)))), 40.0, 150.0)
    age = np.asarray(jax.random.uniform(k_age, (n,), minval=20.0, maxval=85.0))
    # a renal marker spread evenly on the log scale from severe impairment to normal (as
    # when studies in renal impairment are pooled; the sigmoid is seen along its whole
    # range), lower with age (correlation of log EGFR with age about -0.19)
    log_egfr = np.asarray(jax.random.uniform(k_egfr, (n,), minval=np.log(15.0),
                                             maxval=np.log(150.0)))
    egfr = np.clip(np.exp(log_egfr - 0.007 * (age - 52.5)), 10.0, 200.0)
    alb = 4.0 + 0.4 * np.asarray(jax.random.normal(k_alb, (n,)))
    eta = np.asarray(jax.random.normal(k_eta, (n, 3))) * np.asarray(truth.omega_sd)
    cov = {"WT": wt, "AGE": age, "EGFR": egfr, "ALB": alb}
    cl = truth.clearance(cov) * np.exp(eta[:, 1])
    ka = truth.ka * np.exp(eta[:, 0])
    v = truth.v * np.exp(eta[:, 2])
    lo = np.array([w[0] for w in _WINDOWS])
    hi = np.array([w[1] for w in _WINDOWS])
    times = lo + (hi - lo) * np.asarray(jax.random.uniform(k_t, (n, len(_WINDOWS))))
    k = (cl / v)[:, None]
    conc = truth.dose * ka[:, None] / (v[:, None] * (ka[:, None] - k)) * (
        np.exp(-k * times) - np.exp(-ka[:, None] * times))
    dv = conc * np.exp(truth.exp_sd * np.asarray(jax.random.normal(k_eps, times.shape)))

    ids = np.arange(first_id, first_id + n)
    n_obs = len(_WINDOWS)
    dose_rows = pd.DataFrame({"ID": ids, "TIME": 0.0, "DV": np.nan, "AMT": truth.dose,
                              "EVID": 1, "CMT": 1, **cov})
    obs_rows = pd.DataFrame({
        "ID": np.repeat(ids, n_obs), "TIME": times.ravel(), "DV": dv.ravel(), "AMT": 0.0,
        "EVID": 0, "CMT": 2, **{c: np.repeat(x, n_obs) for c, x in cov.items()}})
    table = pd.concat([dose_rows, obs_rows]).sort_values(["ID", "TIME"], kind="stable")
    population = read_nonmem(table.reset_index(drop=True))
    truth = dataclasses.replace(truth, eta=pd.DataFrame(
        eta, columns=["eta_ka", "eta_cl", "eta_v"], index=pd.Index(ids, name="ID")))
    return population, truth


def compare_covariate_models(fits: Mapping[str, object], heldout: Population,
                             truth: CovariateTruth, population: Population | None = None,
                             n_grid: int = 25, lpd: bool = True) -> pd.DataFrame:
    """How well fitted models recover the truth of :func:`simulate_covariate_population`.

    One row per fit (and a ``truth`` row for reference); columns:

    * ``pd_error_<cov>`` — for ``WT, AGE, EGFR``: the largest relative error of the
      partial-dependence curve of typical CL (:func:`bayes_ude.nlme.partial_dependence`,
      averaged over ``population``) against the true one, over 25 points spanning the
      covariate's central 90 % (5th–95th percentile) in ``population``;
    * ``effect_<cov>`` — the size of the covariate's effect, ``(max - min) / mean`` of that
      curve (for the irrelevant ``ALB`` the truth is 0);
    * ``omega_cl`` — the estimated variance of ``eta_cl`` (truth row: the true one);
    * ``heldout_rmse_typical`` — held-out subjects, population predictions (no EBEs): RMSE of
      ``log PRED`` against the log of the true typical-subject prediction;
    * ``heldout_rmse_obs`` — the same against the log observations (floor: random effects
      and residual error, the truth row);
    * ``heldout_lpd`` — sum over held-out subjects of the log predictive density (random
      effects integrated out, Laplace), from the fits' ``log_predictive_density``;
    * ``n_parameters``, ``seconds``.

    Parameters
    ----------
    fits : ``{name: fit result}`` (FitResult or BayesianFitResult).
    heldout : held-out subjects (simulated from the same truth with another key).
    truth : the :class:`CovariateTruth` of the data.
    population : subjects for the partial-dependence curves (default: the first fit's).
    n_grid : grid points per curve.
    lpd : compute ``heldout_lpd`` (the slowest column).
    """
    if not fits:
        raise ValueError("give at least one fit")
    population = next(iter(fits.values())).population if population is None else population
    table = covariate_table(population)
    grids = {c: np.linspace(*np.percentile(table[c], [5, 95]), n_grid) for c in COVARIATES}
    true_pd = {c: truth.partial_dependence(population, c, grids[c]) for c in COVARIATES}
    mask = np.asarray(heldout.obs_mask)
    log_dv = np.log(np.where(mask, np.asarray(heldout.obs_dv), 1.0))
    log_true = np.log(np.where(mask, truth.population_predictions(heldout), 1.0))

    def effect(curve):
        return float((curve.max() - curve.min()) / curve.mean())

    def rmse(log_pred, ref):
        return float(np.sqrt(np.mean((log_pred - ref)[mask] ** 2)))

    rows = {}
    for name, fit in fits.items():
        row = {}
        for c in COVARIATES:
            curve = partial_dependence(fit, c, grids[c], population=population).to_numpy()
            if c != truth.irrelevant:
                row[f"pd_error_{c}"] = float(np.max(np.abs(curve / true_pd[c] - 1)))
            row[f"effect_{c}"] = effect(curve)
        row["omega_cl"] = float(fit.estimates["omega_eta_cl"])
        log_pred = np.log(np.where(mask, population_predictions(fit, heldout), 1.0))
        row["heldout_rmse_typical"] = rmse(log_pred, log_true)
        row["heldout_rmse_obs"] = rmse(log_pred, log_dv)
        if lpd:
            # a Bayesian fit averages over posterior draws (100 of them here)
            kw = {"n_draws": 100} if hasattr(fit, "u_draws") else {}
            row["heldout_lpd"] = float(np.sum(fit.log_predictive_density(heldout, **kw)))
        row["n_parameters"] = int(getattr(fit, "n_parameters",
                                          len(fit.model.parameter_names())))
        row["seconds"] = float(fit.seconds)
        rows[name] = row
    ref = {f"pd_error_{c}": 0.0 for c in COVARIATES if c != truth.irrelevant}
    ref.update({f"effect_{c}": effect(true_pd[c]) for c in COVARIATES})
    ref.update(omega_cl=truth.omega_cl, heldout_rmse_typical=0.0,
               heldout_rmse_obs=rmse(log_true, log_dv))
    if lpd:
        model = truth.population_model()
        ref["heldout_lpd"] = float(np.sum(subject_log_density(
            model, model.initial_vector(), heldout)))
    ref.update(n_parameters=0, seconds=np.nan)
    rows["truth"] = ref
    return pd.DataFrame.from_dict(rows, orient="index")
