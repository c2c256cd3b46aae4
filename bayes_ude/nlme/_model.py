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

from .._compile import ONE_OFF, filter_jit
from ._error import ErrorModel
from ._model_checks import check_model_data
from ._occasions import count_occasions, predict_by_occasion
from ._omega import Omega, _chol_to_vector
from ._pk import ClosedFormModel, reset_times
from ._structural import StructuralModel

__all__ = ["Omega", "PopulationModel", "typical_individual", "unpacked"]


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
    iov : random effects of ``omega`` that are per occasion (inter-occasion variability,
        ``_occasions.py``): each occasion ``k`` of a subject has its own draw ``kappa_k ~
        N(0, Pi)`` of them (``Pi`` their part of ``omega``, which must not correlate them
        with the others); ``individual`` reads them under their names like any random
        effect and is called once per occasion. Closed-form structural models only.
    occasion : the data column that numbers the occasions (default ``OCC``).
    n_occasions : the largest number of occasions of one subject; set from the data by
        :meth:`specialised` (every fit does that).
    l2 : L2 penalties ``{theta name: lambda}``: ``sum_k lambda_k ||theta_k||^2`` is added
        to the maximum-likelihood objective (OFV, −2LL scale), which is the −2 log density
        of a ``N(0, 1/lambda_k)`` prior on every entry of ``theta_k`` (so the fit is a
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
    iov: Sequence[str] = ()
    occasion: str = "OCC"
    n_occasions: int = 1

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
        bad = [k for k, v in self.sigma.items() if not (v > 0 and np.isfinite(v))]
        if bad:
            raise ValueError("sigma values must be > 0 and finite; got "
                             f"{[(k, self.sigma[k]) for k in bad]}")
        bad = [k for k, v in self.theta.items() if not np.all(np.isfinite(v))]
        if bad:
            raise ValueError(f"theta's initial values must be finite; not finite: {bad}")
        object.__setattr__(self, "l2", {k: float(v) for k, v in dict(self.l2).items()})
        unknown = [k for k in self.l2 if k not in self.theta]
        if unknown:
            raise ValueError(f"l2 names {unknown} are not theta entries; theta has "
                             f"{list(self.theta)}")
        bad = [(k, v) for k, v in self.l2.items() if not v > 0]
        if bad:
            raise ValueError(f"l2 penalties must be > 0, got {bad}")
        names = self.parameter_names()  # theta arrays as name[i]: {"b": [0, 0], "b[0]": 0}
        clash = sorted({n for n in names if names.count(n) > 1})
        if clash:
            raise ValueError(f"parameter names used twice (theta, its array entries name[i], "
                             f"sigma and omega): {clash}")
        object.__setattr__(self, "iov", tuple(self.iov))
        if self.iov:
            self._check_iov()
            object.__setattr__(self, "covariates",
                               tuple(dict.fromkeys((*self.covariates, self.occasion))))

    def _check_iov(self):
        unknown = [n for n in self.iov if n not in self.omega.names]
        if unknown:
            raise ValueError(f"iov names {unknown} are not random effects of omega "
                             f"{list(self.omega.names)}")
        pattern = self.omega.pattern
        per_occasion = np.isin(self.omega.names, self.iov)
        if np.any(pattern[np.ix_(per_occasion, ~per_occasion)]):
            raise ValueError("omega correlates occasion random effects (iov "
                             f"{list(self.iov)}) with between-subject ones; give it blocks "
                             "that keep the two apart")
        s = self.structural
        if not (isinstance(s, ClosedFormModel) and s.central_compartment is not None
                and type(s).rate_matrix is not ClosedFormModel.rate_matrix):
            raise ValueError(f"inter-occasion variability needs a closed-form PK model "
                             f"(iv1cmt, oral1cmt, iv2cmt, oral2cmt), not "
                             f"{type(s).__name__}")

    def specialised(self, population) -> PopulationModel:
        """This model with its structural model specialised to the data's dose types
        (cached, so repeated fits on similar data reuse compiled code)."""
        structural = self.structural.specialise(population)
        n_occ = count_occasions(population, self.occasion) if self.iov else 1
        if structural is self.structural and n_occ == self.n_occasions:
            return self
        cache = self.__dict__.setdefault("_specialised", {})
        if (structural, n_occ) not in cache:
            cache[structural, n_occ] = dataclasses.replace(self, structural=structural,
                                                           n_occasions=n_occ)
        return cache[structural, n_occ]

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
    def between_names(self) -> tuple[str, ...]:
        """omega's random effects that are not per occasion (one draw per subject)."""
        return tuple(n for n in self.omega.names if n not in self.iov)

    def occasion_eta_names(self, name: str) -> list[str]:
        """A subject's draws of the occasion random effect ``name``, one per occasion:
        ``<name>_occ1``, ``<name>_occ2``, ..."""
        return [f"{name}_occ{k + 1}" for k in range(self.n_occasions)]

    @property
    def eta_names(self) -> tuple[str, ...]:
        """A subject's random effects: :attr:`between_names`, then occasion by occasion
        the occasion ones (``iov``, :meth:`occasion_eta_names`; see :meth:`expand_omega`)."""
        per_occasion = [self.occasion_eta_names(n) for n in self.iov]
        return self.between_names + tuple(names[k] for k in range(self.n_occasions)
                                          for names in per_occasion)

    @property
    def n_eta(self) -> int:
        return len(self.eta_names)

    def expand_omega(self, matrix):
        """omega's matrix (or its Cholesky factor), over :attr:`Omega.names`, as the
        covariance (factor) of a subject's :attr:`eta_names`: the occasion block repeated
        once per occasion, nothing shared between occasions. Itself without ``iov``."""
        if not self.iov:
            return matrix
        names = self.omega.names
        between = [names.index(n) for n in self.between_names]
        per_occ = [names.index(n) for n in self.iov]
        idx = np.asarray(between + per_occ * self.n_occasions)
        group = np.asarray([-1] * len(between) + [k for k in range(self.n_occasions)
                                                  for _ in per_occ])
        return matrix[idx][:, idx] * (group[:, None] == group[None, :])

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
    def compile_quickly(self) -> bool:
        """Whether small populations' programs may be compiled quickly
        (:mod:`bayes_ude._compile`): where the structural model is cheap to evaluate."""
        return self.structural.compile_quickly

    @property
    def sigma_names(self) -> tuple[str, ...]:
        return tuple(self.sigma)

    def unpack(self, u) -> tuple[dict, jax.Array, dict]:
        """Unconstrained vector -> ``(theta, omega, sigma)``, omega the covariance of a
        subject's random effects :attr:`eta_names` (:meth:`expand_omega`)."""
        theta, omega, sigma = self.unpack_estimates(u)
        return theta, self.expand_omega(omega), sigma

    def unpack_estimates(self, u) -> tuple[dict, jax.Array, dict]:
        """Unconstrained vector -> ``(theta, omega, sigma)``, omega over
        :attr:`Omega.names` (the estimated matrix; :meth:`unpack` without IOV)."""
        n_th = self.n_theta
        rows, cols = self.omega.free
        n_om = rows.size
        theta = self._theta_from_vector(u[:n_th])
        raw = u[n_th:n_th + n_om]
        vals = jnp.where(jnp.asarray(rows == cols), jnp.exp(raw), raw)
        q = len(self.omega.names)
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
        theta, omega, sigma = self.unpack_estimates(u)
        th = self._theta_vector(theta)
        rows, cols = self.omega.free
        return jnp.concatenate([th, omega[rows, cols],
                                jnp.stack([sigma[k] for k in self.sigma_names])])

    def natural_to_vector(self, names_values: Mapping[str, float], u,
                          what: str = "fixed") -> np.ndarray:
        """``u`` with the named natural-scale parameters set (``what``: where the values
        come from, ``"fixed"`` or ``"init"``, for the messages)."""
        u = np.array(u, float)
        names = self.parameter_names()
        n_th = self.n_theta
        n_om = len(self.omega.element_names())
        for name, value in names_values.items():
            if name not in names:
                raise ValueError(f"unknown parameter {name!r} in {what}; parameters are {names}")
            i = names.index(name)
            if i < n_th:
                if not np.isfinite(value):
                    raise ValueError(f"{what} {name} must be a finite number, got {value}")
                u[i] = value
            elif i < n_th + n_om:
                rows, cols = self.omega.free
                j = i - n_th
                if rows[j] != cols[j] or self.omega.structure != "diagonal":
                    raise ValueError(f"only variances of a diagonal omega can be set in {what}, "
                                     f"not {name}")
                if not value > 0 or not np.isfinite(value):
                    raise ValueError(f"{what} variance {name} must be > 0 and finite, got "
                                     f"{value}")
                u[i] = 0.5 * np.log(value)
            else:
                if not value > 0 or not np.isfinite(value):
                    raise ValueError(f"{what} {name} must be > 0 and finite, got {value}")
                u[i] = np.log(value)
        return u

    # ---------------------------------------------------------- per subject
    def individual_parameters(self, theta, eta, subject, kappa=None) -> dict:
        """A subject's parameters at its random effects ``eta`` (over :attr:`eta_names`);
        with IOV, those of an occasion whose ``kappa`` (over ``iov``) is given, or, without
        one, at ``kappa = 0`` (the subject's typical occasion)."""
        cov = {name: subject.cov_baseline[i] for i, name in enumerate(subject.covariate_names)}
        eta_map = {name: eta[i] for i, name in enumerate(self.between_names)}
        for j, name in enumerate(self.iov):
            eta_map[name] = jnp.zeros(()) if kappa is None else kappa[j]
        return self.individual(theta, eta_map, cov)

    def predict(self, theta, eta, subject) -> jax.Array:
        """Structural predictions at the subject's observation times."""
        if not self.iov:
            return self.structural.predict(self.individual_parameters(theta, eta, subject),
                                           subject)
        kappas = jnp.reshape(eta[self.n_eta - self.n_occasions * len(self.iov):],
                             (self.n_occasions, len(self.iov)))
        params = jax.vmap(lambda k: self.individual_parameters(theta, eta, subject, k))(kappas)
        resets = (reset_times(subject) if self.structural.resets else None)
        return predict_by_occasion(self.structural, params, subject, self.occasion, resets)

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
        """Raise a clear error if the data cannot be used with this model, warn where they
        would be used otherwise than the data say (:func:`check_model_data`)."""
        check_model_data(self, population)


def typical_individual(model: PopulationModel, theta) -> dict:
    """The typical subject's individual parameters (all random effects 0, no covariates)
    at fixed effects ``theta`` (a mapping, e.g. ``fit.theta``)."""
    eta0 = {name: jnp.zeros(()) for name in model.omega.names}
    return model.individual({k: jnp.asarray(v) for k, v in theta.items()}, eta0, {})


@filter_jit(quick_below=ONE_OFF)
def unpacked(model: PopulationModel, u, estimates: bool = False) -> tuple[dict, jax.Array, dict]:
    """``model.unpack(u)`` (``unpack_estimates`` with ``estimates``) as one compiled
    program: for results, outside any traced function, where its ~20 operations would
    each be a small compilation of its own at start-up."""
    return model.unpack_estimates(u) if estimates else model.unpack(u)
