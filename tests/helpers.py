"""Independent references for the tests: scipy solutions, closed forms, finite differences."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from scipy.integrate import solve_ivp


def robertson(t, y, k):
    """Robertson's stiff chemical kinetics (k = 0.04, 3e7, 1e4 in the classic problem)."""
    k1, k2, k3 = k
    return jnp.stack([
        -k1 * y[0] + k3 * y[1] * y[2],
        k1 * y[0] - k2 * y[1] ** 2 - k3 * y[1] * y[2],
        k2 * y[1] ** 2,
    ])


def scipy_solve(f, u0, ts, *, t0=None, breaks=(), rtol=1e-12, atol=1e-12, method="DOP853"):
    """Solve ``u' = f(t, u, k)`` with scipy, restarting at each breakpoint (numpy in and out).

    Each interval between breakpoints is a separate ``solve_ivp`` call (``k`` is its
    index), so the integrator never steps across a discontinuity and a piecewise vector
    field is evaluated with the right piece even at the interval ends.
    """
    ts = np.asarray(ts, float)
    t0 = ts[0] if t0 is None else t0
    edges = [t0, *[b for b in breaks if t0 < b < ts[-1]], ts[-1]]
    u = np.asarray(u0, float)
    out = np.empty((len(ts), u.size))
    for k, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        sel = (ts >= a) & (ts <= b)
        t_eval = np.union1d(ts[sel], [b])
        sol = solve_ivp(lambda t, y, k=k: f(t, y, k), (a, b), u,
                        t_eval=t_eval, rtol=rtol, atol=atol, method=method)
        assert sol.success, sol.message
        out[sel] = sol.y.T[np.searchsorted(t_eval, ts[sel])]
        u = sol.y[:, -1]
    return out


def central_difference(fun, x, h=1e-6):
    """Gradient of a scalar function of a 1-D numpy array by central differences."""
    x = np.asarray(x, float)
    g = np.empty_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = h
        g[i] = (fun(x + e) - fun(x - e)) / (2 * h)
    return g


def richardson_gradient(fun, x, h=1e-3):
    """Central differences with one Richardson extrapolation step (error O(h^4))."""
    return (4 * central_difference(fun, x, h / 2) - central_difference(fun, x, h)) / 3
