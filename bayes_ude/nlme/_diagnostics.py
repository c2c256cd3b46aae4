"""Diagnostics of a fitted population model: residuals, NPDE, EBEs, simulation (the VPC,
built on the simulations, is in ``_vpc.py``).

Definitions (per subject, on the error model's scale — log for the exponential model):

* ``PRED = f(eta=0)``, ``IPRED = f(eta_hat)``; ``RES = DV - PRED``, ``IRES = DV - IPRED``;
* ``IWRES = (y - f(eta_hat)) / sqrt(R(eta_hat))``;
* ``WRES``: the residuals of the FO linearisation, decorrelated:
  ``chol(G0 Omega G0' + R(0))^-1 (y - f(0))``;
* ``CWRES`` (Hooker et al. 2007): the same around the EBE,
  ``chol(G Omega G' + R(eta_hat))^-1 (y - f(eta_hat) + G eta_hat)``;
* ``NPDE`` (Brendel et al. 2006): observations and ``n_sim`` simulated replicates of the
  subject, decorrelated with the simulated mean and covariance; ``pde`` is the fraction of
  replicates below the observation (kept inside ``[1/(2n), 1 - 1/(2n)]``), ``npde =
  Phi^-1(pde)``. Under the model, NPDE are N(0, 1).
* eta-shrinkage ``1 - SD(eta_hat) / omega^(1/2)``; epsilon-shrinkage ``1 - SD(IWRES)``.

Observations below the limit of quantification (``CENS`` 1; Beal's M3) are not residuals:
their ``DV`` is the limit, not a measurement. They are left out of the decorrelation of
WRES, CWRES and NPDE (each computed over the subject's measured observations only), and
their RES, IRES, IWRES, WRES, CWRES and NPDE are NaN (PRED and IPRED are kept). The NPDE
of measured observations are then compared with unconditional replicates, so near the
limit they lean upwards (the measured values are those that exceeded it); Nguyen et al.
(2012) impute the censored ones instead. The VPC of such data is a censored VPC (see
:func:`vpc`).

Everything is computed for all subjects at once, in blocks and over the fit's devices
(:func:`bayes_ude._batching.batch_map`); NPDE's replicates are simulated subject by subject
(a key each), so their memory is a block's, not subjects x replicates.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.scipy.special import ndtri

from .._batching import resolve_devices
from .._compile import ONE_OFF, filter_jit
from ._buckets import map_subjects, subject_buckets
from ._likelihood import censored
from ._model import unpacked
from ._model_checks import data_or_design

__all__ = ["diagnostics", "epsilon_shrinkage", "simulate", "individual_parameters"]


def _decorrelate(v, e, mask):
    v = jnp.where(mask[:, None] & mask[None, :], v, 0.0) + jnp.diag(jnp.where(mask, 0.0, 1.0))
    chol = jnp.linalg.cholesky(v)
    return jax.scipy.linalg.solve_triangular(chol, jnp.where(mask, e, 0.0), lower=True)


@filter_jit(quick_below=ONE_OFF)
def _residuals(model, u, population, eta, devices, buckets=None):
    def one(item, u):
        subject, eta_hat = item
        theta, omega, sigma = model.unpack(u)

        def pred_t(e):
            f = model.predict(theta, e, subject)
            return model.residual(f, sigma, subject)

        mask = subject.obs_mask & ~censored(subject)  # measured observations only
        zero = jnp.zeros_like(eta_hat)
        f0 = model.predict(theta, zero, subject)
        fi = model.predict(theta, eta_hat, subject)
        y, f0_t, r0 = pred_t(zero)
        _, fi_t, ri = pred_t(eta_hat)
        g0 = jax.jacfwd(lambda e: pred_t(e)[1])(zero)
        gi = jax.jacfwd(lambda e: pred_t(e)[1])(eta_hat)
        wres = _decorrelate(g0 @ omega @ g0.T + jnp.diag(r0), y - f0_t, mask)
        cwres = _decorrelate(gi @ omega @ gi.T + jnp.diag(ri), y - fi_t + gi @ eta_hat, mask)
        iwres = (y - fi_t) / jnp.sqrt(ri)
        return f0, fi, iwres, wres, cwres

    return map_subjects(one, population, eta, u, buckets=buckets, obs_outputs=True,
                        devices=devices)


def _sample_y(model, theta, omega, sigma, subject, key):
    """One simulated replicate of a subject's observations (untransformed scale)."""
    k_eta, k_eps = jax.random.split(key)
    eta = jax.random.multivariate_normal(k_eta, jnp.zeros(model.n_eta), omega)
    return _sample_obs(model, model.predict(theta, eta, subject), sigma, subject, k_eps)


