"""The population model: individual parameters, random effects, structural and error models.

A :class:`PopulationModel` is the one object every estimation method runs on (FO, FOCE,
FOCEI, Laplace here; NUTS and SG-MCMC in the Bayesian layer). Its parameters are

* ``theta`` — fixed effects, any pytree of arrays (typical values on whatever scale the
  ``individual`` function expects; by convention log-scale typical values named ``tcl``,
  ``tv``, ...; a covariate network's weights are fixed effects too);
* ``omega`` — the covariance of ``eta ~ N(0, omega)``, one random effect per name,
  with a diagonal, block or full structure, estimated through its Cholesky factor
  (log-diagonal, unconstrained off-diagonal);
* ``sigma`` — the error models' standard deviations (estimated on the log scale).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ._error import ErrorModel, Exponential
from ._structural import StructuralModel

__all__ = ["Omega", "PopulationModel", "typical_individual"]


@dataclasses.dataclass(frozen=True)
class Omega:
    """Random-effect names, initial covariance and structure.

    Parameters
    ----------
    names : one name per random effect (``eta``), in order.
    init : initial variances (1-D, diagonal) or an initial covariance matrix.
    structure : ``"diagonal"`` (default), ``"full"``, or a sequence of blocks (each a
        sequence of names; names in no block get their own 1x1 block).
    """

    names: tuple[str, ...]
    init: np.ndarray
    structure: str | tuple[tuple[str, ...], ...] = "diagonal"

    def __post_init__(self):
        names = tuple(self.names)
        object.__setattr__(self, "names", names)
        init = np.asarray(self.init, float)
        if init.ndim == 1:
            init = np.diag(init)
        q = len(names)
        if init.shape != (q, q):
            raise ValueError(f"Omega.init must be {q} variances or a {q}x{q} matrix, "
                             f"got shape {init.shape}")
        if len(set(names)) != q:
            raise ValueError(f"Omega.names must be distinct, got {names}")
        if not np.allclose(init, init.T) or np.any(np.linalg.eigvalsh(init) <= 0):
            raise ValueError("Omega.init must be a symmetric positive-definite matrix "
                             f"(variances > 0), got {init.tolist()}")
        structure = self.structure
        if not isinstance(structure, str):
            structure = tuple(tuple(b) for b in structure)
            unknown = [n for b in structure for n in b if n not in names]
            if unknown:
                raise ValueError(f"Omega.structure names unknown random effects {unknown}; "
                                 f"the random effects are {list(names)}")
        elif structure not in ("diagonal", "full"):
            raise ValueError("Omega.structure must be 'diagonal', 'full' or a list of blocks, "
                             f"got {structure!r}")
        object.__setattr__(self, "structure", structure)
        object.__setattr__(self, "init", init * self.pattern)

    @classmethod
    def diagonal(cls, variances: Mapping[str, float]) -> Omega:
        return cls(tuple(variances), np.asarray(list(variances.values()), float))

    @property
    def pattern(self) -> np.ndarray:
        """Boolean matrix of the entries that may be non-zero."""
        q = len(self.names)
        if self.structure == "full":
            return np.ones((q, q), bool)
        pat = np.eye(q, dtype=bool)
        if self.structure != "diagonal":
            for block in self.structure:
                idx = [self.names.index(n) for n in block]
                pat[np.ix_(idx, idx)] = True
        return pat

    @property
    def free(self) -> tuple[np.ndarray, np.ndarray]:
        """Row and column indices of the estimated lower-triangular Cholesky entries."""
        rows, cols = np.nonzero(np.tril(self.pattern))
        return rows, cols

    def element_names(self) -> list[str]:
        """``omega_<name>`` for variances, ``omega_<a>_<b>`` for covariances."""
        return list(self.elements())

    def elements(self) -> dict[str, tuple[str, str]]:
        """Each estimated element's name -> its two random effects (the same twice for a
        variance), in :meth:`element_names`' order."""
        rows, cols = self.free
        return {(f"omega_{self.names[r]}" if r == c
                 else f"omega_{self.names[c]}_{self.names[r]}"): (self.names[c], self.names[r])
                for r, c in zip(rows, cols, strict=True)}


