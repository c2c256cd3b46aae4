"""Training losses for UDEs (and any vector field): single shooting, multiple shooting,
collocation, prediction-error method.

Every loss is an ``equinox.Module`` called as ``loss(params)`` or ``loss(params, batch)``
(``batch``: integer indices of trajectories, for minibatches) and returning a scalar.
The vector field is ``vector_field(t, u, params)``; by default ``params`` is itself the
model, called as ``params(t, u)`` (a :class:`bayes_ude.ude.UDE` or any callable module).

Data: ``ts`` of shape ``(T,)`` shared by all trajectories and ``ys`` of shape ``(T, n)``
(one trajectory) or ``(B, T, n)`` (B trajectories). Residuals are divided by a per-state
``scale`` (default: the standard deviation of each state over all data), so states of
different magnitude weigh alike; the loss is the mean squared scaled residual.

A failed solve (blow-up, too many steps) gives the loss :data:`FAILED_LOSS` (finite, so
that line searches back off and Adam skips the step) instead of NaN.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PyTree

from .. import solvers

#: The loss of a failed solve.
FAILED_LOSS = 1e8


def call_model(t, u, model):
    """The default vector field: the parameters are the model, ``model(t, u)``."""
    return model(t, u)


def _as_times(ts) -> np.ndarray:
    """``ts`` as a float array, checked: 1-D, at least 2 times, finite, increasing."""
    ts = np.asarray(ts, dtype=float)
    if ts.ndim != 1 or ts.shape[0] < 2:
        raise ValueError(f"ts must be a 1-D array of at least 2 times, got shape {ts.shape}")
    if not np.all(np.isfinite(ts)):
        raise ValueError("ts contains NaN or inf")
    if np.any(np.diff(ts) <= 0):
        i = int(np.flatnonzero(np.diff(ts) <= 0)[0])
        raise ValueError(f"ts must be strictly increasing; ts[{i + 1}]={ts[i + 1]} <= "
                         f"ts[{i}]={ts[i]}")
    return ts


def _as_batch(ts, ys, what: str = "ys"):
    ts = _as_times(ts)
    ys = np.asarray(ys, dtype=float)
    if ys.ndim == 2:
        ys = ys[None]
    if ys.ndim != 3:
        raise ValueError(f"{what} must have shape (T, n) or (B, T, n); got {ys.shape}")
    if ys.shape[1] != ts.shape[0]:
        raise ValueError(f"{what} has {ys.shape[1]} time points along axis -2 but ts has "
                         f"{ts.shape[0]}; expected {what} of shape (T, n) or (B, T, n) with "
                         f"T = len(ts)")
    bad = ~np.isfinite(ys)
    if bad.any():
        b, t, s = (int(i[0]) for i in np.nonzero(bad))
        raise ValueError(f"{what} contains {int(bad.sum())} NaN/inf values (first at "
                         f"trajectory {b}, time index {t}, state {s}); remove or impute them")
    return ts, ys


def _scale(ys: np.ndarray, scale) -> np.ndarray:
    n = ys.shape[-1]
    if scale is None:
        s = ys.reshape(-1, n).std(axis=0)
        return np.where(s > 0, s, 1.0)
    if np.size(scale) not in (1, n):
        raise ValueError(f"scale must be a number or one value per state ({n}), got shape "
                         f"{np.shape(scale)}")
    s = np.broadcast_to(np.asarray(scale, dtype=float), (n,))
    if np.any(~((s > 0) & np.isfinite(s))):
        raise ValueError(f"scale must be finite and positive, got {scale!r}")
    return np.array(s)


def _u0(ys: np.ndarray, u0) -> np.ndarray:
    if u0 is None:
        return ys[:, 0]
    u0 = np.asarray(u0, dtype=float)
    if u0.ndim == 1:
        u0 = np.broadcast_to(u0, (ys.shape[0], u0.shape[0]))
    if u0.shape != (ys.shape[0], ys.shape[2]):
        raise ValueError(f"u0 must have shape (n,) or (B, n) = {(ys.shape[0], ys.shape[2])}, "
                         f"got {u0.shape}")
    if not np.all(np.isfinite(u0)):
        b, i = (int(k[0]) for k in np.nonzero(~np.isfinite(u0)))
        raise ValueError(f"u0 contains NaN/inf (first at trajectory {b}, state {i})")
    return np.array(u0)


def _select(x, batch):
    """Rows ``batch`` of ``x``. Indices are checked where they are concrete: JAX would
    clamp one out of range to the last row."""
    if batch is None:
        return x
    if not isinstance(batch, jax.core.Tracer):
        idx = np.asarray(batch)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"batch must hold integer trajectory indices, got dtype {idx.dtype}")
        if idx.size and (idx.min() < -x.shape[0] or idx.max() >= x.shape[0]):
            raise ValueError(f"batch indices must lie in [0, {x.shape[0]}) (the number of "
                             f"trajectories), got {idx.min()}..{idx.max()}")
    return x[batch]


def _solve_batch(options: solvers.SolveOptions, vector_field, u0s, ts, params, **extra):
    """One solve per row of ``u0s`` (vmapped). A single trajectory is solved without the
    vmap: a batched solver loop of one costs its predicates and selects on every step
    (Lotka-Volterra UDE loss+gradient: 405 against 308 us, compilation 4.9 against 2.3 s).
    ``extra``: :func:`bayes_ude.solvers.solve`'s keywords (``t0``)."""
    if u0s.shape[0] == 1:
        sol = options.solve(vector_field, u0s[0], ts, params, **extra)
        return jax.tree.map(lambda x: x[None], sol)
    return jax.vmap(lambda u: options.solve(vector_field, u, ts, params, **extra))(u0s)


