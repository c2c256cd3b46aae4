"""The results layer: one interface for every population fit, and the maximum-likelihood result.

:class:`PopulationFit` says what a fit offers whatever produced it: point estimates on the
natural scale, an estimate table, a JSON summary, simulations and a VPC from the fitted
model, and the held-out predictive density of new subjects. :class:`FitResult` holds a
maximum-likelihood fit (:mod:`._estimate`); the posterior of a Bayesian fit,
:class:`BayesianFitResult`, is in :mod:`._bayes_results`. Both sit above the likelihood and
diagnostics layers and below the fits that build them.
"""

from __future__ import annotations

import abc
import dataclasses
import json
from statistics import NormalDist

import jax.numpy as jnp
import numpy as np
import pandas as pd

from .._json import json_safe
from . import _diagnostics, _vpc
from ._buckets import padding_report
from ._error import Combined, Exponential, Proportional
from ._likelihood import subject_log_density
from ._model import PopulationModel, unpacked
from ._occasions import occasions_per_subject

__all__ = ["FitResult", "PopulationFit"]


# Bounds of FitResult.degenerate. Built-in models (and the estimate table) take typical
# values named ``t...`` on the log scale and random effects as exponential (log-normal).
#: A log-scale typical value beyond +-20 is a factor e^20 (5e8) from 1 in the data's units.
DEGENERATE_LOG_THETA = 20.0
#: A between-subject variance above 100 on the log scale (SD 10) makes one SD of eta a
#: factor e^10 (2e4); populations reported in PK lie below 4 (SD 2).
DEGENERATE_OMEGA = 100.0
#: A residual SD above 100 (proportional and exponential: 100 = 10 000 % CV; additive:
#: 100 times the largest |DV|) explains nothing.
DEGENERATE_SIGMA = 100.0
#: −2LL per observation is log(2 pi R) + r^2 / R; at a maximum of the likelihood with sigma
#: free, r^2 / R averages about 1 and log(2 pi R) is a few tens at most (R from 1e-12 to
#: 1e12), so 1e4 per observation means residuals pinned at a fixed variance: e.g. the
#: variance floor of a proportional error where the prediction is 0 (a pre-dose sample).
DEGENERATE_MINUS2LL_PER_OBS = 1e4


class PopulationFit(abc.ABC):
    """What every population fit offers (:class:`FitResult`, :class:`BayesianFitResult`).

    Attributes (each result defines them as fields or properties): ``method``; ``model``
    (specialised to the data); ``population``; ``u``, a central unconstrained parameter
    vector (the estimates, or the posterior's centre); ``estimates``, natural-scale point
    estimates as a Series named as :meth:`PopulationModel.parameter_names`; ``theta`` and
    ``sigma`` as dicts; ``eta``, the subjects' random effects (EBEs or posterior medians;
    ``None`` where the method does not estimate them); ``seconds``.
    """

    @abc.abstractmethod
    def table(self) -> pd.DataFrame:
        """The estimate table, one row per natural-scale parameter."""

    @abc.abstractmethod
    def summary(self) -> dict:
        """A JSON-ready summary (what ``bayes-ude pk fit`` writes)."""

    @abc.abstractmethod
    def simulate(self, n: int = 100, key=None, population=None) -> np.ndarray:
        """Simulated observations ``(n, subjects, records)`` on ``population``'s design."""

    @abc.abstractmethod
    def vpc(self, **kwargs) -> pd.DataFrame:
        """Visual predictive check table (see :func:`bayes_ude.nlme.vpc`)."""

    @abc.abstractmethod
    def log_predictive_density(self, population, **kwargs) -> np.ndarray:
        """Per-subject log predictive density of (held-out) subjects."""

    def to_json(self, path=None) -> str:
        """The summary as JSON (non-finite numbers as ``null``), also written to ``path``."""
        text = json.dumps(json_safe(self.summary()), indent=2, allow_nan=False)
        if path is not None:
            with open(path, "w") as fh:
                fh.write(text + "\n")
        return text


