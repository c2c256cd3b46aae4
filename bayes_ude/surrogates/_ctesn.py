"""Continuous-time echo state networks (CTESN): surrogates of stiff solves over a parameter box.

After Anantharaman et al., "Accelerating simulation of stiff nonlinear systems using
continuous-time echo state networks" (2020/2021). Three steps, each done once:

1. **Reference.** The stiff system ``u' = f(t, u, p)`` is solved at one parameter point
   ``p*`` (the centre of the box by default), giving ``x*(t)``.
2. **Reservoir.** A random, non-stiff reservoir driven by it,
   ``dr/dtau = tanh(A r + W_hyb x*(tau))``, ``r(0) = 0``, is solved once (Tsit5). Its states
   ``r(t)`` are a rich set of functions of time shaped by the system's own dynamics.
3. **Projection.** At each training point ``p_i`` of a space-filling design (the stiff
   solves run as one vmapped Rodas5P ensemble), the projection
   ``x(t; p_i) ~= W_out(p_i) phi(r(t))`` is fitted by ridge least squares, and ``W_out(p)``
   is interpolated over the box with radial basis functions (:mod:`._rbf`). A new ``p``
   then costs one RBF evaluation and one matrix product: no ODE solve at all.

``projection="linear"`` (LPCTESN) uses the features ``phi(r) = [1, r]``;
``projection="nonlinear"`` (NPCTESN) adds radial functions of the reservoir state,
``|r - r(t_j)|^3`` at ``n_centres`` reservoir states along the grid, for systems whose
trajectories the linear span of the reservoir does not reach (a small reservoir, fast
transients). The constant feature lets the projection hold the initial state, which the
reservoir (started at 0) cannot. Features are scaled to unit RMS over time; the ridge
weight is relative to the largest squared singular value of the feature matrix.

Time. The reservoir runs in its own time ``tau``, an affine map of ``t`` (``time="linear"``)
or of ``log t`` (``time="log"``, for grids spanning decades such as Robertson's
[1e-5, 1e5]), scaled so that the grid spans :data:`HORIZON` reservoir time units. In
``t`` itself a reservoir with unit rates cannot follow [1e-5, 1e-2] at all (its states move
by at most ``t`` there) and saturates long before 1e5; the log-time reservoir is the same
ODE after a change of the time variable, and its features resolve every decade alike.
This is a departure from the paper, which works in ``t`` on shorter spans.

Checks. A parameter outside the box raises ``ValueError`` for concrete input by default
(``extrapolate="warn"`` warns, ``"allow"`` evaluates anyway); under ``jit``/``vmap``
(for example inside NUTS), where values cannot be seen, an outside point gives NaN, as a
failed solve does, unless ``extrapolate="allow"``. A reference solve that fails raises;
training solves that fail are left out of the fit and reported (a warning and
:class:`TrainingReport`), never used.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float
from tqdm.auto import tqdm

from ..solvers import Rodas5P, Tsit5, solve, solve_ensemble, status_message
from ._design import ParameterBox, design, unit_inside
from ._rbf import KERNELS, RBFInterpolant, fit_rbf, min_centres

PROJECTIONS = ("linear", "nonlinear")
TIMES = ("log", "linear")
EXTRAPOLATE = ("error", "warn", "allow")

#: Reservoir time units spanned by the save grid. The reservoir's rates are O(1) (tanh of
#: O(1) inputs), so over 20 units its states develop many distinct shapes without
#: saturating; 10-40 gave the same accuracy on Robertson and POLLU.
HORIZON = 20.0

#: The widest gap, in reservoir time, between training save times inside which
#: :meth:`CTESN.at` evaluates without a warning. The projection is fitted at the save
#: times only; between them nothing holds it. Measured on ``u' = -k u`` (``t`` in [1, 5],
#: a reservoir of 100, 16 training points), largest relative error between the save times
#: for gaps of 4, 2, 1, 0.5 and 0.25 reservoir time units: 1.4e-1, 2.8e-2, 1.0e-3,
#: 1.4e-4 and 3.3e-5, against 1-2e-5 at the save times.
MAX_GAP_TAU = 0.5

#: Points of the reference trajectory that drive the reservoir: this many per save time
#: (at least 400), evenly spaced in reservoir time, linearly interpolated between.
DRIVE_POINTS_PER_SAVE = 8


# ------------------------------------------------------------------ the reservoir


class Reservoir(eqx.Module):
    """``dr/dtau = tanh(A r + W_hyb x*(tau))`` driven by the normalised reference ``x*``."""

    A: Float[Array, "n n"]
    W_hyb: Float[Array, "n s"]
    drive_tau: Float[Array, " m"]
    drive: Float[Array, "m s"]
    t_first: float = eqx.field(static=True)
    t_last: float = eqx.field(static=True)
    time: str = eqx.field(static=True)

    def tau(self, t: ArrayLike) -> Array:
        """Reservoir time of ``t``: 0 at the first save time, :data:`HORIZON` at the last."""
        g = jnp.log if self.time == "log" else (lambda x: x)
        a, b = g(jnp.asarray(self.t_first)), g(jnp.asarray(self.t_last))
        return HORIZON * (g(jnp.asarray(t)) - a) / (b - a)

    def field(self, tau, r, _):
        x = jax.vmap(jnp.interp, in_axes=(None, None, 1))(tau, self.drive_tau, self.drive)
        return jnp.tanh(self.A @ r + self.W_hyb @ x)

    def states(self, ts: ArrayLike) -> Array:
        """Reservoir states at the times ``ts`` (inside the training grid), ``(len(ts), n)``."""
        taus = self.tau(ts)
        sol = solve(_reservoir_field, jnp.zeros(self.A.shape[0]), taus, self, t0=0.0,
                    solver=Tsit5(), rtol=1e-9, atol=1e-11, max_steps=100_000)
        if not bool(sol.success):
            raise RuntimeError("the reservoir solve failed: "
                               f"{status_message(int(sol.status))}")
        return sol.ys


def _reservoir_field(tau, r, reservoir: Reservoir):
    return reservoir.field(tau, r, None)


def _random_reservoir(key, size: int, n_states: int, spectral_radius: float):
    ka, kw = jax.random.split(key)
    a = np.asarray(jax.random.normal(ka, (size, size)))
    radius = float(np.max(np.abs(np.linalg.eigvals(a)))) if size > 1 else abs(float(a[0, 0]))
    a = a * (spectral_radius / radius)
    w = np.asarray(jax.random.uniform(kw, (size, n_states), minval=-1.0, maxval=1.0))
    return jnp.asarray(a), jnp.asarray(w)


# ------------------------------------------------------------------ features


class Features(eqx.Module):
    """``phi(r) = [1, r / rms, (|r / rms - c_j|^3 / s_j)_j]`` (the last block only for the
    nonlinear projection)."""

    rms: Float[Array, " n"]
    centres: Float[Array, "k n"]
    kernel_rms: Float[Array, " k"]

    def __call__(self, r: Array) -> Array:
        z = r / self.rms
        d2 = jnp.sum((z[:, None, :] - self.centres) ** 2, axis=-1)
        return jnp.concatenate([jnp.ones((z.shape[0], 1), z.dtype), z,
                                d2 ** 1.5 / self.kernel_rms], axis=1)


def _features(r: np.ndarray, projection: str, n_centres: int) -> Features:
    rms = np.sqrt(np.mean(r ** 2, axis=0))
    rms = np.where(rms > 0, rms, 1.0)
    z = r / rms
    if projection == "linear":
        return Features(jnp.asarray(rms), jnp.zeros((0, r.shape[1])), jnp.zeros((0,)))
    idx = np.unique(np.linspace(0, len(z) - 1, min(n_centres, len(z))).round().astype(int))
    centres = z[idx]
    k = np.sum((z[:, None] - centres[None]) ** 2, axis=-1) ** 1.5
    krms = np.sqrt(np.mean(k ** 2, axis=0))
    return Features(jnp.asarray(rms), jnp.asarray(centres),
                    jnp.asarray(np.where(krms > 0, krms, 1.0)))


# ------------------------------------------------------------------ the surrogate


@dataclasses.dataclass(frozen=True)
class TrainingReport:
    """How a :class:`CTESN` was trained.

    ``n_train`` training points requested, ``n_failed`` of them whose stiff solve failed
    (left out; ``failed`` holds their parameters and ``failure`` the first status message),
    ``reference`` the parameter point that drives the reservoir, ``t0`` the start of the
    solves (what :func:`held_out_error` solves from by default), ``solve_seconds`` the wall
    time of the reference and training solves (compilation included), ``fit_seconds`` that
    of the reservoir solve, projections and interpolation.
    """

    n_train: int
    n_failed: int
    failed: tuple[tuple[float, ...], ...]
    failure: str
    reference: tuple[float, ...]
    t0: float
    reservoir_size: int
    projection: str
    kernel: str
    modes: int
    time: str
    solve_seconds: float
    fit_seconds: float

    def __str__(self) -> str:
        lines = [f"CTESN ({self.projection} projection, reservoir of {self.reservoir_size}, "
                 f"{self.time} time, {self.modes} modes, {self.kernel} RBF): "
                 f"{self.n_train - self.n_failed} of {self.n_train} training solves used",
                 f"  stiff solves {self.solve_seconds:.1f} s, fit {self.fit_seconds:.1f} s"]
        if self.n_failed:
            lines.append(f"  {self.n_failed} failed ({self.failure}), left out")
        return "\n".join(lines)


class CTESN(eqx.Module):
    """A trained CTESN surrogate: ``surrogate(p)`` is the solution at ``surrogate.ts``.

    ``p`` has shape ``(d,)`` or ``(..., d)`` (batches evaluate at once); the result has shape
    ``(..., len(ts), n_states)``. It is differentiable in ``p`` (``jax.grad``, ``jax.jacfwd``)
    and works under ``jit`` and ``vmap``. ``weights(p)`` is the interpolated projection
    ``W_out(p)``; ``at(ts)`` gives the same surrogate on other times inside the grid.
    See the module notes for what happens outside the training box.

    ``W_out(p) = mean_weights + sum_k c_k(p) weight_modes[k]``: the projections of the
    training points are compressed to their leading modes (a proper orthogonal
    decomposition of the trajectories they give, truncated where the largest error over the
    training set falls below ``pod_tol``), and the RBF interpolates the coefficients
    ``c_k`` (and a last output identically 1, which carries the mean). ``mean`` and
    ``modes`` are the same mean and modes as trajectories at ``ts`` (``features @ weights *
    scale``, in the states' units), so that an evaluation costs one small RBF and one
    matrix product.
    """

    box: ParameterBox
    ts: Float[Array, " T"]
    features: Float[Array, "T f"]
    interpolant: RBFInterpolant
    mean_weights: Float[Array, "f s"]
    weight_modes: Float[Array, "r f s"]
    mean: Float[Array, "T s"]
    modes: Float[Array, "r T s"]
    scale: Float[Array, " s"]
    reservoir: Reservoir
    feature_map: Features
    extrapolate: str = eqx.field(static=True)
    training: TrainingReport = eqx.field(static=True)

    @property
    def n_states(self) -> int:
        return int(self.scale.shape[0])

    def _check_shape(self, p: Array) -> None:
        if p.ndim == 0 or p.shape[-1] != self.box.dim:
            raise ValueError(f"p must have {self.box.dim} parameters on its last axis, got "
                             f"shape {p.shape}")

    def weights(self, p: ArrayLike) -> Array:
        """``W_out(p)``, shape ``(..., n_features, n_states)`` (in scaled units)."""
        p = jnp.asarray(p)
        self._check_shape(p)
        self._check_inside(p)
        c = self.interpolant(self._unit(p))[..., :-1]
        return self.mean_weights + jnp.einsum("...r,rfs->...fs", c, self.weight_modes)

    def _unit(self, p: Array) -> Array:
        """Unit-cube coordinates of ``p``; NaN outside the box unless ``extrapolate`` is
        ``"allow"`` (see the module notes)."""
        u = self.box.to_unit(p)
        if self.extrapolate != "allow":
            # NaN coordinates make every value NaN (masking u, not the coefficients, lets
            # XLA fuse the test into the interpolant's passes)
            u = jnp.where(unit_inside(u)[..., None], u, jnp.nan)
        return u

    def __call__(self, p: ArrayLike) -> Array:
        p = jnp.asarray(p)
        self._check_shape(p)
        self._check_inside(p)
        u = self._unit(p)
        # the interpolant's last output is the constant 1 (RBFInterpolant.with_constant), so
        # that one product writes the result, [c, 1] @ [modes; mean]: the output (T x
        # n_states values a point) is most of an evaluation's cost, and a separate "+ mean"
        # pass over it measured ~20 % slower (1,000 Robertson points, interleaved timings)
        c1 = self.interpolant(u)
        basis = jnp.concatenate([self.modes, self.mean[None]]).reshape(c1.shape[-1], -1)
        flat = c1 @ basis
        return flat.reshape(*flat.shape[:-1], *self.mean.shape)

    def _check_inside(self, p) -> None:
        if self.extrapolate == "allow" or isinstance(p, jax.core.Tracer):
            return
        pc = np.asarray(p, float)
        if np.all(np.asarray(self.box.inside(pc))):
            return
        msg = self.box.describe_outside(pc.reshape(-1, self.box.dim))
        if self.extrapolate == "error":
            raise ValueError(f"{msg}; the surrogate is only trained inside it (pass "
                             "extrapolate='warn' or 'allow' to fit_ctesn to evaluate outside)")
        warnings.warn(f"{msg}; the surrogate extrapolates there", UserWarning, stacklevel=3)

    def at(self, ts: ArrayLike) -> CTESN:
        """The same surrogate saving at ``ts`` (strictly increasing, inside the training
        grid): the reservoir is solved once more at these times.

        Between the training save times the projection is held by nothing but the
        reservoir's smoothness: a time inside a gap wider than :data:`MAX_GAP_TAU`
        reservoir time units (fewer than ~41 save times over the grid) warns, and its
        accuracy is best checked with ``held_out_error(surrogate.at(ts), ...)``."""
        ts = np.asarray(ts, float)
        lo, hi = float(self.ts[0]), float(self.ts[-1])
        if ts.ndim != 1 or ts.size < 1 or (ts.size > 1 and not np.all(np.diff(ts) > 0)):
            raise ValueError("ts must be a strictly increasing 1-D array of times")
        if ts[0] < lo * (1 - 1e-12) or ts[-1] > hi * (1 + 1e-12):
            raise ValueError(f"ts must lie inside the training grid [{lo:g}, {hi:g}], got "
                             f"[{ts[0]:g}, {ts[-1]:g}]")
        self._warn_wide_gaps(np.clip(ts, lo, hi))
        feats = self.feature_map(self.reservoir.states(np.clip(ts, lo, hi)))
        mean, modes = _trajectories(feats, self.mean_weights, self.weight_modes, self.scale)
        return dataclasses.replace(self, ts=jnp.asarray(ts), features=feats, mean=mean,
                                   modes=modes)


    def _warn_wide_gaps(self, ts: np.ndarray) -> None:
        grid = np.asarray(self.reservoir.tau(self.ts))
        tau = np.asarray(self.reservoir.tau(ts))
        i = np.clip(np.searchsorted(grid, tau), 1, len(grid) - 1)
        gap = grid[i] - grid[i - 1]
        on_grid = np.isclose(tau, grid[i]) | np.isclose(tau, grid[i - 1])
        wide = (gap > MAX_GAP_TAU) & ~on_grid
        if wide.any():
            k = int(np.flatnonzero(wide)[0])
            warnings.warn(
                f"{int(wide.sum())} of the {len(ts)} times lie between training save times "
                f"{gap[k]:.2g} reservoir time units apart (first t = {ts[k]:g}, between "
                f"{float(self.ts[i[k] - 1]):g} and {float(self.ts[i[k]]):g}); the projection "
                f"was fitted at the save times only and is not held there (more than "
                f"{MAX_GAP_TAU} apart: errors measured 10-1000x those at the save times). "
                "Train on a denser grid, or check with held_out_error(surrogate.at(ts), ...)",
                UserWarning, stacklevel=3)


def _trajectories(feats, mean_weights, weight_modes, scale):
    """The mean and modes of ``W_out`` as trajectories at the features' times, in units."""
    return (feats @ mean_weights * scale,
            jnp.einsum("tf,rfs->rts", feats, weight_modes) * scale)


# ------------------------------------------------------------------ training


def _check_inputs(ts, t0, u0, n_train, reservoir_size, projection, n_centres, time_, extrapolate,
                  ridge, spectral_radius, chunk, dim, kernel, pod_tol):
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {tuple(KERNELS)}, got {kernel!r}")
    if not (isinstance(pod_tol, (int, float)) and pod_tol > 0):
        raise ValueError(f"pod_tol must be a positive number, got {pod_tol!r}")
    if ts.ndim != 1 or ts.size < 2:
        raise ValueError(f"ts must be a 1-D array of at least 2 save times, got shape {ts.shape}")
    if not np.all(np.isfinite(ts)) or not np.all(np.diff(ts) > 0):
        raise ValueError("ts must be finite and strictly increasing")
    if t0 is not None and t0 > ts[0]:
        raise ValueError(f"t0={t0} must not exceed ts[0]={ts[0]}")
    if time_ not in TIMES:
        raise ValueError(f"time must be one of {TIMES}, got {time_!r}")
    if time_ == "log" and ts[0] <= 0:
        raise ValueError(f"time='log' needs positive save times, got ts[0]={ts[0]} (start "
                         "the grid after t0, e.g. np.geomspace(1e-5, 1e5, 100) with t0=0, or "
                         "pass time='linear')")
    if u0.ndim != 1:
        raise ValueError(f"u0 must be a 1-D state vector, got shape {u0.shape}")
    for name, value, least in (("n_train", n_train, min_centres(dim, kernel)),
                               ("reservoir_size", reservoir_size, 1),
                               ("n_centres", n_centres, 1), ("chunk", chunk, 1)):
        if not isinstance(value, (int, np.integer)) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
    if extrapolate not in EXTRAPOLATE:
        raise ValueError(f"extrapolate must be one of {EXTRAPOLATE}, got {extrapolate!r}")
    for name, value in (("ridge", ridge), ("spectral_radius", spectral_radius)):
        if not (isinstance(value, (int, float)) and value > 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}")


def _drive_grid(ts: np.ndarray, time_: str) -> np.ndarray:
    n = max(DRIVE_POINTS_PER_SAVE * len(ts), 400)
    if time_ == "log":
        return np.geomspace(ts[0], ts[-1], n)
    return np.linspace(ts[0], ts[-1], n)


def _ensemble(vector_field, u0, ts, params, solve_kw, chunk, devices, progress):
    """Stiff solves at ``params`` (rows) in chunks of ``chunk`` (one compiled program)."""
    n = params.shape[0]
    size = min(chunk, n)
    ys, status = [], []
    with tqdm(total=n, desc="CTESN training solves", disable=not progress, leave=False) as bar:
        for start in range(0, n, size):
            block = params[start:start + size]
            pad = size - block.shape[0]
            if pad:  # the last chunk repeats its last point: one shape, one compilation
                block = np.concatenate([block, np.repeat(block[-1:], pad, axis=0)])
            sol = solve_ensemble(vector_field, u0, ts, jnp.asarray(block), batch_u0=False,
                                 devices=devices, **solve_kw)
            ys.append(np.asarray(sol.ys)[:size - pad])
            status.append(np.asarray(sol.status)[:size - pad])
            bar.update(size - pad)
    return np.concatenate(ys), np.concatenate(status)


def fit_ctesn(
    vector_field: Callable[[Any, Array, Array], Array],
    u0: ArrayLike,
    ts: ArrayLike,
    lower: ArrayLike,
    upper: ArrayLike,
    *,
    t0: float | None = None,
    n_train: int = 512,
    reservoir_size: int = 100,
    projection: str = "linear",
    n_centres: int = 50,
    log_params: bool = True,
    time: str = "log",
    reference: ArrayLike | None = None,
    design_kind: str = "sobol",
    solver: dfx.AbstractSolver | None = None,
    rtol: float = 1e-8,
    atol: float = 1e-12,
    max_steps: int = 100_000,
    spectral_radius: float = 1.0,
    ridge: float = 1e-12,
    kernel: str = "septic",
    pod_tol: float = 1e-5,
    extrapolate: str = "error",
    chunk: int = 256,
    devices=None,
    progress: bool = True,
    key: jax.Array | None = None,
) -> CTESN:
    """Train a CTESN surrogate of ``u' = vector_field(t, u, p)`` over a parameter box.

    Parameters
    ----------
    vector_field : ``f(t, u, p)`` with ``p`` a 1-D array of the box's parameters.
    u0 : the initial state (1-D, the same for every ``p``).
    ts : save times, strictly increasing (positive for ``time="log"``).
    lower, upper : the box ``lower <= p <= upper`` the surrogate is trained and valid on.
    t0 : start of the solves (default ``ts[0]``); e.g. 0 with a log grid from 1e-5.
    n_train : training points, drawn by ``design_kind`` (``"sobol"``, default, ``"lhs"`` or
        ``"uniform"``) in the unit cube of the box (log scale when ``log_params``).
    reservoir_size, spectral_radius : the reservoir's size and the spectral radius of ``A``.
    projection : ``"linear"`` (LPCTESN) or ``"nonlinear"`` (NPCTESN, with ``n_centres``
        radial features of the reservoir state); see the module notes.
    time : ``"log"`` (default) or ``"linear"``: the reservoir's clock (module notes).
    reference : the parameter point whose solution drives the reservoir (default: the
        centre of the box).
    solver, rtol, atol, max_steps : the stiff solves (default :class:`Rodas5P` at rtol 1e-8).
    ridge : ridge weight of the projections, relative to the largest squared singular value
        of the feature matrix.
    kernel : the RBF over the box: ``"septic"`` (default), ``"quintic"`` or ``"cubic"``
        (:mod:`._rbf`; the higher, the more accurate on smooth dependence).
    pod_tol : the projections are compressed to as many modes as keep the largest error
        over the training trajectories below this (in units of each species' largest value).
    extrapolate : ``"error"`` (default), ``"warn"`` or ``"allow"``: what a parameter
        outside the box does (module notes).
    chunk, devices, progress : the training solves run as vmapped ensembles of ``chunk``
        members (over ``devices``, as in :func:`solvers.solve_ensemble`) with a progress bar.
    key : seeds the design and the reservoir (default ``jax.random.key(0)``).

    Returns
    -------
    CTESN, with its :class:`TrainingReport` in ``.training``.

    Raises
    ------
    ValueError for bad input (named), before any solve; RuntimeError when the reference
    solve fails or too few training solves succeed for the RBF.
    """
    box = ParameterBox(lower, upper, log=log_params)
    ts = np.asarray(ts, float)
    u0 = jnp.asarray(u0, float)
    _check_inputs(ts, t0, u0, n_train, reservoir_size, projection, n_centres, time, extrapolate,
                  ridge, spectral_radius, chunk, box.dim, kernel, pod_tol)
    p_ref = box.from_unit(jnp.full(box.dim, 0.5)) if reference is None else jnp.asarray(
        reference, float)
    if p_ref.shape != (box.dim,):
        raise ValueError(f"reference must have the box's {box.dim} parameters, got shape "
                         f"{p_ref.shape}")
    if not bool(box.inside(p_ref)):
        raise ValueError("reference: " + box.describe_outside(np.asarray(p_ref)))
    try:
        out = jax.eval_shape(vector_field, 0.0, u0, p_ref)
    except Exception as exc:
        raise ValueError(f"vector_field(t, u0, p) could not be evaluated with p of shape "
                         f"({box.dim},): {type(exc).__name__}: {exc}") from exc
    if getattr(out, "shape", None) != u0.shape:
        raise ValueError(f"vector_field must return an array of the shape of u0 {u0.shape}, "
                         f"got {getattr(out, 'shape', type(out).__name__)}")
    key = jax.random.key(0) if key is None else key
    k_design, k_reservoir = jax.random.split(key)
    solve_kw = dict(solver=Rodas5P() if solver is None else solver, rtol=rtol, atol=atol,
                    t0=ts[0] if t0 is None else t0, max_steps=max_steps)

    # 1. the reference and training solves
    start = _now()
    dense = _drive_grid(ts, time)
    ref = solve(vector_field, u0, dense, p_ref, **solve_kw)
    if not bool(ref.success):
        raise RuntimeError(f"the reference solve at p = {np.asarray(p_ref).tolist()} failed: "
                           f"{status_message(int(ref.status))}; the reservoir cannot be driven "
                           "by it (check the solver settings, or pass another reference)")
    unit = design(n_train, box.dim, design_kind, k_design)
    params = np.asarray(box.from_unit(unit))
    ys, status = _ensemble(vector_field, u0, ts, params, solve_kw, chunk, devices, progress)
    solve_seconds = _now() - start

    ok = (status == 0) & np.all(np.isfinite(ys), axis=(1, 2))
    n_failed = int(np.sum(~ok))
    failure = ""
    if n_failed:
        first = int(np.flatnonzero(~ok)[0])
        failure = (status_message(int(status[first])) if status[first] != 0
                   else "non-finite values")
        warnings.warn(f"{n_failed} of {n_train} training solves failed ({failure}); they are "
                      f"left out of the surrogate (first at p = {params[first].tolist()}). "
                      "See CTESN.training.failed.", UserWarning, stacklevel=2)
    if ok.sum() < min_centres(box.dim, kernel):
        raise RuntimeError(f"only {int(ok.sum())} of {n_train} training solves succeeded; at "
                           f"least {min_centres(box.dim, kernel)} are needed for a {kernel} "
                           f"RBF ({failure})")

    # 2. the reservoir, driven by the normalised reference
    start = _now()
    x_ref = np.asarray(ref.ys)
    peak = np.max(np.abs(x_ref), axis=0)
    a, w_hyb = _random_reservoir(k_reservoir, reservoir_size, u0.shape[0], spectral_radius)
    reservoir = Reservoir(a, w_hyb, jnp.zeros(1), jnp.zeros((1, u0.shape[0])),
                          float(ts[0]), float(ts[-1]), time)
    reservoir = dataclasses.replace(reservoir, drive_tau=reservoir.tau(dense),
                                    drive=jnp.asarray(x_ref / np.where(peak > 0, peak, 1.0)))
    r = np.asarray(reservoir.states(ts))
    feature_map = _features(r, projection, n_centres)
    feats = np.asarray(feature_map(jnp.asarray(r)))

    # 3. projections at every training point (ridge least squares by one SVD), interpolated
    scale = np.max(np.abs(ys[ok]), axis=(0, 1))
    scale = np.where(scale > 0, scale, 1.0)
    u, s, vt = np.linalg.svd(feats, full_matrices=False)
    lam = ridge * s[0] ** 2
    solve_ls = vt.T * (s / (s ** 2 + lam)) @ u.T  # (features, T)
    w_out = np.einsum("ft,nts->nfs", solve_ls, ys[ok] / scale)
    mean_w, modes_w, coeffs = _compress(w_out, feats, pod_tol)
    interpolant = fit_rbf(unit[ok], coeffs, kernel).with_constant()
    fit_seconds = _now() - start

    report = TrainingReport(
        n_train=n_train, n_failed=n_failed,
        failed=tuple(tuple(float(x) for x in row) for row in params[~ok]), failure=failure,
        reference=tuple(float(x) for x in np.asarray(p_ref)), t0=float(solve_kw["t0"]),
        reservoir_size=reservoir_size,
        projection=projection, kernel=kernel, modes=int(modes_w.shape[0]), time=time,
        solve_seconds=solve_seconds, fit_seconds=fit_seconds)
    feats, scale = jnp.asarray(feats), jnp.asarray(scale)
    mean_w, modes_w = jnp.asarray(mean_w), jnp.asarray(modes_w)
    mean, modes = _trajectories(feats, mean_w, modes_w, scale)
    return CTESN(box=box, ts=jnp.asarray(ts), features=feats, interpolant=interpolant,
                 mean_weights=mean_w, weight_modes=modes_w, mean=mean, modes=modes,
                 scale=scale, reservoir=reservoir,
                 feature_map=feature_map, extrapolate=extrapolate, training=report)


def _compress(w_out: np.ndarray, feats: np.ndarray, tol: float):
    """Mean, leading modes (``W``-space) and their coefficients of the projections
    ``w_out`` (n, f, s): a POD of the trajectories ``feats @ w_out[i]``, truncated at the
    fewest modes whose largest error over the training set is at most ``tol``."""
    n = w_out.shape[0]
    mean = w_out.mean(axis=0)
    dev = w_out - mean
    traj = np.einsum("tf,nfs->nts", feats, dev).reshape(n, -1)
    u, s, vt = np.linalg.svd(traj, full_matrices=False)
    residual = traj.copy()
    rank = len(s)
    for r in range(len(s)):
        if np.max(np.abs(residual)) <= tol:
            rank = max(r, 1)
            break
        residual -= np.outer(u[:, r] * s[r], vt[r])
    coeffs = u[:, :rank] * s[:rank]
    inverse = np.divide(1.0, s[:rank], out=np.zeros(rank), where=s[:rank] > 0)  # all alike: 0
    modes = np.einsum("nr,nfs->rfs", u[:, :rank] * inverse, dev)
    return mean, modes, coeffs


def _now() -> float:
    return time.perf_counter()


# ------------------------------------------------------------------ accuracy on held-out points


class HeldOutError(NamedTuple):
    """Errors of a surrogate against stiff solves at held-out parameter points.

    ``errors[i, s]``: the largest error of species ``s`` over the save times at point
    ``params[i]``, relative to that species' largest value there. ``median`` and ``p99``
    are over the points (per species); ``n_failed`` reference solves that failed are left
    out.
    """

    params: np.ndarray
    errors: np.ndarray
    median: np.ndarray
    p99: np.ndarray
    n_failed: int

    def table(self, names: list[str] | None = None) -> str:
        names = names or [f"u{i + 1}" for i in range(self.errors.shape[1])]
        width = max(8, *(len(n) for n in names))
        lines = [f"{'species':<{width}}  median   99th pct   max   ({len(self.errors)} points)"]
        for i, name in enumerate(names):
            lines.append(f"{name:<{width}}  {self.median[i]:7.3%}  {self.p99[i]:7.3%}  "
                         f"{self.errors[:, i].max():7.3%}")
        return "\n".join(lines)


def held_out_error(surrogate: CTESN, vector_field: Callable, u0: ArrayLike, *, n: int = 200,
                   params: ArrayLike | None = None, t0: float | None = None,
                   solver: dfx.AbstractSolver | None = None, rtol: float = 1e-8,
                   atol: float = 1e-12, max_steps: int = 100_000, devices=None,
                   key: jax.Array | None = None) -> HeldOutError:
    """The surrogate against the stiff solves at ``n`` uniform random points of its box
    (independent of the training design; seeded by ``key``, default ``jax.random.key(1)``),
    or at ``params`` (rows). The solves start at ``t0``, by default the training's
    (``surrogate.training.t0``): a surrogate trained from ``t0 = 0`` on a grid from 1e-5
    compared with solves from 1e-5 would be judged against another problem."""
    box = surrogate.box
    if params is None:
        unit = design(n, box.dim, "uniform", jax.random.key(1) if key is None else key)
        params = np.asarray(box.from_unit(unit))
    params = np.atleast_2d(np.asarray(params, float))
    ts = np.asarray(surrogate.ts)
    solve_kw = dict(solver=Rodas5P() if solver is None else solver, rtol=rtol, atol=atol,
                    t0=surrogate.training.t0 if t0 is None else t0, max_steps=max_steps)
    ref, status = _ensemble(vector_field, jnp.asarray(u0, float), ts, params, solve_kw,
                            256, devices, False)
    ok = (status == 0) & np.all(np.isfinite(ref), axis=(1, 2))
    approx = np.asarray(surrogate(jnp.asarray(params[ok])))
    peak = np.max(np.abs(ref[ok]), axis=1)
    floor = 1e-12 * np.asarray(surrogate.scale)
    errors = np.max(np.abs(approx - ref[ok]), axis=1) / np.maximum(peak, floor)
    return HeldOutError(params[ok], errors, np.median(errors, axis=0),
                        np.percentile(errors, 99, axis=0), int(np.sum(~ok)))