def _concrete_first(ts) -> float | None:
    """``ts[0]`` as a float, or ``None`` under tracing."""
    return None if isinstance(ts, jax.core.Tracer) else float(np.asarray(ts).reshape(-1)[0])


def _mse(pred, ys, scale, ok):
    """Mean squared scaled residual; FAILED_LOSS if any solve failed (finite gradients)."""
    pred = jnp.where(ok, pred, 0.0)
    value = jnp.mean(((pred - ys) / scale) ** 2)
    return jnp.where(jnp.all(ok), value, FAILED_LOSS)


class SingleShooting(eqx.Module):
    """Solve each trajectory from its initial state over the whole span; compare with data.

    Attributes
    ----------
    ts, ys, u0, scale : the data (``ys`` as ``(B, T, n)``), initial states ``(B, n)``
        (default: the first data point of each trajectory) and per-state residual scale.
    vector_field : ``f(t, u, params)``.
    """

    ts: Array
    ys: Array
    u0: Array
    scale: Array
    vector_field: Callable = eqx.field(static=True)
    options: solvers.SolveOptions

    def __init__(self, ts, ys, *, u0=None, vector_field: Callable = call_model, scale=None,
                 solver=None, rtol=1e-6, atol=1e-8, max_steps=10_000, sensitivity="auto"):
        ts, ys = _as_batch(ts, ys)
        self.ts, self.ys = jnp.asarray(ts), jnp.asarray(ys)
        self.u0 = jnp.asarray(_u0(ys, u0))
        self.scale = jnp.asarray(_scale(ys, scale))
        self.vector_field = vector_field
        self.options = solvers.SolveOptions(solver=solver, rtol=rtol, atol=atol,
                                            max_steps=max_steps, sensitivity=sensitivity)

    @property
    def n_trajectories(self) -> int:
        return self.ys.shape[0]

    def predict(self, params, ts=None, u0=None):
        """Solutions ``(B, len(ts), n)`` and success flags ``(B,)``, solved from ``u0``
        (default: the data's initial states) at the data's first time ``self.ts[0]``.
        ``ts`` (default: the data's times) may extend past the data (a forecast) but not
        start before ``self.ts[0]``."""
        u0 = self.u0 if u0 is None else u0
        if ts is None:
            sols = _solve_batch(self.options, self.vector_field, u0, self.ts, params)
        else:
            ts = jnp.asarray(ts)
            first, data_first = _concrete_first(ts), _concrete_first(self.ts)
            if first is not None and data_first is not None and first < data_first:
                raise ValueError(f"ts must not start before the data's first time "
                                 f"{data_first}, where u0 is given; got ts[0]={first}")
            sols = _solve_batch(self.options, self.vector_field, u0, ts, params,
                                t0=self.ts[0])
        return sols.ys, sols.success

    def __call__(self, params, batch=None):
        u0, ys = _select(self.u0, batch), _select(self.ys, batch)
        pred, ok = self.predict(params, u0=u0)
        return _mse(pred, ys, self.scale, ok[:, None, None])