@dataclasses.dataclass
class FitResult(PopulationFit):
    """A maximum-likelihood fit (:func:`bayes_ude.nlme.fit` with an ML method).

    Attributes
    ----------
    method : ``"fo"``, ``"foce"``, ``"focei"`` or ``"laplace"``.
    minus2ll, ofv, aic, bic : −2 log-likelihood; OFV = −2LL − n_obs log(2 pi) (NONMEM's
        convention; with ``l2`` penalties in the model, OFV includes the penalty and −2LL
        does not); AIC and BIC from −2LL with the number of estimated parameters (BIC
        with ``log(n_obs)``).
    theta, omega, sigma : estimates (omega as a DataFrame over the random-effect names).
    estimates : Series of all natural-scale parameters (theta, omega elements, sigma).
    se : Series of standard errors (NaN where the covariance step failed or a parameter
        is fixed); ``covariance`` the full matrix (estimated parameters).
    eta : EBEs, a DataFrame subject x random effect; ``shrinkage`` eta-shrinkage (SD
        version, 1 − SD(eta_hat)/omega^(1/2)) per random effect.
    converged, iterations, seconds, message, interrupted.
    degenerate : why the estimates are a degenerate solution (property; empty if they are
        not): run-away estimates or a −2LL no real fit reaches (see its docstring).
    """

    method: str
    model: PopulationModel
    population: object
    u: np.ndarray
    minus2ll: float
    ofv: float
    aic: float
    bic: float
    n_obs: int
    n_parameters: int
    estimates: pd.Series
    se: pd.Series
    covariance: pd.DataFrame | None
    eta: pd.DataFrame
    converged: bool
    iterations: int
    seconds: float
    message: str = ""
    interrupted: bool = False
    fixed: tuple[str, ...] = ()
    history: list[float] = dataclasses.field(default_factory=list)
    # covariance of the estimated entries of the unconstrained vector ``u`` (None without
    # a covariance step); used to precondition SG-MCMC
    covariance_unconstrained: np.ndarray | None = None
    # the devices the subjects were split over (diagnostics use the same)
    devices: tuple | None = None

    # ---- views
    @property
    def theta(self) -> dict:
        return unpacked(self.model, jnp.asarray(self.u))[0]

    @property
    def omega(self) -> pd.DataFrame:
        om = np.asarray(unpacked(self.model, jnp.asarray(self.u), True)[1])
        names = list(self.model.omega.names)
        return pd.DataFrame(om, index=names, columns=names)

    @property
    def sigma(self) -> dict:
        return {k: float(v) for k, v in unpacked(self.model, jnp.asarray(self.u))[2].items()}

    @property
    def rse(self) -> pd.Series:
        """Relative standard errors in % (of the natural-scale estimate)."""
        return 100.0 * self.se / self.estimates.abs()

    @property
    def degenerate(self) -> list[str]:
        """Reasons the estimates are a degenerate solution, empty if none: the optimiser
        may report convergence at estimates that ran away to absurd values, or at a −2LL
        that only records with a pinned variance give. Checked (bounds and their reasons
        at the ``DEGENERATE_*`` constants of this module): a non-finite −2LL or estimate;
        −2LL above ``DEGENERATE_MINUS2LL_PER_OBS`` per observation; a log-scale typical
        value (``t...``) beyond ±``DEGENERATE_LOG_THETA``; a between-subject variance
        above ``DEGENERATE_OMEGA``; a residual SD above ``DEGENERATE_SIGMA`` (additive: that
        many times the largest |DV|). Standard errors that are not available are not a
        reason by themselves (the covariance step warns about those)."""
        reasons = []
        if not np.isfinite(self.minus2ll):
            reasons.append(f"-2LL is {self.minus2ll}")
        elif self.minus2ll > DEGENERATE_MINUS2LL_PER_OBS * max(self.n_obs, 1):
            reasons.append(
                f"-2LL {self.minus2ll:.4g} is {self.minus2ll / max(self.n_obs, 1):.2g} per "
                f"observation (above {DEGENERATE_MINUS2LL_PER_OBS:g}: some residual variances "
                "are pinned, e.g. at the floor of a proportional error where the prediction is "
                "0)")
        bad = [k for k, v in self.estimates.items() if not np.isfinite(v)]
        if bad:
            reasons.append(f"non-finite estimates {bad}")
        for name in self.model.theta:
            value = float(self.estimates.get(name, 0.0))
            if name.startswith("t") and abs(value) > DEGENERATE_LOG_THETA:
                reasons.append(f"{name} = {value:.4g} (a log-scale typical value beyond "
                               f"±{DEGENERATE_LOG_THETA:g})")
        for eta in self.model.omega.names:
            value = float(self.estimates.get(f"omega_{eta}", 0.0))
            if value > DEGENERATE_OMEGA:
                reasons.append(f"omega_{eta} = {value:.4g} (a between-subject variance above "
                               f"{DEGENERATE_OMEGA:g} on the log scale)")
        mask = np.asarray(self.population.obs_mask)
        dv = np.abs(np.asarray(self.population.obs_dv))[mask]
        data_scale = float(dv.max()) if dv.size else 1.0
        for name in self.model.sigma_names:
            value = float(self.estimates[name])
            additive = name not in _dimensionless_sigma(self.model)
            limit = DEGENERATE_SIGMA * (data_scale if additive else 1.0)
            if value > limit:
                reasons.append(f"{name} = {value:.4g} (a residual SD above {limit:.4g}"
                               + (f", {DEGENERATE_SIGMA:g} times the largest |DV|)"
                                  if additive else ")"))
        return reasons

    def _existing_eta(self) -> pd.DataFrame:
        """:attr:`eta` with NaN where a subject has no such occasion (its kappa there is a
        structural 0, not an estimate)."""
        eta = self.eta.copy()
        if self.model.iov:
            n_occ = occasions_per_subject(self.population, self.model.occasion)
            for name in self.model.iov:
                for k, column in enumerate(self.model.occasion_eta_names(name)):
                    eta.loc[n_occ <= k, column] = np.nan
        return eta

    @property
    def shrinkage(self) -> pd.Series:
        """Eta-shrinkage ``1 - SD(EBE) / omega_sd`` per random effect (with IOV, per
        occasion, over the subjects that have it)."""
        # NONMEM's eta-shrinkage uses the sample SD of the EBEs
        sd = self._existing_eta().std(ddof=1)
        # per random effect of a subject (with IOV, each occasion's)
        variance = np.diag(np.asarray(unpacked(self.model, jnp.asarray(self.u))[1]))
        return 1.0 - sd / np.sqrt(variance)

    def _shrinkage_of(self, name: str) -> float:
        """Shrinkage of a random effect; an occasion one (IOV) pooled over occasions."""
        if name not in self.model.iov:
            return float(self.shrinkage[name])
        kappas = self._existing_eta()[self.model.occasion_eta_names(name)].to_numpy().ravel()
        sd = np.nanstd(kappas, ddof=1)
        return float(1.0 - sd / np.sqrt(self.omega.loc[name, name]))

    def table(self, ci: float = 0.95) -> pd.DataFrame:
        """The estimate table (nlmixr2 style), one row per parameter: ``kind``, estimate,
        SE, RSE %, the Wald ``ci`` interval (``ci95_lo``, ``ci95_hi``), the back-transformed
        value and interval of log-scale typical values (``t<p>``: ``exp``), the BSV CV %
        and shrinkage % of their random effect; omega rows are variances (``kind`` "omega
        variance", "iov variance" for an occasion one, whose shrinkage pools the
        occasions) with their SD in ``sd_corr`` (covariances: the correlation there)."""
        if not 0 < ci < 1:
            raise ValueError(f"ci must be in (0, 1), got {ci}")
        z = NormalDist().inv_cdf(0.5 + ci / 2)  # 1.96 for 95 %
        tag = f"ci{100 * ci:g}"
        omega = self.omega
        element = self.model.omega.elements()
        rows = []
        for name, est in self.estimates.items():
            se = self.se.get(name, np.nan)
            row = {"parameter": name, "kind": "fixed effect", "estimate": est, "se": se,
                   "rse_pct": 100 * se / abs(est) if est != 0 else np.nan,
                   f"{tag}_lo": est - z * se, f"{tag}_hi": est + z * se,
                   "back_transformed": np.nan, f"back_{tag}_lo": np.nan,
                   f"back_{tag}_hi": np.nan, "sd_corr": np.nan, "bsv_cv_pct": np.nan,
                   "shrinkage_pct": np.nan, "fixed": name in self.fixed}
            with np.errstate(over="ignore", invalid="ignore"):  # inf for run-away values
                if name in self.model.theta and name.startswith("t"):
                    row["kind"] = "log typical value"
                    for key in ("", f"{tag}_lo", f"{tag}_hi"):
                        value = est if not key else row[key]
                        row[f"back_{key}" if key else "back_transformed"] = float(np.exp(value))
                    eta = "eta_" + name[1:]
                    if eta in omega.index:
                        row["bsv_cv_pct"] = 100 * float(np.sqrt(np.expm1(omega.loc[eta, eta])))
                        row["shrinkage_pct"] = 100 * float(self.shrinkage[eta])
                elif name in element:
                    a, b = element[name]
                    if a == b:
                        row.update(kind="iov variance" if a in self.model.iov
                                   else "omega variance", sd_corr=float(np.sqrt(est)),
                                   bsv_cv_pct=100 * float(np.sqrt(np.expm1(est))),
                                   shrinkage_pct=100 * self._shrinkage_of(a))
                    else:
                        row.update(kind="omega covariance", sd_corr=float(
                            est / np.sqrt(omega.loc[a, a] * omega.loc[b, b])))
                elif name in self.sigma:
                    row["kind"] = "residual SD"
            rows.append(row)
        return pd.DataFrame(rows).set_index("parameter")

    def summary(self) -> dict:
        """The JSON-able summary written by the ``bayes-ude pk fit`` command."""
        names = self.model.parameter_names()
        n_th = len(names) - len(self.model.omega.element_names()) - len(self.model.sigma_names)
        theta = {k: float(self.estimates[k]) for k in names[:n_th]}
        omega = {k[6:] if k.startswith("omega_") else k: float(self.estimates[k])
                 for k in self.model.omega.element_names()}
        return {
            "method": self.method, "minus2ll": self.minus2ll, "ofv": self.ofv, "aic": self.aic,
            "bic": self.bic, "n_obs": self.n_obs, "n_subjects": self.population.n_subjects,
            **padding_report(self.population),
            "n_parameters": self.n_parameters, "theta": theta, "omega": omega,
            "sigma": self.sigma,
            "se": {k: (None if not np.isfinite(v) else float(v)) for k, v in self.se.items()},
            "shrinkage": {k: float(v) for k, v in self.shrinkage.items()},
            "converged": self.converged, "iterations": self.iterations,
            "seconds": self.seconds, "interrupted": self.interrupted, "message": self.message,
            "degenerate": self.degenerate,
        }

    # ---- diagnostics (see bayes_ude.nlme._diagnostics)
    def diagnostics(self, n_sim: int = 1000, key=None, devices=None) -> pd.DataFrame:
        """PRED, IPRED, RES, IRES, IWRES, WRES, CWRES, NPDE per observation (subjects over
        ``devices``, default the fit's)."""
        return _diagnostics.diagnostics(self, n_sim, key, devices)

    def individual_parameters(self) -> pd.DataFrame:
        """EBEs and individual parameters per subject."""
        return _diagnostics.individual_parameters(self)

    def simulate(self, n: int = 100, key=None, population=None) -> np.ndarray:
        """Simulated observations ``(n, subjects, records)``."""
        return _diagnostics.simulate(self, n, key, population)

    def log_predictive_density(self, population, method: str = "laplace") -> np.ndarray:
        """Per-subject ``log p(y_i | estimates)`` of (e.g. held-out) subjects, each
        subject's random effects integrated out by the Laplace approximation."""
        return subject_log_density(self.model, self.u, population, method)

    def vpc(self, **kwargs) -> pd.DataFrame:
        """Visual predictive check table (see :func:`bayes_ude.nlme.vpc`)."""
        return _vpc.vpc(self, **kwargs)

    def __repr__(self) -> str:
        with pd.option_context("display.float_format", "{:.4g}".format, "display.width", 120):
            head = (f"NLME fit ({self.method.upper()}): {self.population.n_subjects} subjects, "
                    f"{self.n_obs} observations, {self.n_parameters} estimated parameters\n"
                    f"-2LL {self.minus2ll:.4f}  OFV {self.ofv:.4f}  AIC {self.aic:.4f}  "
                    f"BIC {self.bic:.4f}  ({'converged' if self.converged else 'NOT converged'}"
                    f"{' to a degenerate solution' if self.degenerate else ''}"
                    f", {self.iterations} iterations, {self.seconds:.2f} s)\n")
            return head + self.table().to_string()


def _dimensionless_sigma(model) -> set[str]:
    """Names of the residual SDs that are relative (proportional, exponential), not in the
    data's units."""
    names = set()
    for em in model.error_models.values():
        if isinstance(em, Proportional | Exponential):
            names.add(em.name)
        elif isinstance(em, Combined):
            names.add(em.prop)
    return names

