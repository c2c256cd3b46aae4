"""Rosenbrock methods for stiff ODEs and mass-matrix DAEs, as diffrax solvers.

A Rosenbrock step solves ``s`` *linear* systems with one matrix
``W = M / (h gamma) - J``, where ``J = df/du`` is evaluated once per step: one Jacobian
and one LU factorisation per step, no Newton iterations. With a mass matrix ``M`` (possibly
singular, for index-1 DAEs ``M u' = f``) the same formulas hold with ``M`` in place of the
identity.

Both solvers subclass :class:`diffrax.AbstractAdaptiveSolver`, so diffrax's step-size
control, ``SaveAt``/dense output and adjoints work unchanged. Internally the state pytree is
flattened to one vector; the Jacobian is formed by forward-mode AD (``jax.jacfwd``) unless
a ``jacobian(t, u, args)`` is given. The time derivative ``df/dt`` of non-autonomous
problems enters each stage (by a forward-mode JVP in ``t``).

Coefficients: Rodas5P from Steinebach (2023), "Construction of Rosenbrock-Wanner method
Rodas5P and numerical benchmarks within the Julia Differential Equations package", BIT
Numerical Mathematics 63:27 (the values used by OrdinaryDiffEq.jl's ``Rodas5P``);
Rosenbrock23 from Shampine & Reichelt (1997), "The MATLAB ODE Suite" (``ode23s``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, PyTree

# --------------------------------------------------------------------------------------
# Rodas5P tableau (transformed W-form: stage arguments a_ij, stage couplings C_ij / h,
# time-derivative weights d_i, nodes c_i, dense-output weights H).
# --------------------------------------------------------------------------------------

_GAMMA = 0.21193756319429014
_A = np.array([
    [0, 0, 0, 0, 0],
    [3.0, 0, 0, 0, 0],
    [2.849394379747939, 0.45842242204463923, 0, 0, 0],
    [-6.954028509809101, 2.489845061869568, -10.358996098473584, 0, 0],
    [2.8029986275628964, 0.5072464736228206, -0.3988312541770524, -0.04721187230404641, 0],
    [-7.502846399306121, 2.561846144803919, -11.627539656261098, -0.18268767659942256,
     0.030198172008377946],
])
_C = np.zeros((8, 7))
_C[1, :1] = [-14.155112264123755]
_C[2, :2] = [-17.97296035885952, -2.859693295451294]
_C[3, :3] = [147.12150275711716, -1.41221402718213, 71.68940251302358]
_C[4, :4] = [165.43517024871676, -0.4592823456491126, 42.90938336958603, -5.961986721573306]
_C[5, :5] = [24.854864614690072, -3.0009227002832186, 47.4931110020768, 5.5814197821558125,
             -0.6610691825249471]
_C[6, :6] = [30.91273214028599, -3.1208243349937974, 77.79954646070892, 34.28646028294783,
             -19.097331116725623, -28.087943162872662]
_C[7, :7] = [37.80277123390563, -3.2571969029072276, 112.26918849496327, 66.9347231244047,
             -40.06618937091002, -54.66780262877968, -9.48861652309627]
_NODES = np.array([0.0, 0.6358126895828704, 0.4095798393397535, 0.9769306725060716,
                   0.4288403609558664, 1.0, 1.0, 1.0])
_D = np.array([0.21193756319429014, -0.42387512638858027, -0.3384627126235924,
               1.8046452872882734, 2.325825639765069, 0.0, 0.0, 0.0])
_H = np.array([
    [25.948786856663858, -2.5579724845846235, 10.433815404888879, -2.3679251022685204,
     0.524948541321073, 1.1241088310450404, 0.4272876194431874, -0.17202221070155493],
    [-9.91568850695171, -0.9689944594115154, 3.0438037242978453, -24.495224566215796,
     20.176138334709044, 15.98066361424651, -6.789040303419874, -6.710236069923372],
    [11.419903575922262, 2.8879645146136994, 72.92137995996029, 80.12511834622643,
     -52.072871366152654, -59.78993625266729, -0.15582684282751913, 4.883087185713722],
])

# Rosenbrock23 (ode23s): gamma = d = 1 / (2 + sqrt(2)), c32 = 6 + sqrt(2).
_R23_D = 1.0 / (2.0 + np.sqrt(2.0))
_R23_C32 = 6.0 + np.sqrt(2.0)


#: Systems up to this size solve their Rosenbrock stages with an unrolled, pivoted
#: Gauss--Jordan inverse instead of LAPACK (see ``AbstractRosenbrock._linear_solver``).
SMALL_SYSTEM = 12


def _pivoted_inverse(a: Array) -> Array:
    """Inverse of a small square matrix by Gauss--Jordan elimination with partial
    pivoting, unrolled over the (static) size. A singular matrix gives non-finite
    entries, which the step-size controller treats as a rejected step."""
    n = a.shape[0]
    aug = jnp.concatenate([a, jnp.eye(n, dtype=a.dtype)], axis=1)
    rows = jnp.arange(n)
    for i in range(n):
        p = i + jnp.argmax(jnp.abs(aug[i:, i]))
        # Swap rows i and p by one gather (p == i leaves the order unchanged).
        order = jnp.where(rows == i, p, jnp.where(rows == p, i, rows))
        aug = aug[order]
        pivot_row = aug[i] / aug[i, i]
        column = aug[:, i].at[i].set(0.0)
        aug = (aug - column[:, None] * pivot_row[None, :]).at[i].set(pivot_row)
    return aug[:, n:]


class _RodasInterpolation(dfx.AbstractLocalInterpolation):
    """Rodas dense output: ``y(s) = (1-s) y0 + s (y1 + (1-s)(k1 + s (k2 + s k3)))``."""

    t0: Array
    t1: Array
    y0: PyTree
    y1: PyTree
    k: PyTree  # leaves with a leading axis of 3

    def evaluate(self, t0, t1=None, left: bool = True):
        del left
        if t1 is not None:
            return jax.tree.map(jnp.subtract, self.evaluate(t1), self.evaluate(t0))
        s = (t0 - self.t0) / (self.t1 - self.t0)

        def one(y0, y1, k):
            s_ = s.astype(y0.dtype)
            return (1 - s_) * y0 + s_ * (y1 + (1 - s_) * (k[0] + s_ * (k[1] + s_ * k[2])))

        return jax.tree.map(one, self.y0, self.y1, self.k)


class _Rosenbrock23Interpolation(dfx.AbstractLocalInterpolation):
    """ode23s dense output: ``y(s) = y0 + h (s(1-s)/(1-2d) k1 + s(s-2d)/(1-2d) k2)``."""

    t0: Array
    t1: Array
    y0: PyTree
    k: PyTree  # leaves with a leading axis of 2 (k1, k2), already multiplied by h

    def evaluate(self, t0, t1=None, left: bool = True):
        del left
        if t1 is not None:
            return jax.tree.map(jnp.subtract, self.evaluate(t1), self.evaluate(t0))
        s = (t0 - self.t0) / (self.t1 - self.t0)

        def one(y0, k):
            s_ = s.astype(y0.dtype)
            denom = 1 - 2 * _R23_D
            return y0 + s_ * (1 - s_) / denom * k[0] + s_ * (s_ - 2 * _R23_D) / denom * k[1]

        return jax.tree.map(one, self.y0, self.k)


class AbstractRosenbrock(dfx.AbstractAdaptiveSolver):
    """Shared machinery: flattening, the Jacobian, the time derivative, the mass matrix."""

    mass_matrix: Array | None = None
    jacobian: Callable | None = eqx.field(default=None, static=True)

    term_structure: ClassVar = dfx.AbstractTerm

    def init(self, terms, t0, t1, y0, args):
        return None

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del solver_state, made_jump
        return self.step_with_jacobian(terms, t0, t1, y0, args)[:5]

    def step_with_jacobian(self, terms, t0, t1, y0, args):
        """One step; returns diffrax's five outputs and the Jacobian ``df/du`` (flat)."""
        raise NotImplementedError

    def _setup(self, terms, t0, y0, args):
        y0_flat, unravel = ravel_pytree(y0)
        n = y0_flat.shape[0]

        # diffrax integrates backwards in time by flipping the sign of the control (dt),
        # not of the vector field: fold that sign into f.
        sign = terms.contr(t0, t0 + 1.0)

        def f(t, y_flat):
            return sign * ravel_pytree(terms.vf(t, unravel(y_flat), args))[0]

        if self.jacobian is None:
            jac = jax.jacfwd(lambda y: f(t0, y))(y0_flat)
        else:
            jac = sign * jnp.asarray(self.jacobian(t0, y0, args)).reshape(n, n)
        # df/dt by one forward-mode JVP in t (zero for autonomous problems).
        f0, dfdt = jax.jvp(lambda t: f(t, y0_flat), (t0,), (jnp.ones_like(t0),))
        mass = self._mass(n, y0_flat.dtype)
        return y0_flat, unravel, f, f0, jac, dfdt, mass

    def _mass(self, n: int, dtype):
        if self.mass_matrix is None:
            return None
        m = jnp.asarray(self.mass_matrix, dtype)
        size = m.shape[0]
        if n == size:
            return m
        # An augmented state (e.g. forward sensitivities) repeats the state's blocks: the
        # mass matrix applies to each block.
        return jnp.kron(jnp.eye(n // size, dtype=dtype), m)

    @staticmethod
    def _times_mass(mass, v):
        return v if mass is None else mass @ v

    @staticmethod
    def _linear_solver(mass, jac, h_gamma):
        """Factor ``W = M / (h gamma) - J`` once; return ``r -> W^{-1} r``.

        Small systems (``n <=`` :data:`SMALL_SYSTEM`) use an unrolled Gauss--Jordan
        inversion with partial pivoting made of plain array operations, which XLA fuses:
        on CPU a LAPACK LU plus eight triangular solves costs about 9 us per step for
        ``n = 3`` in call overhead alone, the unrolled inverse about 1 us. Larger systems
        use LAPACK's LU.
        """
        n = jac.shape[0]
        m = jnp.eye(n, dtype=jac.dtype) if mass is None else mass
        w = m / h_gamma - jac
        if n <= SMALL_SYSTEM:
            w_inv = _pivoted_inverse(w)
            return lambda rhs: w_inv @ rhs
        lu = jax.scipy.linalg.lu_factor(w)
        return lambda rhs: jax.scipy.linalg.lu_solve(lu, rhs)


class Rodas5P(AbstractRosenbrock):
    """Rodas5P: 5th-order stiffly accurate Rosenbrock method with an embedded 4th-order
    error estimate and 4th-order dense output (Steinebach 2023). The stiff default.

    Attributes
    ----------
    mass_matrix : optional ``(n, n)`` matrix ``M`` of ``M u' = f(t, u)``; may be singular
        (index-1 DAEs). Usually passed through ``solve(..., mass_matrix=M)``.
    jacobian : optional ``J(t, u, args) -> (n, n)`` array; forward-mode AD by default.
    """

    interpolation_cls: ClassVar = _RodasInterpolation

    def order(self, terms):
        return 5

    def error_order(self, terms):
        # The error estimate is the difference to the embedded order-4 solution: its
        # local error is O(h^5).
        return 5

    def step_with_jacobian(self, terms, t0, t1, y0, args):
        """One step; returns diffrax's five outputs and the Jacobian ``df/du`` (flat)."""
        y0_flat, unravel, f, f0, jac, dfdt, mass = self._setup(terms, t0, y0, args)
        h = t1 - t0
        dtype = y0_flat.dtype
        solve = self._linear_solver(mass, jac, h * _GAMMA)

        a, c_over_h = jnp.asarray(_A, dtype), jnp.asarray(_C, dtype) / h
        d_h, nodes = jnp.asarray(_D, dtype) * h, jnp.asarray(_NODES, dtype)
        ks = []
        u = y0_flat
        for i in range(8):
            if i == 0:
                du = f0
            elif i < 6:
                u = y0_flat + sum(a[i, j] * ks[j] for j in range(i))
                du = f(t0 + nodes[i] * h, u)
            else:  # stiffly accurate stages 7, 8: u advances by the previous stage
                u = u + ks[-1]
                du = f(t1, u)
            rhs = du + d_h[i] * dfdt
            if i > 0:
                rhs = rhs + self._times_mass(mass, sum(c_over_h[i, j] * ks[j] for j in range(i)))
            ks.append(solve(rhs))
        y1_flat = u + ks[7]
        k = jnp.stack(ks)
        dense_k = jnp.asarray(_H, dtype) @ k
        y1 = unravel(y1_flat)
        err = unravel(ks[7])
        dense_info = {"y0": y0, "y1": y1, "k": jax.vmap(unravel)(dense_k)}
        # A non-finite step is not a failure here: its error estimate is non-finite, so the
        # step-size controller rejects it and retries with a shorter step.
        return y1, err, dense_info, None, dfx.RESULTS.successful, jac


class Rosenbrock23(AbstractRosenbrock):
    """Rosenbrock23 (ode23s of Shampine & Reichelt): 2nd order, L-stable, with a 3rd-order
    error estimate. Robust and cheap per step; for low accuracy (rtol >= 1e-3).

    Attributes as :class:`Rodas5P` (``mass_matrix``, ``jacobian``).
    """

    interpolation_cls: ClassVar = _Rosenbrock23Interpolation

    def order(self, terms):
        return 2

    def error_order(self, terms):
        return 3

    def step_with_jacobian(self, terms, t0, t1, y0, args):
        """One step; returns diffrax's five outputs and the Jacobian ``df/du`` (flat)."""
        y0_flat, unravel, f, f0, jac, dfdt, mass = self._setup(terms, t0, y0, args)
        h = t1 - t0
        d = jnp.asarray(_R23_D, y0_flat.dtype)
        # ode23s solves with M - h d J = h d (M / (h d) - J); its stages are slopes.
        w_solve = self._linear_solver(mass, jac, h * d)

        def solve(rhs):
            return w_solve(rhs) / (h * d)

        def mv(v):
            return self._times_mass(mass, v)
        k1 = solve(f0 + h * d * dfdt)
        f1 = f(t0 + 0.5 * h, y0_flat + 0.5 * h * k1)
        k2 = solve(f1 - mv(k1)) + k1
        y1_flat = y0_flat + h * k2
        f2 = f(t1, y1_flat)
        k3 = solve(f2 - _R23_C32 * (mv(k2) - f1) - 2.0 * (mv(k1) - f0) + h * d * dfdt)
        err = h / 6.0 * (k1 - 2.0 * k2 + k3)
        dense_info = {"y0": y0, "k": jax.vmap(unravel)(h * jnp.stack([k1, k2]))}
        return unravel(y1_flat), unravel(err), dense_info, None, dfx.RESULTS.successful, jac