class MultipleShooting(eqx.Module):
    """Split the span into segments of ``segment_length`` intervals, each solved from its
    own initial state (a free parameter, the "shooting node"), plus a continuity penalty
    ``continuity * mean((end of segment k - node k+1)^2 / scale^2)``.

    The parameters are ``{"model": params, "nodes": (B, K, n)}``: build them with
    :meth:`init`, read the model back with ``p["model"]``. Node 0 of each trajectory is
    its known initial state ``u0`` and is not a parameter (``nodes`` holds nodes 1..K-1
    and node 0 is ignored). Segments are solved together (``vmap``), so a long horizon
    costs one short solve. Consecutive segments share their boundary time point.

    Attributes
    ----------
    segment_length : number of time intervals per segment.
    continuity : weight of the continuity penalty.
    """

    ts: Array
    ys: Array
    u0: Array
    scale: Array
    starts: tuple = eqx.field(static=True)
    segment_length: int = eqx.field(static=True)
    continuity: float
    vector_field: Callable = eqx.field(static=True)
    options: solvers.SolveOptions

    def __init__(self, ts, ys, segment_length: int, *, continuity: float = 100.0, u0=None,
                 vector_field: Callable = call_model, scale=None, solver=None, rtol=1e-6,
                 atol=1e-8, max_steps=10_000, sensitivity="auto"):
        ts, ys = _as_batch(ts, ys)
        n_intervals = ts.shape[0] - 1
        if (not isinstance(segment_length, int) or isinstance(segment_length, bool)
                or not 1 <= segment_length <= n_intervals):
            raise ValueError(f"segment_length must be an integer in [1, {n_intervals}] (the "
                             f"number of time intervals), got {segment_length!r}")
        if not continuity >= 0:
            raise ValueError(f"continuity must be >= 0, got {continuity!r}")
        self.ts, self.ys = jnp.asarray(ts), jnp.asarray(ys)
        self.u0 = jnp.asarray(_u0(ys, u0))
        self.scale = jnp.asarray(_scale(ys, scale))
        self.starts = tuple(range(0, n_intervals, segment_length))
        self.segment_length = segment_length
        self.continuity = float(continuity)
        self.vector_field = vector_field
        self.options = solvers.SolveOptions(solver=solver, rtol=rtol, atol=atol,
                                            max_steps=max_steps, sensitivity=sensitivity)

    @property
    def n_trajectories(self) -> int:
        return self.ys.shape[0]

    def init(self, params) -> dict:
        """Parameters for this loss: the model and the nodes, initialised at the data."""
        return {"model": params, "nodes": self.ys[:, np.asarray(self.starts)]}

    def _segments(self):
        """Time indices of each segment, padded by repeating the last index (masked)."""
        idx = np.asarray(self.starts)[:, None] + np.arange(self.segment_length + 1)[None, :]
        last = self.ts.shape[0] - 1
        valid = idx <= last
        return np.minimum(idx, last), valid

    def __call__(self, p, batch=None):
        params = p["model"]
        nodes = _select(p["nodes"], batch)
        u0, ys = _select(self.u0, batch), _select(self.ys, batch)
        nodes = nodes.at[:, 0].set(u0)
        idx, valid = self._segments()
        # Padded save times repeat the segment's end: make them strictly increasing by
        # tiny offsets (a millionth of the last interval, or 8 ulps of the times where
        # that is more; relative to the times, 1e-9 x 1.7e9 s of Unix time ran the solve
        # 34 s past the data); their values are masked out of the loss.
        step = jnp.maximum(1e-6 * (self.ts[-1] - self.ts[-2]) / self.segment_length,
                           8 * jnp.finfo(self.ts.dtype).eps * jnp.max(jnp.abs(self.ts)))
        ts_seg = self.ts[idx] + jnp.asarray(np.cumsum(~valid, axis=1)) * step

        def one(u, t):
            sol = self.options.solve(self.vector_field, u, t, params)
            return sol.ys, sol.success

        pred, ok = jax.vmap(jax.vmap(one, in_axes=(0, 0)), in_axes=(0, None))(nodes, ts_seg)
        # pred: (B, K, L+1, n). Data fit on every valid point (shared boundaries count once).
        mask = jnp.asarray(valid).at[:, 0].set(True)
        mask = mask.at[1:, 0].set(False)  # a segment's first point is the previous one's last
        target = ys[:, idx]
        # a failed segment's NaNs masked before any use (a NaN in the continuity term made
        # the gradient NaN, whatever the FAILED_LOSS returned)
        pred = jnp.where(ok[..., None, None], pred, 0.0)
        resid = pred - target
        weight = mask[None, :, :, None] / self.scale**2
        fit = jnp.sum(weight * resid**2) / (jnp.sum(mask) * ys.shape[0] * ys.shape[2])
        # Continuity: the end of segment k (its last valid point) against node k+1.
        ends = pred[:, :-1, -1]
        gaps = jnp.mean(((ends - nodes[:, 1:]) / self.scale) ** 2) if len(self.starts) > 1 \
            else 0.0
        value = fit + self.continuity * gaps
        return jnp.where(jnp.all(ok), value, FAILED_LOSS)


