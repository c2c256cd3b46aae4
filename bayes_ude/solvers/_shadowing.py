"""Sensitivities of long-time averages of chaotic systems: shadowing (LSS and NILSS).

For a chaotic system the derivative of one trajectory's time average with respect to a
parameter grows like ``exp(lambda_1 T)``: forward, reverse and adjoint sensitivities give
numbers that are useless for fitting, although the derivative of the *long-time* average
is well defined. Shadowing finds, among all tangent solutions, the one that stays bounded
(the shadow trajectory's direction) and differentiates along it.

Everything here works on the discrete map of one classical Runge-Kutta step of size ``dt``
(fixed-step RK4: the shadowing step needs the step Jacobians ``Phi_k = d u_{k+1}/d u_k`` and
``d u_{k+1}/d p``, taken exactly by ``jax.jacfwd``), along one trajectory after a spin-up:

* **LSS** (least squares shadowing, Wang 2014; Wang, Hu & Blonigan 2014): minimise
  ``sum |v_k|^2 + alpha^2 sum eta_k^2`` subject to the tangent equation with time dilation
  ``v_{k+1} = Phi_k v_k + Phi_p,k + eta_k dt f(u_{k+1})``. The KKT system's Schur complement
  is block tridiagonal and positive definite; it is solved by a block Cholesky sweep
  (``lax.scan``), ``O(steps n^3)`` time.
* **NILSS** (non-intrusive LSS, Ni & Wang 2017): the shadow direction is sought in the span
  of one inhomogeneous tangent ``v`` and ``M`` homogeneous ones ``W`` on segments; at each
  segment's end ``v`` and ``W`` lose their component along ``f`` (the neutral, time-shift
  direction), ``W`` is re-orthonormalised (``W = Q R``), and the coefficients ``a_i`` minimise
  ``sum integral |v + W a|^2`` subject to continuity ``a_{i+1} = R_{i+1} a_i + b_{i+1}`` -- a
  small least-squares problem of ``segments * M`` unknowns.

The derivative of ``<J> = (1/T) integral J(u, p) dt`` is then
``<dJ/du v> + <dJ/dp> + <eta (J - <J>)>`` (LSS) or, with the components ``xi_i`` along ``f``
taken out at the interfaces, ``<dJ/du v> + <dJ/dp> - (1/T) sum xi_i (J(t_i) - <J>)`` (NILSS):
a removed ``xi f`` is a time shift of the shadow trajectory, the interval it skips or repeats
is taken out of the average.

Checks: a window that starts far outside the region its second half visits (more than
half that region's size: a spin-up too short to reach the attractor) warns; the leading
Lyapunov exponent is estimated along the trajectory (a normalised tangent, or NILSS's
``R`` diagonals); a window shorter than :data:`MIN_LYAPUNOV_TIMES` Lyapunov times gives
a warning naming the Lyapunov time, and a NILSS run whose last
homogeneous tangent still grows (``M`` too small for the unstable directions) warns as well.
Warnings need concrete values: under ``jax.jit`` read them from :class:`Shadowing`
(``lyapunov``) instead. The systems are autonomous (``vector_field`` is called with ``t =
0``); a non-chaotic system with a stable fixed point or limit cycle gets the ordinary
derivative of its long-time average.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .._compile import filter_jit

MIN_LYAPUNOV_TIMES = 20.0  # a window shorter than this many Lyapunov times warns


class Shadowing(NamedTuple):
    """What :func:`shadowing` returns.

    ``gradient``: ``d<J>/dp`` as a pytree like ``p`` (each leaf with a leading axis of the
    objective's size when the objective returns a vector); ``average``: ``<J>`` over the
    window; ``lyapunov``: the exponents estimated along the trajectory (the leading one for
    LSS, ``M`` of them for NILSS, those orthogonal to ``f``), per time unit;
    ``window``: the averaging time ``T``.
    """

    gradient: object
    average: jax.Array
    lyapunov: jax.Array
    window: float


# ------------------------------------------------------------------ the discrete map


def _rk4(f, u, p, dt):
    k1 = f(u, p)
    k2 = f(u + 0.5 * dt * k1, p)
    k3 = f(u + 0.5 * dt * k2, p)
    k4 = f(u + dt * k3, p)
    return u + dt / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


def _trajectory(f, u0, p, dt, n_spinup, n_steps):
    """The states ``u_0 .. u_{n_steps}`` after ``n_spinup`` discarded steps."""

    def step(u, _):
        u1 = _rk4(f, u, p, dt)
        return u1, u1

    u_start = jax.lax.fori_loop(0, n_spinup, lambda _, u: _rk4(f, u, p, dt), u0)
    _, us = jax.lax.scan(step, u_start, None, length=n_steps)
    return jnp.concatenate([u_start[None], us])


def _linearisation(f, objective, us, p_flat, unravel, dt):
    """Per step: ``Phi_k`` (n, n), ``Phi_p,k`` (n, P); per state: ``f``, ``J`` (q,),
    ``dJ/du`` (q, n), ``dJ/dp`` (q, P)."""
    fp = lambda u, pf: f(u, unravel(pf))  # noqa: E731
    step = lambda u, pf: _rk4(fp, u, pf, dt)  # noqa: E731
    phi = jax.vmap(jax.jacfwd(step, argnums=0), (0, None))(us[:-1], p_flat)
    phi_p = jax.vmap(jax.jacfwd(step, argnums=1), (0, None))(us[:-1], p_flat)
    obj = lambda u, pf: jnp.atleast_1d(objective(u, unravel(pf)))  # noqa: E731
    j = jax.vmap(obj, (0, None))(us, p_flat)
    j_u = jax.vmap(jax.jacfwd(obj, argnums=0), (0, None))(us, p_flat)
    j_p = jax.vmap(jax.jacfwd(obj, argnums=1), (0, None))(us, p_flat)
    fs = jax.vmap(fp, (0, None))(us, p_flat)
    return phi, phi_p, fs, j, j_u, j_p


def _leading_lyapunov(phi, fs, dt, f_min):
    """The leading Lyapunov exponent orthogonal to ``f`` (the neutral time-shift direction
    of an autonomous system left out, as in NILSS): growth of a normalised tangent."""
    n = phi.shape[-1]

    def step(v, inputs):
        phi_k, f_next = inputs
        w = _project((phi_k @ v)[:, None], f_next, f_min)[0][:, 0]
        norm = jnp.linalg.norm(w)
        return w / norm, jnp.log(norm)

    v0 = jnp.ones(n) / math.sqrt(n)
    _, logs = jax.lax.scan(step, v0, (phi, fs[1:]))
    skip = logs.shape[0] // 10  # the tangent's own transient
    return jnp.mean(logs[skip:]) / dt


# ------------------------------------------------------------------------------ LSS


def _block_tridiagonal_solve(diag, lower, rhs):
    """Solve ``S w = rhs`` for symmetric positive definite block tridiagonal ``S``:
    ``diag[i] = S[i, i]``, ``lower[i] = S[i + 1, i]``; ``rhs`` (m, n, P). Block Cholesky
    (``LDL^T``) sweep forward, then back."""

    def forward(carry, inputs):
        c_prev_inv, y_prev = carry
        d, low, r = inputs  # low = S[i, i-1]
        l_i = low @ c_prev_inv
        c = d - l_i @ low.T
        y = r - l_i @ y_prev
        c_inv = jnp.linalg.inv(c)
        return (c_inv, y), (c_inv, y, l_i)

    n = diag.shape[-1]
    zero_low = jnp.zeros((1, n, n), diag.dtype)
    lows = jnp.concatenate([zero_low, lower])  # S[i, i-1], zero for i = 0
    init = (jnp.zeros((n, n), diag.dtype), jnp.zeros(rhs.shape[1:], rhs.dtype))
    _, (c_inv, y, factors) = jax.lax.scan(forward, init, (diag, lows, rhs))

    def backward(w_next, inputs):
        c_inv_i, y_i, l_next = inputs  # l_next = L[i+1] = S[i+1, i] C_i^-1
        w = c_inv_i @ y_i - l_next.T @ w_next
        return w, w

    l_next = jnp.concatenate([factors[1:], jnp.zeros((1, n, n), diag.dtype)])
    _, w = jax.lax.scan(backward, jnp.zeros(rhs.shape[1:], rhs.dtype), (c_inv, y, l_next),
                        reverse=True)
    return w


def _lss(phi, phi_p, fs, dt, alpha, f_min):
    """The LSS tangent ``v`` (m + 1, n, P) and time dilation ``eta`` (m, P). No dilation
    where ``|f| <= f_min`` (:func:`_time_shift_floor`)."""
    m, n, _ = phi.shape
    eye = jnp.eye(n)
    moving = jnp.linalg.norm(fs[1:], axis=1) > f_min
    F = jnp.where(moving[:, None], dt * fs[1:], 0.0)  # (m, n): the dilation's column in row k
    diag = (jnp.einsum("kij,klj->kil", phi, phi) + eye
            + jnp.einsum("ki,kj->kij", F, F) / alpha**2)
    lower = -phi[1:]  # S[k+1, k] = -Phi_{k+1}
    w = _block_tridiagonal_solve(diag, lower, -phi_p)
    # v = -B^T w: v_k = Phi_k^T w_k - w_{k-1}; eta = F^T w / alpha^2
    phi_t_w = jnp.einsum("kji,kjp->kip", phi, w)
    zeros = jnp.zeros((1,) + w.shape[1:], w.dtype)
    v = jnp.concatenate([phi_t_w, zeros]) - jnp.concatenate([zeros, w])
    eta = jnp.einsum("ki,kip->kp", F, w) / alpha**2
    return v, eta


# ---------------------------------------------------------------------------- NILSS


def _place(mat, rows, cols, blocks):
    """``mat`` with ``blocks[b]`` written at row ``rows[b]``, column ``cols[b]``."""
    _, m1, m2 = blocks.shape
    rr = np.asarray(rows)[:, None, None] + np.arange(m1)[None, :, None]
    cc = np.asarray(cols)[:, None, None] + np.arange(m2)[None, None, :]
    return mat.at[rr, cc].set(blocks)


def _time_shift_floor(us, fs, dt):
    """The ``|f|`` at or below which the flow is no time-shift direction: ``1e-2`` of the
    window's largest ``|f|``, and at least what moves the state by ``sqrt(eps)`` of its
    size in one step. Near a fixed point there is no time-shift direction worth the name,
    and the shift ``xi = f.x / |f|^2`` that would stand for the removed part grows without
    bound. The absolute floor matters when the whole window sits at a fixed point: its
    ``|f|`` is round-off, and relative to its own largest value the projections ran along
    that noise (``u' = -u + p``: d<u>/dp 0.37 and -1.37 by NILSS, NaN by LSS, for 1)."""
    eps = jnp.finfo(us.dtype).eps
    largest = jnp.max(jnp.linalg.norm(fs, axis=1))
    return jnp.maximum(1e-2 * largest, jnp.sqrt(eps) * jnp.max(jnp.abs(us)) / dt)


def _project(x, f, f_min):
    """``x`` without its component along ``f`` (columns of ``x``), and that component.
    Nothing is removed where ``|f| <= f_min`` (:func:`_time_shift_floor`)."""
    ff = f @ f
    safe = ff > f_min ** 2
    coef = jnp.where(safe, (f @ x) / jnp.where(safe, ff, 1.0), 0.0)
    return x - jnp.outer(f, coef), coef


def _nilss(phi, phi_p, fs, j_u, dt, n_segments, n_tangents, key, f_min):
    """``(d<J_u v>, xi, R)``: the shadow direction's ``sum_k J_u v`` per parameter and
    objective component, the removed time-shift coefficients ``xi`` (segments - 1, P) at
    the interfaces, and the ``R`` factors (segments - 1, M, M)."""
    m, n, n_p = phi_p.shape
    k_seg = m // n_segments
    shape = (n_segments, k_seg)
    phi_s = phi.reshape(shape + (n, n))
    phi_p_s = phi_p.reshape(shape + (n, n_p))
    j_u_s = j_u[:m].reshape(shape + j_u.shape[1:])
    f_end = fs[k_seg:m + 1:k_seg]  # f at each segment's end (n_segments, n)

    def segment(carry, inputs):
        v0, w0 = carry
        phi_i, phi_p_i, j_u_i, f_i = inputs

        def step(state, step_inputs):
            v, w = state
            phi_k, phi_p_k, j_u_k = step_inputs
            out = (jnp.einsum("ij,jp->ip", w.T, v) * dt, w.T @ w * dt,
                   jnp.einsum("qn,np->qp", j_u_k, v) * dt, jnp.einsum("qn,nm->qm", j_u_k, w) * dt)
            return (phi_k @ v + phi_p_k, phi_k @ w), out

        (v1, w1), (d, c, jv, jw) = jax.lax.scan(step, (v0, w0), (phi_i, phi_p_i, j_u_i))
        v_proj, xi_v = _project(v1, f_i, f_min)
        w_proj, xi_w = _project(w1, f_i, f_min)
        q, r = jnp.linalg.qr(w_proj)
        sign = jnp.sign(jnp.diagonal(r))
        sign = jnp.where(sign == 0, 1.0, sign)
        q, r = q * sign, r * sign[:, None]
        b = q.T @ v_proj
        v_next = v_proj - q @ b
        out = (d.sum(0), c.sum(0), jv.sum(0), jw.sum(0), xi_v, xi_w, r, b)
        return (v_next, q), out

    w_init, _ = jnp.linalg.qr(_project(jax.random.normal(key, (n, n_tangents)), fs[0],
                                       f_min)[0])
    carry = (jnp.zeros((n, n_p)), w_init)
    _, (d, c, jv, jw, xi_v, xi_w, r, b) = jax.lax.scan(segment, carry,
                                                        (phi_s, phi_p_s, j_u_s, f_end))
    # minimise sum_i a_i^T C_i a_i + 2 d_i^T a_i, a_{i+1} = R_{i+1} a_i + b_{i+1}:
    # KKT of unknowns a (K*M) and multipliers (K-1)*M, one right-hand side per parameter
    K, M = n_segments, n_tangents
    size = K * M + (K - 1) * M
    seg = np.arange(K) * M
    con = K * M + np.arange(K - 1) * M  # the constraint rows: R_{i+1} a_i - a_{i+1} = -b_{i+1}
    eye = jnp.broadcast_to(jnp.eye(M), (K - 1, M, M))
    kkt = jnp.zeros((size, size))
    kkt = _place(kkt, seg, seg, c)
    kkt = _place(kkt, con, seg[:-1], r[:-1])
    kkt = _place(kkt, con, seg[1:], -eye)
    kkt = _place(kkt, seg[:-1], con, jnp.swapaxes(r[:-1], 1, 2))
    kkt = _place(kkt, seg[1:], con, -eye)
    rhs = jnp.concatenate([-d.reshape(K * M, n_p), -b[:-1].reshape((K - 1) * M, n_p)])
    sol = jnp.linalg.solve(kkt, rhs)
    a = sol[:K * M].reshape(K, M, n_p)
    jv_total = jv.sum(0) + jnp.einsum("kqm,kmp->qp", jw, a)
    xi = xi_v[:-1] + jnp.einsum("km,kmp->kp", xi_w[:-1], a[:-1])  # interfaces only
    return jv_total, xi, r[:-1]


# ----------------------------------------------------------------------------- API


def shadowing(
    vector_field: Callable,
    u0,
    p,
    objective: Callable,
    t_span: tuple[float, float],
    *,
    method: str = "nilss",
    dt: float = 0.01,
    spinup: float | None = None,
    segments: int | None = None,
    n_unstable: int | None = None,
    alpha: float | None = None,
    key: jax.Array | None = None,
) -> Shadowing:
    """Derivative of the long-time average of ``objective`` with respect to ``p`` by
    shadowing (see the module notes).

    Parameters
    ----------
    vector_field:
        ``vector_field(t, u, p)`` of an autonomous system (called with ``t = 0``).
    u0:
        A state; the trajectory starts here and runs ``spinup`` time units before the
        averaging window, to reach the attractor.
    p:
        Parameters, any pytree of float arrays; the gradient has its structure.
    objective:
        ``objective(u, p)``: a scalar (or a vector of statistics: each gradient leaf then
        has the statistic axis first) averaged over the window.
    t_span:
        ``(t0, t1)``: the averaging window, ``T = t1 - t0``.
    method:
        ``"nilss"`` (default) or ``"lss"``.
    dt:
        The RK4 step.
    spinup:
        Time run before the window (default ``T / 10``).
    segments:
        NILSS segments (default: one per ~1 time unit, at least 10); the window's steps must
        divide evenly, ``T / dt`` being rounded to a multiple.
    n_unstable:
        NILSS homogeneous tangents ``M``, at least the number of positive Lyapunov exponents
        (default: all ``n - 1`` directions orthogonal to ``f``, for ``n <= 8``).
    alpha:
        LSS weight of the time dilation, in state units (default: the root mean square
        distance of the window's states from their mean). Too large a weight on a limit
        cycle forces the phase drift into ``v`` and biases the result (docs/shadowing.md).
    key:
        NILSS's random initial tangents (default ``jax.random.key(0)``).
    """
    if method not in ("lss", "nilss"):
        raise ValueError(f"shadowing: method must be 'lss' or 'nilss', not {method!r}")
    t0, t1 = (float(t) for t in t_span)
    window = t1 - t0
    if not window > 0:
        raise ValueError(f"shadowing: t_span must be increasing, got {t_span}")
    if not dt > 0:
        raise ValueError(f"shadowing: dt must be positive, got {dt}")
    spinup = 0.1 * window if spinup is None else float(spinup)
    if spinup < 0:
        raise ValueError(f"shadowing: spinup must be >= 0, got {spinup}")
    if alpha is not None and not alpha > 0:
        raise ValueError(f"shadowing: alpha must be positive, got {alpha}")
    u0 = jnp.asarray(u0, float)
    if u0.ndim != 1:
        raise ValueError(f"shadowing: u0 must be a 1-D state vector, got shape {u0.shape}")
    n = u0.shape[0]
    n_steps = max(int(round(window / dt)), 2)
    if method == "nilss":
        segments = max(10, int(round(window))) if segments is None else int(segments)
        if segments < 2:
            raise ValueError(f"shadowing: NILSS needs at least 2 segments, got {segments}")
        n_steps = max(segments, int(round(n_steps / segments)) * segments)
        if n_unstable is None:
            if n > 8:
                raise ValueError(f"shadowing: give n_unstable (the number of positive "
                                 f"Lyapunov exponents) for a system of {n} states")
            n_unstable = max(n - 1, 1)
        n_unstable = int(n_unstable)
        if not 1 <= n_unstable <= max(n - 1, 1):
            raise ValueError(f"shadowing: n_unstable must be between 1 and {max(n - 1, 1)} "
                             f"(the directions orthogonal to f), got {n_unstable}")
    window = n_steps * dt
    if not jax.tree.leaves(p) or ravel_pytree(p)[0].size == 0:
        raise ValueError("shadowing: p has no parameters")
    try:
        value = jnp.asarray(vector_field(0.0, u0, p))
    except Exception as err:
        raise ValueError(f"shadowing: vector_field(t, u0, p) failed on a state of shape "
                         f"({n},): {type(err).__name__}: {err}; it must return a state of "
                         f"shape ({n},)") from err
    if value.shape != (n,):
        raise ValueError(f"shadowing: vector_field(t, u0, p) must return a state of shape "
                         f"({n},), got {value.shape}")
    objective_ndim = jnp.ndim(objective(u0, p))
    if objective_ndim > 1:
        raise ValueError("shadowing: objective must return a scalar or a 1-D vector")
    key = jax.random.key(0) if key is None else key
    grad, average, lyapunov, excess = _shadow(vector_field, objective, u0, p, dt,
                                      int(round(spinup / dt)), n_steps, method, segments,
                                      n_unstable, alpha, key)
    gradient = jax.vmap(ravel_pytree(p)[1])(grad)
    if objective_ndim == 0:
        gradient = jax.tree.map(lambda x: x[0], gradient)
        average = average[0]
    _check(lyapunov, window, method, excess, spinup, grad)
    return Shadowing(gradient, average, lyapunov, window)


@filter_jit
def _shadow(vector_field, objective, u0, p, dt, n_spinup, n_steps, method, segments,
            n_unstable, alpha, key):
    """The compiled part of :func:`shadowing`: ``(d<J>/dp (q, P), <J> (q,), exponents,
    spin-up excess)``."""
    p_flat, unravel = ravel_pytree(p)
    f = lambda u, q: jnp.asarray(vector_field(0.0, u, q))  # noqa: E731
    us = _trajectory(f, u0, p, dt, n_spinup, n_steps)
    phi, phi_p, fs, j, j_u, j_p = _linearisation(f, objective, us, p_flat, unravel, dt)
    j_steps = j[:-1]  # J at the start of each step: the window's rectangle rule
    average = jnp.mean(j_steps, axis=0)
    f_min = _time_shift_floor(us, fs, dt)
    if method == "lss":
        if alpha is None:
            alpha = jnp.sqrt(jnp.mean(jnp.sum((us - us.mean(0)) ** 2, axis=1)))
            alpha = jnp.where(alpha > 0, alpha, 1.0)  # a window at a fixed point: no dilation
        v, eta = _lss(phi, phi_p, fs, dt, alpha, f_min)
        grad = (jnp.einsum("kqn,knp->qp", j_u[:-1], v[:-1]) / n_steps
                + jnp.mean(j_p[:-1], axis=0)
                + jnp.einsum("kp,kq->qp", eta, j_steps - average) / n_steps)
        lyapunov = _leading_lyapunov(phi, fs, dt, f_min)[None]
    else:
        window = n_steps * dt
        jv, xi, r = _nilss(phi, phi_p, fs, j_u, dt, segments, n_unstable, key, f_min)
        k_seg = n_steps // segments
        j_interfaces = j[k_seg:n_steps:k_seg]  # (segments - 1, q)
        grad = (jv / window + jnp.mean(j_p[:-1], axis=0)
                - jnp.einsum("kp,kq->qp", xi, j_interfaces - average) / window)
        lyapunov = jnp.mean(jnp.log(jnp.abs(jnp.diagonal(r, axis1=1, axis2=2))), axis=0) / (
            k_seg * dt)
    # how far the window's first state lies outside the box of states its second half
    # visits (0 inside; in units of that box's size): a spin-up too short to reach the
    # attractor leaves the window starting in the transient
    late = us[n_steps // 2:]
    lo, hi = late.min(0), late.max(0)
    size = (hi - lo) + 1e-3 * (jnp.max(jnp.abs(late)) + 1e-12)
    outside = jnp.maximum(lo - 0.1 * (hi - lo) - us[0], us[0] - hi - 0.1 * (hi - lo))
    excess = jnp.max(jnp.maximum(outside, 0.0) / size)
    return grad, average, lyapunov, excess


def shadowing_gradient(vector_field: Callable, u0, p, objective: Callable,
                       t_span: tuple[float, float], **kwargs):
    """``d<objective>/dp`` by shadowing: :func:`shadowing`'s ``gradient`` (same arguments)."""
    return shadowing(vector_field, u0, p, objective, t_span, **kwargs).gradient


def _check(lyapunov, window, method, excess, spinup, grad):
    """The spin-up, the window and NILSS's tangent count against the trajectory and the
    estimated exponents, and a gradient or exponent that is not finite (concrete values
    only: under jit the caller reads ``Shadowing.lyapunov``)."""
    if isinstance(lyapunov, jax.core.Tracer):
        return
    if not (np.all(np.isfinite(np.asarray(grad))) and np.all(np.isfinite(np.asarray(lyapunov)))):
        warnings.warn(
            "shadowing: the gradient or the Lyapunov exponents are not finite (a trajectory "
            "that left the region where vector_field is finite, or a singular shadowing "
            f"system); exponents {np.array2string(np.asarray(lyapunov), precision=3)}",
            stacklevel=3)
    if float(excess) > 0.5:
        warnings.warn(
            f"shadowing: after a spin-up of {spinup:g} the window starts outside the region "
            f"the trajectory visits in its second half ({float(excess):.2g} times that "
            f"region's size away): the trajectory has not reached the attractor; give a "
            f"longer spinup", stacklevel=3)
    lyap = np.asarray(lyapunov)
    leading = float(lyap.max())
    if leading > 1e-3:
        time = 1.0 / leading
        if window < MIN_LYAPUNOV_TIMES * time:
            warnings.warn(
                f"shadowing: the window T = {window:g} is only {window / time:.1f} Lyapunov "
                f"times (leading exponent {leading:.3g}, Lyapunov time {time:.3g}); the "
                f"derivative of the long-time average needs T >= {MIN_LYAPUNOV_TIMES:g} "
                f"Lyapunov times = {MIN_LYAPUNOV_TIMES * time:.3g}", stacklevel=3)
    if method == "nilss" and lyap.size and float(lyap.min()) > 1e-2 * max(leading, 1.0):
        warnings.warn(
            f"shadowing: all {lyap.size} NILSS tangents grow (exponents "
            f"{np.array2string(lyap, precision=3)}): there may be more unstable directions "
            f"than n_unstable = {lyap.size}; give a larger n_unstable", stacklevel=3)