def check_data(structural: StructuralModel, population) -> None:
    """The checks of :meth:`PopulationModel.check` that need only the structural model:
    some observation to fit, and every record in a compartment the model has."""
    if not np.any(np.asarray(population.obs_mask)):
        raise ValueError("the data have no observations (none left, if some were left out): "
                         "there is nothing to fit")
    structural.check_population(population)


def _chol_to_vector(omega: Omega, matrix: np.ndarray) -> np.ndarray:
    chol = np.linalg.cholesky(matrix)
    rows, cols = omega.free
    vals = chol[rows, cols]
    diagonal = rows == cols
    return np.where(diagonal, np.log(np.where(diagonal, vals, 1.0)), vals)


@dataclasses.dataclass(frozen=True, eq=False)
class PopulationModel:
    """A nonlinear mixed-effects model.

    Parameters
    ----------
    structural : a :class:`StructuralModel` (closed-form compartment model or
        :class:`ODEModel`).
    individual : ``individual(theta, eta, covariates) -> params``: fixed effects (the
        ``theta`` pytree), random effects (``eta``, a mapping name -> scalar) and the
        subject's covariates (mapping column name -> baseline value) to the individual
        parameters the structural model reads (e.g. ``{"ka": ..., "cl": ..., "v": ...}``).
        Any JAX function: a network whose weights are in ``theta`` works.
    theta : initial fixed effects (mapping name -> value; values may be arrays/pytrees).
    omega : an :class:`Omega`, or a mapping eta name -> initial variance (diagonal).
    sigma : initial error standard deviations, name -> value (names from the error models).
    error : an :class:`ErrorModel`, or a mapping ``{dvid: ErrorModel}`` for several
        observation types.
    covariates : covariate columns ``individual`` reads (checked against the data).
    l2 : L2 penalties ``{theta name: lambda}``: ``sum_k lambda_k ||theta_k||^2`` is added
        to the maximum-likelihood objective (OFV, −2LL scale), which is the −2 log density
        of a ``N(0, 1/(2 lambda_k))`` prior on every entry of ``theta_k`` (so the fit is a
        MAP estimate for those entries). The Bayesian fits use exactly that prior for them
        by default. Typical use: the weights of a covariate network.
    """

    structural: StructuralModel
    individual: Callable
    theta: Mapping
    omega: Omega | Mapping[str, float]
    sigma: Mapping[str, float]
    error: ErrorModel | Mapping[int, ErrorModel]
    covariates: Sequence[str] = ()
    l2: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.omega, Omega):
            object.__setattr__(self, "omega", Omega.diagonal(dict(self.omega)))
        object.__setattr__(self, "theta", {k: np.asarray(v, float)
                                           for k, v in dict(self.theta).items()})
        object.__setattr__(self, "sigma", {k: float(v) for k, v in dict(self.sigma).items()})
        object.__setattr__(self, "covariates", tuple(self.covariates))
        needed = {n for em in self.error_models.values() for n in em.sigma_names}
        missing = needed - set(self.sigma)
        extra = set(self.sigma) - needed
        if missing or extra:
            raise ValueError("sigma must give exactly the error models' parameters "
                             f"{sorted(needed)}; missing {sorted(missing)}, unused "
                             f"{sorted(extra)}")
        bad = [k for k, v in self.sigma.items() if not v > 0]
        if bad:
            raise ValueError(f"sigma values must be > 0; got {[(k, self.sigma[k]) for k in bad]}")
        object.__setattr__(self, "l2", {k: float(v) for k, v in dict(self.l2).items()})
        unknown = [k for k in self.l2 if k not in self.theta]
        if unknown:
            raise ValueError(f"l2 names {unknown} are not theta entries; theta has "
                             f"{list(self.theta)}")
        bad = [(k, v) for k, v in self.l2.items() if not v > 0]
        if bad:
            raise ValueError(f"l2 penalties must be > 0, got {bad}")
        clash = set(self.theta) & (set(self.sigma) | set(self.omega.element_names()))
        if clash:
            raise ValueError(f"parameter names used twice (theta and sigma/omega): {sorted(clash)}")

    def specialised(self, population) -> PopulationModel:
        """This model with its structural model specialised to the data's dose types
        (cached, so repeated fits on similar data reuse compiled code)."""
        structural = self.structural.specialise(population)
        if structural is self.structural:
            return self
        cache = self.__dict__.setdefault("_specialised", {})
        if structural not in cache:
            cache[structural] = dataclasses.replace(self, structural=structural)
        return cache[structural]

    def penalty(self, theta) -> jax.Array:
        """The L2 penalty ``sum_k l2_k ||theta_k||^2`` (0 without ``l2``)."""
        total = jnp.zeros(())
        for k, lam in self.l2.items():
            total = total + lam * jnp.sum(jnp.square(jnp.asarray(theta[k])))
        return total

    # ----------------------------------------------------------------- structure
    @property
    def error_models(self) -> dict[int, ErrorModel]:
        if isinstance(self.error, ErrorModel):
            return {0: self.error}  # 0: every observation type
        return {int(k): v for k, v in self.error.items()}

    @property
    def eta_names(self) -> tuple[str, ...]:
        return self.omega.names

    @property
    def n_eta(self) -> int:
        return len(self.omega.names)

    # ------------------------------------------------------- parameter vectors
    def initial_vector(self) -> np.ndarray:
        """All parameters as one unconstrained vector (theta, Cholesky of omega, log sigma)."""
        # numpy, not jnp: every eager jnp operation is a small compilation at start-up
        th = np.concatenate([np.ravel(np.asarray(self.theta[k], float)) for k in self.theta])
        om = _chol_to_vector(self.omega, self.omega.init)
        sg = np.log(np.asarray([self.sigma[k] for k in self.sigma_names]))
        return np.concatenate([np.asarray(th), om, sg])

    @property
    def n_theta(self) -> int:
        return sum(int(np.size(v)) for v in self.theta.values())

    def _theta_vector(self, theta) -> jax.Array:
        """Theta flattened in the model's (insertion) order of names."""
        return jnp.concatenate([jnp.ravel(jnp.asarray(theta[k])) for k in self.theta])

    def _theta_from_vector(self, vec) -> dict:
        out, i = {}, 0
        for k, v in self.theta.items():
            n = int(np.size(v))
            out[k] = vec[i:i + n].reshape(np.shape(v))
            i += n
        return out

    @property
    def sigma_names(self) -> tuple[str, ...]:
        return tuple(self.sigma)

    def unpack(self, u) -> tuple[dict, jax.Array, dict]:
        """Unconstrained vector -> ``(theta, omega matrix, sigma)``."""
        n_th = self.n_theta
        rows, cols = self.omega.free
        n_om = rows.size
        theta = self._theta_from_vector(u[:n_th])
        raw = u[n_th:n_th + n_om]
        vals = jnp.where(jnp.asarray(rows == cols), jnp.exp(raw), raw)
        q = self.n_eta
        chol = jnp.zeros((q, q), u.dtype).at[rows, cols].set(vals)
        sigma = dict(zip(self.sigma_names, jnp.exp(u[n_th + n_om:]), strict=True))
        return theta, chol @ chol.T, sigma

    def parameter_names(self) -> list[str]:
        """Names of the natural-scale parameters (see :meth:`natural`)."""
        names = []
        for k, v in self.theta.items():
            size = int(np.size(v))
            names += [k] if size == 1 and np.ndim(v) == 0 else [f"{k}[{i}]" for i in range(size)]
        return names + self.omega.element_names() + list(self.sigma_names)

    def natural(self, u) -> jax.Array:
        """Natural-scale parameters: theta (as is), omega elements, sigma."""
        theta, omega, sigma = self.unpack(u)
        th = self._theta_vector(theta)
        rows, cols = self.omega.free
        return jnp.concatenate([th, omega[rows, cols],
                                jnp.stack([sigma[k] for k in self.sigma_names])])

    def natural_to_vector(self, names_values: Mapping[str, float], u) -> np.ndarray:
        """``u`` with the named natural-scale parameters set (for fixing parameters)."""
        u = np.array(u, float)
        names = self.parameter_names()
        n_th = self.n_theta
        n_om = len(self.omega.element_names())
        for name, value in names_values.items():
            if name not in names:
                raise ValueError(f"unknown parameter {name!r} to fix; parameters are {names}")
            i = names.index(name)
            if i < n_th:
                u[i] = value
            elif i < n_th + n_om:
                rows, cols = self.omega.free
                j = i - n_th
                if rows[j] != cols[j] or self.omega.structure != "diagonal":
                    raise ValueError(f"only variances of a diagonal omega can be fixed, not {name}")
                if not value > 0:
                    raise ValueError(f"fixed variance {name} must be > 0, got {value}")
                u[i] = 0.5 * np.log(value)
            else:
                if not value > 0:
                    raise ValueError(f"fixed {name} must be > 0, got {value}")
                u[i] = np.log(value)
        return u

    # ---------------------------------------------------------- per subject
    def individual_parameters(self, theta, eta, subject) -> dict:
        cov = {name: subject.cov_baseline[i] for i, name in enumerate(subject.covariate_names)}
        eta_map = {name: eta[i] for i, name in enumerate(self.eta_names)}
        return self.individual(theta, eta_map, cov)

    def predict(self, theta, eta, subject) -> jax.Array:
        """Structural predictions at the subject's observation times."""
        return self.structural.predict(self.individual_parameters(theta, eta, subject), subject)

    def residual(self, f, sigma, subject):
        """``(y, f, R)`` on the error models' scales for one subject's observations.

        ``R`` is the residual variance on that scale (for the exponential model, of
        ``log y``), computed from the untransformed prediction.
        """
        models = self.error_models
        if 0 in models:
            em = models[0]
            return em.transform(subject.obs_dv), em.transform(f), em.variance(f, sigma)
        y_t = jnp.zeros_like(f)
        f_t = jnp.zeros_like(f)
        r = jnp.ones_like(f)
        for dvid, em in models.items():
            sel = subject.obs_dvid == dvid
            y_t = jnp.where(sel, em.transform(subject.obs_dv), y_t)
            f_t = jnp.where(sel, em.transform(f), f_t)
            r = jnp.where(sel, em.variance(f, sigma), r)
        return y_t, f_t, r

    def check(self, population) -> None:
        """Raise a clear error if the data cannot be used with this model: covariates it
        reads that the data lack, no observations, records in compartments the structural
        model does not have (:meth:`StructuralModel.check_population`), observation types
        without an error model, ``DV <= 0`` under the exponential error model."""
        missing = [c for c in self.covariates if c not in population.covariate_names]
        if missing:
            raise ValueError(f"the model uses covariates {missing} that are not columns of the "
                             f"data (covariates there: {list(population.covariate_names)})")
        check_data(self.structural, population)
        models = self.error_models
        mask = np.asarray(population.obs_mask)
        dvid = np.asarray(population.obs_dvid)
        if 0 not in models:
            unknown = sorted(set(dvid[mask].tolist()) - set(models))
            if unknown:
                raise ValueError(f"observations with DVID {unknown} have no error model "
                                 f"(error models for DVID {sorted(models)})")
        for key, em in models.items():
            if isinstance(em, Exponential):
                sel = mask & ((dvid == key) | (key == 0))
                dv = np.asarray(population.obs_dv)
                bad = sel & ~(dv > 0)
                if bad.any():
                    s, j = np.argwhere(bad)[0]
                    row = int(np.asarray(population.obs_row)[s, j])
                    raise ValueError(
                        f"the exponential error model needs DV > 0; subject "
                        f"{population.ids[s]}, row {row}, column DV is {dv[s, j]}")


def typical_individual(model: PopulationModel, theta) -> dict:
    """The typical subject's individual parameters (all random effects 0, no covariates)
    at fixed effects ``theta`` (a mapping, e.g. ``fit.theta``)."""
    eta0 = {name: jnp.zeros(()) for name in model.eta_names}
    return model.individual({k: jnp.asarray(v) for k, v in theta.items()}, eta0, {})