def smooth(ts, ys, method: str = "spline", bandwidth: float | None = None):
    """Smoothed states and derivative estimates from noisy data, for :class:`Collocation`.

    Parameters
    ----------
    ts : ``(T,)`` times; ys : ``(T, n)`` or ``(B, T, n)`` data.
    method : ``"spline"`` (cubic smoothing spline per state, smoothing parameter by
        generalised cross-validation, ``scipy.interpolate.make_smoothing_spline``) or
        ``"kernel"`` (local quadratic regression with a Gaussian kernel of width
        ``bandwidth``; default 2.5 x the median time step).

    Returns
    -------
    ``(u_hat, du_hat)``, both of the shape of ``ys`` (batched as ``(B, T, n)``).
    """
    from scipy.interpolate import make_smoothing_spline

    ts, ys = _as_batch(ts, ys)
    if method == "spline" and bandwidth is not None:
        raise ValueError("bandwidth applies to method='kernel' only; the spline chooses its "
                         "smoothing by generalised cross-validation")
    if method == "spline":
        u_hat, du_hat = np.empty_like(ys), np.empty_like(ys)
        for b in range(ys.shape[0]):
            for j in range(ys.shape[2]):
                spline = make_smoothing_spline(ts, ys[b, :, j])
                u_hat[b, :, j] = spline(ts)
                du_hat[b, :, j] = spline.derivative()(ts)
        return u_hat, du_hat
    if method == "kernel":
        h = 2.5 * float(np.median(np.diff(ts))) if bandwidth is None else float(bandwidth)
        if not h > 0:
            raise ValueError(f"bandwidth must be positive, got {bandwidth!r}")
        d = ts[None, :] - ts[:, None]  # (T_eval, T_data)
        w = np.exp(-0.5 * (d / h) ** 2)
        design = np.stack([np.ones_like(d), d, d**2], axis=-1)  # (T, T, 3)
        gram = np.einsum("ij,ijk,ijl->ikl", w, design, design)
        rhs = np.einsum("ij,ijk,bjn->bikn", w, design, ys)
        try:
            coef = np.linalg.solve(gram[None, :, None], rhs.transpose(0, 1, 3, 2)[..., None])
        except np.linalg.LinAlgError:
            raise ValueError(f"bandwidth={h:g} is too small for the time step (the local "
                             f"quadratic fits are singular); try at least "
                             f"{float(np.median(np.diff(ts))):g}") from None
        coef = coef[..., 0]  # (B, T, n, 3)
        return coef[..., 0], coef[..., 1]
    raise ValueError(f"method must be 'spline' or 'kernel', got {method!r}")


class Collocation(eqx.Module):
    """Fit the vector field to derivative estimates of smoothed data, with no ODE solve:
    ``mean(((f(t_i, u_hat_i) - du_hat_i) / scale)^2)``. Cheap and free of the local
    minima of shooting; a good initialisation for the other losses.

    Attributes
    ----------
    ts, u_hat, du_hat : times, smoothed states and derivative estimates ``(B, T, n)``.
    scale : per-state scale of the derivative residuals (default: std of ``du_hat``).
    """

    ts: Array
    u_hat: Array
    du_hat: Array
    scale: Array
    vector_field: Callable = eqx.field(static=True)

    def __init__(self, ts, ys, *, method: str = "spline", bandwidth: float | None = None,
                 vector_field: Callable = call_model, scale=None, trim: int = 1):
        """``trim`` points at each end are left out (smoothers are least accurate there)."""
        u_hat, du_hat = smooth(ts, ys, method=method, bandwidth=bandwidth)
        if not isinstance(trim, int) or trim < 0 or 2 * trim >= u_hat.shape[1]:
            raise ValueError(f"trim must be an integer in [0, T/2), got {trim!r}")
        keep = slice(trim, u_hat.shape[1] - trim)
        self.ts = jnp.asarray(np.asarray(ts, float)[keep])
        self.u_hat, self.du_hat = jnp.asarray(u_hat[:, keep]), jnp.asarray(du_hat[:, keep])
        self.scale = jnp.asarray(_scale(du_hat, scale))
        self.vector_field = vector_field

    @property
    def n_trajectories(self) -> int:
        return self.u_hat.shape[0]

    def __call__(self, params, batch=None):
        u, du = _select(self.u_hat, batch), _select(self.du_hat, batch)
        f = jax.vmap(jax.vmap(lambda t, x: self.vector_field(t, x, params)), in_axes=(None, 0))
        pred = f(self.ts, u)
        return jnp.mean(((pred - du) / self.scale) ** 2)