def _sample_obs(model, f, sigma, subject, key):
    """Observations around predictions ``f`` (each with its observation type's error)."""
    models = model.error_models
    if 0 in models:
        return models[0].sample(key, f, sigma)
    y = jnp.full_like(f, jnp.nan)  # a type without an error model stays NaN, not 0
    keys = jax.random.split(key, len(models))
    for k, (dvid, em) in zip(keys, models.items(), strict=True):
        y = jnp.where(subject.obs_dvid == dvid, em.sample(k, f, sigma), y)
    return y


@filter_jit(quick_below=ONE_OFF)
def _simulate(model, u, population, key, n, devices=None, buckets=None):
    keys = jax.random.split(key, (n, population.obs_time.shape[0]))

    def one(item, u):
        subject, k = item
        theta, omega, sigma = model.unpack(u)
        return _sample_y(model, theta, omega, sigma, subject, k)

    def rep(ks):  # one replicate: the subjects over the devices
        return map_subjects(one, population, ks, u, buckets=buckets, obs_outputs=True,
                            block=None, devices=devices)

    return jax.lax.map(rep, keys)  # (n, S, No); a map keeps memory at one replicate


def simulate(fit, n: int = 100, key: jax.Array | None = None, population=None,
             devices=None) -> np.ndarray:
    """Simulated observations ``(n, subjects, records)`` from the fitted model (new etas and
    residual errors) on ``population``'s design (default: the fitted data's); each
    replicate's subjects over ``devices`` (default: the fit's)."""
    key = jax.random.key(0) if key is None else key
    population = data_or_design(fit, population)
    devices = tuple(resolve_devices(getattr(fit, "devices", None) if devices is None
                                    else devices))
    # the model specialised to the design, not to the fitted data: a design may have dose
    # types (infusions, steady state) the data did not, which a specialised model drops
    model = fit.model.specialised(population)
    return np.asarray(_simulate(model, jnp.asarray(fit.u), population, key, n, devices,
                                subject_buckets(population)))


@filter_jit(quick_below=ONE_OFF)
def _npde(model, u, population, key, n, devices, buckets=None):
    # each subject simulates its own n replicates (a key per subject): memory grows with
    # a block of subjects, not with all of them times n

    def one(item, u):
        subject, k = item
        theta, omega, sigma = model.unpack(u)
        ys = jax.vmap(lambda kk: _sample_y(model, theta, omega, sigma, subject, kk))(
            jax.random.split(k, n))
        mask = subject.obs_mask & ~censored(subject)  # measured observations only
        tr = _transform(model, subject)
        obs = tr(subject.obs_dv)
        sim = jax.vmap(tr)(ys)
        mean = sim.mean(0)
        cov = jnp.cov(sim.T)
        dec_obs = _decorrelate(cov, obs - mean, mask)
        dec_sim = jax.vmap(lambda s: _decorrelate(cov, s - mean, mask))(sim)
        # (a mean of booleans is float32 even with x64 on)
        pde = jnp.mean((dec_sim < dec_obs[None, :]).astype(sim.dtype), axis=0)
        pde = jnp.clip(pde, 1.0 / (2 * n), 1.0 - 1.0 / (2 * n))
        return ndtri(pde)

    keys = jax.random.split(key, population.obs_time.shape[0])
    return map_subjects(one, population, keys, u, buckets=buckets, obs_outputs=True,
                        devices=devices)


def _transform(model, subject):
    models = model.error_models

    def tr(y):
        if 0 in models:
            return models[0].transform(y)
        out = y
        for dvid, em in models.items():
            out = jnp.where(subject.obs_dvid == dvid, em.transform(y), out)
        return out

    return tr