class PredictionError(eqx.Module):
    """Prediction-error method: the simulator is nudged toward the data by an observer,
    ``u' = f(t, u, params) + gain * (y(t) - u)``, with ``y(t)`` the linear interpolation of
    the data. A large gain keeps the simulation near the data (short effective horizon,
    smooth loss); annealing the gain to 0 (see :func:`bayes_ude.ude.fit_pem`) ends at the
    single-shooting loss. The gain is an array field, so changing it does not recompile.

    Attributes
    ----------
    gain : observer gain ``K >= 0`` (scalar).
    """

    ts: Array
    ys: Array
    u0: Array
    scale: Array
    gain: Array
    vector_field: Callable = eqx.field(static=True)
    options: solvers.SolveOptions

    def __init__(self, ts, ys, gain: float = 1.0, *, u0=None,
                 vector_field: Callable = call_model, scale=None, solver=None, rtol=1e-6,
                 atol=1e-8, max_steps=10_000, sensitivity="auto"):
        ts, ys = _as_batch(ts, ys)
        self.ts, self.ys = jnp.asarray(ts), jnp.asarray(ys)
        self.u0 = jnp.asarray(_u0(ys, u0))
        self.scale = jnp.asarray(_scale(ys, scale))
        self.gain = _gain(gain)
        self.vector_field = vector_field
        self.options = solvers.SolveOptions(solver=solver, rtol=rtol, atol=atol,
                                            max_steps=max_steps, sensitivity=sensitivity)

    @property
    def n_trajectories(self) -> int:
        return self.ys.shape[0]

    def with_gain(self, gain: float) -> PredictionError:
        """A copy with another gain (checked like the constructor's)."""
        return eqx.tree_at(lambda m: m.gain, self, _gain(gain))

    def __call__(self, params, batch=None):
        u0, ys = _select(self.u0, batch), _select(self.ys, batch)
        ts, gain, field = self.ts, self.gain, self.vector_field

        def one(u, y):
            def nudged(t, x, p):
                y_t = jax.vmap(lambda col: jnp.interp(t, ts, col), in_axes=1)(y)
                return field(t, x, p) + gain * (y_t - x)

            # the interpolated data have a kink at every data time: steps stop there
            # (stepping across them cost 1-2 orders of accuracy at the same rtol)
            sol = self.options.solve(nudged, u, ts, params,
                                     tstops=ts[1:-1] if ts.shape[0] > 2 else None)
            return sol.ys, sol.success

        pred, ok = jax.vmap(one)(u0, ys)
        return _mse(pred, ys, self.scale, ok[:, None, None])


def _gain(gain) -> Array:
    """The observer gain as an array, refused unless a finite number >= 0."""
    if isinstance(gain, bool) or not 0 <= float(gain) < np.inf:
        raise ValueError(f"gain must be a finite number >= 0, got {gain!r}")
    return jnp.asarray(float(gain))


def _bound(value, n: int, name: str, default: float) -> np.ndarray:
    if value is None:
        return np.full(n, default)
    if isinstance(value, (list, tuple)):  # None for a state without this bound
        value = [default if v is None else v for v in value]
    b = np.asarray(value, dtype=float)
    if b.ndim > 1 or (b.ndim == 1 and b.shape[0] not in (1, n)):
        raise ValueError(f"{name} must be a number or one value per state ({n}), got shape "
                         f"{b.shape}")
    b = np.broadcast_to(b, (n,)).copy()
    if np.any(np.isnan(b)):
        raise ValueError(f"{name} contains NaN; use None (or +-inf) for no bound")
    return b


class StateBounds(eqx.Module):
    """A penalty for simulated states outside known bounds, on times without data.

    ``weight * mean(relu((lower - u) / scale)^2 + relu((u - upper) / scale)^2)`` over the
    solution ``u`` from each ``u0`` at ``ts`` (all trajectories, times and states). Add it
    to a data loss with ``fit(..., penalty=StateBounds(...))``. It says what the model
    must not do where nothing is observed. The typical case is a population, amount or
    concentration, which cannot go negative: a UDE whose network overshoots beyond the
    data can drive such a state through zero, where the known physics (e.g. growth
    ``alpha u``) then runs away. A failed solve gives :data:`FAILED_LOSS`.

    Parameters
    ----------
    ts : times to check (1-D, increasing), e.g. the whole horizon you will predict on.
    u0 : initial state(s), ``(n,)`` or ``(B, n)`` (e.g. the first data point), at ``t0``.
    t0 : the time of ``u0`` (default ``ts[0]``; at most ``ts[0]``). Checking only after
        the data (``ts`` from 5 on, ``u0`` the state at 0) needs it: without it ``u0``
        was placed at ``ts[0]``.
    lower, upper : a number or one per state (``None`` in the list for a state without
        it); ``None`` or ``-inf``/``inf`` for no bound (default: ``lower=0``, no upper).
    scale : per-state scale of the violation (default 1; e.g. the data's SD).
    weight : multiplies the mean squared violation.
    vector_field, solver, rtol, atol, max_steps, sensitivity : as for
        :class:`SingleShooting`.
    """

    ts: Array
    u0: Array
    t0: Array
    lower: Array
    upper: Array
    scale: Array
    weight: float
    vector_field: Callable = eqx.field(static=True)
    options: solvers.SolveOptions

    def __init__(self, ts, u0, *, t0: float | None = None, lower=0.0, upper=None, scale=1.0,
                 weight: float = 10.0, vector_field: Callable = call_model, solver=None,
                 rtol=1e-6, atol=1e-8, max_steps=10_000, sensitivity="auto"):
        u0 = np.asarray(u0, dtype=float)
        if u0.ndim == 1:
            u0 = u0[None]
        if u0.ndim != 2:
            raise ValueError(f"u0 must have shape (n,) or (B, n), got {u0.shape}")
        if not np.all(np.isfinite(u0)):
            raise ValueError("u0 contains NaN or inf")
        ts = _as_times(ts)
        t_start = float(ts[0]) if t0 is None else float(t0)
        if not t_start <= ts[0]:
            raise ValueError(f"t0={t0!r} must be a number at most ts[0]={ts[0]}")
        n = u0.shape[1]
        lo, hi = _bound(lower, n, "lower", -np.inf), _bound(upper, n, "upper", np.inf)
        if np.any(lo >= hi):
            i = int(np.flatnonzero(lo >= hi)[0])
            raise ValueError(f"lower must be below upper; state {i}: {lo[i]} >= {hi[i]}")
        if np.all(np.isinf(lo)) and np.all(np.isinf(hi)):
            raise ValueError("no bound given: set lower and/or upper")
        if not (np.isfinite(weight) and weight > 0):
            raise ValueError(f"weight must be positive, got {weight!r}")
        self.ts, self.u0, self.t0 = jnp.asarray(ts), jnp.asarray(u0), jnp.asarray(t_start)
        self.lower, self.upper = jnp.asarray(lo), jnp.asarray(hi)
        # (None would be the SD of u0 over trajectories, meaningless here: the default)
        self.scale = jnp.asarray(_scale(u0[:, None], 1.0 if scale is None else scale))
        self.weight = float(weight)
        self.vector_field = vector_field
        self.options = solvers.SolveOptions(solver=solver, rtol=rtol, atol=atol,
                                            max_steps=max_steps, sensitivity=sensitivity)

    def __call__(self, params, batch=None):
        del batch  # the bounds hold for every trajectory, not a minibatch of the data
        sols = _solve_batch(self.options, self.vector_field, self.u0, self.ts, params,
                            t0=self.t0)
        ok = sols.success[:, None, None]
        u = jnp.where(ok, sols.ys, 0.0)
        below = jax.nn.relu((self.lower - u) / self.scale)
        above = jax.nn.relu((u - self.upper) / self.scale)
        value = self.weight * jnp.mean(below**2 + above**2)
        return jnp.where(jnp.all(ok), value, FAILED_LOSS)


def loss_params(loss, params) -> PyTree:
    """The parameters ``loss`` expects, built from a model's parameters (adds shooting
    nodes for :class:`MultipleShooting`)."""
    return loss.init(params) if isinstance(loss, MultipleShooting) else params