def diagnostics(fit, n_sim: int = 1000, key: jax.Array | None = None,
                devices=None) -> pd.DataFrame:
    """One row per observation: ``ID, TIME, DV, DVID, CMT, ROW, CENS, PRED, IPRED, RES,
    IRES, IWRES, WRES, CWRES, NPDE`` (``n_sim`` replicates for NPDE; 0 skips it). ``CENS``
    1: below the limit of quantification (``DV`` is the limit; residuals NaN, see the
    module docstring). Subjects in blocks and over ``devices`` (default: the fit's, see
    :func:`bayes_ude.nlme.fit`)."""
    model, pop = fit.model, fit.population
    devices = tuple(resolve_devices(getattr(fit, "devices", None) if devices is None
                                    else devices))
    u = jnp.asarray(fit.u)
    eta = jnp.asarray(fit.eta.to_numpy())
    buckets = subject_buckets(pop)
    pred, ipred, iwres, wres, cwres = (np.asarray(a) for a in _residuals(
        model, u, pop, eta, devices, buckets))
    mask = np.asarray(pop.obs_mask)
    sub, rec = np.nonzero(mask)
    dv = np.asarray(pop.obs_dv)[mask]
    out = pd.DataFrame({
        "ID": [pop.ids[s] for s in sub],
        "TIME": np.asarray(pop.obs_time)[mask],
        "DV": dv,
        "DVID": np.asarray(pop.obs_dvid)[mask],
        "CMT": np.asarray(pop.obs_cmt)[mask],
        "ROW": np.asarray(pop.obs_row)[mask],
        "CENS": np.isfinite(np.asarray(pop.obs_lloq))[mask].astype(np.int64),
        "PRED": pred[mask],
        "IPRED": ipred[mask],
        "RES": dv - pred[mask],
        "IRES": dv - ipred[mask],
        "IWRES": iwres[mask],
        "WRES": wres[mask],
        "CWRES": cwres[mask],
    })
    if n_sim:
        key = jax.random.key(0) if key is None else key
        out["NPDE"] = np.asarray(_npde(model, u, pop, key, n_sim, devices, buckets))[mask]
    residuals = [c for c in ("RES", "IRES", "IWRES", "WRES", "CWRES", "NPDE") if c in out]
    out.loc[out["CENS"] == 1, residuals] = np.nan
    return out


def epsilon_shrinkage(diag: pd.DataFrame, dvid: int | None = None) -> float:
    """``1 - SD(IWRES)`` over the observations of type ``dvid`` (a :func:`diagnostics`
    table). Each observation type has its own error model, so its own shrinkage (NONMEM's
    per epsilon): ``dvid`` is needed when the table has several."""
    kinds = sorted(diag["DVID"].unique().tolist())
    if dvid is None and len(kinds) > 1:
        raise ValueError(f"epsilon_shrinkage: the table holds DVID {kinds}, each with its "
                         "own error model; pass dvid= (one of them)")
    iwres = diag["IWRES"] if dvid is None else diag.loc[diag["DVID"] == dvid, "IWRES"]
    if dvid is not None and dvid not in kinds:
        raise ValueError(f"epsilon_shrinkage: no observations with DVID {dvid} (the table "
                         f"holds DVID {kinds})")
    return float(1.0 - iwres.std(ddof=1))


@filter_jit(quick_below=ONE_OFF)
def _individual(model, u, population, eta):
    theta = model.unpack(u)[0]
    return jax.vmap(lambda s, e: model.individual_parameters(theta, e, s))(population, eta)


def individual_parameters(fit) -> pd.DataFrame:
    """The EBEs and the individual parameters they give, one row per subject."""
    model, pop = fit.model, fit.population
    params = _individual(model, jnp.asarray(fit.u), pop, jnp.asarray(fit.eta.to_numpy()))
    table = fit.eta.copy()
    for k, v in params.items():
        v = np.asarray(v)
        if v.ndim == 1:
            table[k] = v
    return table


@filter_jit(quick_below=ONE_OFF)
def _population_pred(model, theta, population):
    return jax.vmap(lambda s: model.predict(theta, jnp.zeros(model.n_eta), s))(population)


def precompile(model, population, devices: tuple, n_sim: int = 1000,
               n_vpc: int = 500) -> None:
    """Compile, without running them, the programs that :func:`diagnostics` (``n_sim``
    NPDE replicates), :func:`individual_parameters` and :func:`vpc` (``n_vpc``
    replicates) run for a fit of ``model`` (specialised to ``population``) over
    ``devices`` (see :meth:`bayes_ude._compile.filter_jit`'s ``precompile``): only the
    shapes of the estimates matter, so this can run while the fit does."""
    u = jnp.asarray(model.initial_vector(), float)
    eta = jnp.zeros((population.n_subjects, len(model.eta_names)))
    key = jax.random.key(0)
    buckets = subject_buckets(population)  # the same arguments as the calls
    _residuals.precompile(model, u, population, eta, devices, buckets)
    if n_sim:
        _npde.precompile(model, u, population, key, n_sim, devices, buckets)
    _individual.precompile(model, u, population, eta)
    _simulate.precompile(model.specialised(population), u, population, key, n_vpc, devices,
                         buckets)
    unpacked.precompile(model, u, True)  # the fit's table (omega as estimated)
    theta = unpacked(model, u)[0]
    _population_pred.precompile(model.specialised(population), theta, population)

