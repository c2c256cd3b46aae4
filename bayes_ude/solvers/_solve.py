"""The one entry point: :func:`solve`.

Design
------
* diffrax does the stepping (``diffeqsolve``, its Runge--Kutta and ESDIRK solvers, its
  PID step-size controller, dense output and checkpointed reverse mode).
* Known discontinuities and doses split the time span into segments (``lax.scan`` over a
  fixed-size event table), so the solver lands exactly on each event and restarts there.
* Failure is a status code and NaN values, never an exception inside ``jit``.
* Sensitivities:

  - ``"forward"``: a ``jax.custom_jvp`` whose rule solves the forward-sensitivity system
    ``S' = (df/du) S + df/dtheta`` *together with* the state, with the error control acting
    on the augmented state, so that the step sizes are fine enough for the derivatives
    and not only for the solution. Only inputs that are actually differentiated (non-zero
    tangents) enter ``theta``. The tangent output is ``S @ theta_dot``, linear in the
    tangent, so reverse mode (``jax.grad``) works on it too: JAX transposes only the
    final contraction.
  - ``"reverse"``: diffrax's discretise-then-optimise checkpointed reverse mode.
  - ``"auto"``: forward when the differentiable inputs have at most
    :data:`AUTO_FORWARD_MAX_PARAMS` entries, reverse otherwise (crossover measured in
    ``benchmarks/solvers_sensitivity_crossover.py``).

* Precision: the solve computes in JAX's default float dtype, float64 since
  ``import bayes_ude`` turns x64 on (``bayes_ude/_precision.py``); float32 inputs
  (``u0``, floating leaves of ``args``, times) are promoted to it, which loses nothing.
  With x64 off (``BAYES_UDE_X64=0``) the solve runs in float32, warns once per process
  that it does, and refuses an ``rtol`` below :data:`MIN_RTOL_EPS` machine epsilons.
* A pytree state (a dict, tuple or ``equinox.Module`` of arrays) is solved as the
  flat vector of its leaves; ``ys`` has the structure of ``u0``.

Layout: :mod:`._inputs` checks and converts the inputs before anything is traced (the
options, the precision, a pytree state, a DAE's index and consistency); this module reads
top to bottom as the integration loop, the problem as a function of its differentiable
inputs, forward sensitivities, and :func:`solve`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jax.custom_derivatives import SymbolicZero
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PyTree

from .. import _precision
from ._controller import GuardedPIDController
from ._events import (
    Bolus,
    EventTable,
    Infusion,
    build_table,
    count_events,
    event_times,
)
from ._inputs import (
    check_precision,
    default_dtype,
    flatten_state,
    inconsistent,
    is_array_like,
    unravel,
    validate,
    with_mass_matrix,
)
from ._status import Status, from_diffrax

#: ``sensitivity="auto"`` uses forward sensitivities when the differentiable inputs
#: (floating-point entries of ``u0``, ``args``, arrays inside the vector field and dose
#: magnitudes) number at most this many, and reverse mode above. Measured on this
#: project's reference machine (2 CPU cores) by
#: ``benchmarks/solvers_sensitivity_crossover.py`` on a Lotka--Volterra model with a
#: growing number of parameters: forward wins up to about this size.
AUTO_FORWARD_MAX_PARAMS = 16


class Solution(eqx.Module):
    """Result of :func:`solve`.

    Attributes
    ----------
    ts : the requested save times.
    ys : the solution at ``ts``, shape ``(len(ts), *u0.shape)`` (for a pytree ``u0``, a
        pytree of its structure whose leaves have that leading axis); NaN where the
        solve failed.
    status : a :class:`Status` code (int32 array; 0 is success).
    num_steps : number of solver steps taken (accepted and rejected, all segments).
    """

    ts: Float[Array, " n_save"]
    ys: PyTree[Float[Array, "n_save ..."]]
    status: Int[Array, ""]
    num_steps: Int[Array, ""]

    @property
    def success(self) -> Bool[Array, ""]:
        """``True`` where the solve reached the last save time with finite values."""
        return self.status == Status.SUCCESS


# --------------------------------------------------------------------------------------
# The integration loop (any pytree state): one solve, or one solve per segment.
# --------------------------------------------------------------------------------------


class _Opts(eqx.Module):
    solver: dfx.AbstractSolver
    rtol: float
    atol: float
    max_steps: int
    dt0: float | None
    adaptive: bool


def _tree_add(a, b):
    return jax.tree.map(jnp.add, a, b)


def _field_with_rate(field):
    def rhs(t, y, a):
        inner_args, rate = a
        dy = field(t, y, inner_args)
        return dy if rate is None else _tree_add(dy, rate)

    return rhs


def _diffeqsolve(field, y0, args, rate, t_start, t_end, ts, opts: _Opts, adjoint,
                 dense: bool = False):
    solver = opts.solver
    if (not opts.adaptive and isinstance(solver, dfx.AbstractImplicitSolver)
            and not isinstance(solver.root_finder.rtol, (int, float))):
        # Fixed steps give the Newton iterations no tolerances: use the solve's own.
        solver = eqx.tree_at(lambda s: s.root_finder, solver,
                             dfx.VeryChord(rtol=opts.rtol, atol=opts.atol, norm=optx.max_norm))
    return dfx.diffeqsolve(
        dfx.ODETerm(_field_with_rate(field)),
        solver,
        t_start,
        t_end,
        opts.dt0,
        y0,
        args=(args, rate),
        saveat=dfx.SaveAt(ts=ts, dense=dense),
        stepsize_controller=(
            GuardedPIDController(rtol=opts.rtol, atol=opts.atol)
            if opts.adaptive
            else dfx.ConstantStepSize()
        ),
        max_steps=opts.max_steps,
        adjoint=adjoint,
        throw=False,
    )


def _integrate(field, y0, args, table: EventTable | None, t0, saveat, opts, adjoint):
    """Solve; return (ys pytree with leading save axis, status, num_steps)."""
    if table is None:
        sol = _diffeqsolve(field, y0, args, None, t0, saveat[-1], saveat, opts, adjoint)
        return sol.ys, from_diffrax(sol.result), sol.stats["num_steps"]

    n_save = saveat.shape[0]
    ys0 = jax.tree.map(lambda x: jnp.zeros((n_save, *x.shape), x.dtype), y0)

    def segment(carry, xs):
        y, t_start, ys_acc, status, nsteps = carry
        k, t_end, rate, jump = xs
        # After a failure the solve is NaN whatever follows (`_finalise`): the later
        # segments start from y0, not from the failed state, whose non-finite Jacobians
        # times their zero cotangents made reverse-mode gradients NaN.
        y = jax.tree.map(lambda a, b: jnp.where(status == Status.SUCCESS, a, b), y, y0)
        # The segment starts one ulp after the event, so that a vector field that changes
        # at the event is evaluated on its new piece (as diffrax does for `jump_ts`).
        t_a, t_b = jax.lax.stop_gradient((t_start, t_end))
        ulp = jnp.nextafter(t_a, t_b) - t_a
        t_solve = jnp.where(k == 0, t_start, jnp.minimum(t_start + ulp, t_end))
        # Save points outside the segment are clipped onto its ends and masked out below;
        # the extra last point is the segment's end state.
        ts = jnp.concatenate([jnp.clip(saveat, t_solve, t_end), t_end[None]])
        sol = _diffeqsolve(field, y, args, rate, t_solve, t_end, ts, opts, adjoint)
        # Values at an event time are the left limits (before the jump): the save belongs
        # to the segment that ends there. Segment 0 also owns saves at t0.
        mask = (saveat <= t_end) & ((saveat > t_start) | (k == 0))

        def merge(acc, new):
            m = mask.reshape((n_save,) + (1,) * (acc.ndim - 1))
            return jnp.where(m, new[:-1], acc)

        ys_acc = jax.tree.map(merge, ys_acc, sol.ys)
        y_end = jax.tree.map(lambda v: v[-1], sol.ys)
        seg_status = from_diffrax(sol.result)
        status = jnp.where(status == Status.SUCCESS, seg_status, status)
        y_next = _tree_add(y_end, jump)
        return (y_next, t_end, ys_acc, status, nsteps + sol.stats["num_steps"]), None

    k = jnp.arange(table.ends.shape[0])
    # Event times that are not finite (traced, so not seen by the input checks) fail the
    # solve instead of ending its segments nowhere.
    status0 = jnp.where(jnp.all(jnp.isfinite(table.ends)), Status.SUCCESS, Status.NONFINITE)
    # So do doses before t0 (traced): segment 0 would integrate backward to them and apply
    # them before the start. Padding (no jump, no change of rate) there moves to t0.
    t_start = jnp.asarray(t0, saveat.dtype)
    early = table.ends[:-1] < t_start  # the last end is the solve's, not an event
    acts = (jnp.any(table.jumps[:-1] != 0, axis=1)
            | jnp.any(table.rates[1:] != table.rates[:-1], axis=1))
    status0 = jnp.where((status0 == Status.SUCCESS) & jnp.any(early & acts),
                        Status.DOSE_BEFORE_START, status0)
    ends = jnp.maximum(table.ends, t_start)
    init = (y0, t_start, ys0, status0.astype(jnp.int32), jnp.int32(0))
    (_, _, ys, status, nsteps), _ = jax.lax.scan(
        segment, init, (k, ends, table.rates, table.jumps)
    )
    return ys, status, nsteps


@jax.custom_jvp
def _nan_where_failed(v, ok):
    """``v`` where the solve succeeded (``ok``), NaN where it failed.

    Its derivative is ``where(ok, dv, 0) + 0 * sum(dv)``; reverse mode transposes that to
    the cotangent ``where(ok, g, 0) + 0 * sum(g)`` for the solver. So for a failed solve:

    * a zero cotangent stays zero: :func:`sanitize` sends one, and the gradient stays
      finite (tests/solvers/test_reliability.py, all three sensitivities);
    * a NaN cotangent (any loss computed from the NaN values, e.g. a squared error)
      reaches the solver as NaN, and so does every gradient through it: a NaN, not a
      silent 0.0.

    A successful solve's cotangent passes unchanged (``+ 0``). The cost is one sum over
    the saved values. The earlier link through every differentiable input cost a
    reduction and a broadcast per input array: 18 of the 75 top-level kernels of the
    Lotka-Volterra UDE's loss and gradient.
    """
    return jnp.where(ok, v, jnp.asarray(jnp.nan, v.dtype))


@_nan_where_failed.defjvp
def _nan_where_failed_jvp(primals, tangents):
    v, ok = primals
    v_dot, _ = tangents
    return _nan_where_failed(v, ok), jnp.where(ok, v_dot, 0.0) + 0.0 * jnp.sum(v_dot)


def _finalise(ys, status, differentiable: bool = False):
    """Non-finite values count as failure; a failed solve returns NaN everywhere. With
    ``differentiable``, a loss that uses the NaNs gets a NaN gradient and one that
    masks them a finite one (see :func:`_nan_where_failed`)."""
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(ys)]))
    status = jnp.where((status == Status.SUCCESS) & ~finite, Status.NONFINITE, status)
    ok = status == Status.SUCCESS
    if differentiable:
        ys = jax.tree.map(lambda v: _nan_where_failed(v, ok), ys)
    else:
        ys = jax.tree.map(lambda v: jnp.where(ok, v, jnp.asarray(jnp.nan, v.dtype)), ys)
    return ys, status.astype(jnp.int32)


# --------------------------------------------------------------------------------------
# The problem as a function of its differentiable inputs.
# --------------------------------------------------------------------------------------


class _Problem:
    """Everything a solve needs that is not an array: the closed-over static structure.

    The arrays travel separately as ``diff`` (differentiable: arrays inside the vector
    field, ``u0``, floating-point ``args``, dose magnitudes) and ``const`` (times,
    compartments, integer arrays), so that they can cross ``jax.custom_jvp``.
    """

    def __init__(self, kinds: tuple[str, ...], n_tstops: int, static):
        self.kinds = kinds
        self.n_tstops = n_tstops
        self.static = static

    def parts(self, diff, const):
        const = eqx.combine(const, self.static)
        vf = eqx.combine(diff["vf"], const["vf"])
        args = eqx.combine(diff["args"], const["args"])
        return vf, args

    def table(self, diff, const, dtype) -> EventTable | None:
        if const["times"] is None:
            return None
        n = diff["u0"].shape[0]
        return build_table(const["times"], diff["mags"], const["comps"], self.kinds,
                           self.n_tstops, n, const["saveat"][-1], dtype)


def _opts_with_mass(opts: _Opts, const) -> _Opts:
    """Arrays cannot be closed over by a custom_jvp: the mass matrix travels in ``const``
    and is put back into the solver here."""
    if const["mass"] is None:
        return opts
    return _replace_solver(opts, mass_matrix=const["mass"])


def _replace_solver(opts: _Opts, **changes) -> _Opts:
    return dataclasses.replace(opts, solver=dataclasses.replace(opts.solver, **changes))


def _run_plain(problem: _Problem, diff, const, opts, adjoint):
    opts = _opts_with_mass(opts, const)
    vf, args = problem.parts(diff, const)
    u0 = diff["u0"]
    table = problem.table(diff, const, u0.dtype)
    ys, status, nsteps = _integrate(vf, u0, args, table, const["t0"], const["saveat"], opts,
                                    adjoint)
    ys, status = _finalise(ys, status, differentiable=True)
    return ys, status, nsteps


def _forward_solve(problem: _Problem, opts: _Opts):
    """A ``custom_jvp`` solve whose derivative is the error-controlled sensitivity system."""

    @jax.custom_jvp
    def fwd(diff, const):
        return _run_plain(problem, diff, const, opts, dfx.ForwardMode())

    def jvp_rule(primals, tangents):
        diff, const = primals
        diff_dot, const_dot = tangents
        for name in ("times", "saveat", "t0"):
            for leaf in jax.tree.leaves(const_dot[name]):
                if not isinstance(leaf, SymbolicZero) and jnp.issubdtype(leaf.dtype, jnp.inexact):
                    raise ValueError(
                        f"derivatives with respect to {name} (event or save times) are not "
                        "available with sensitivity='forward'; use sensitivity='reverse'"
                    )
        leaves, treedef = jax.tree.flatten(diff)
        dots = treedef.flatten_up_to(diff_dot)
        active = [i for i, d in enumerate(dots) if not isinstance(d, SymbolicZero)]
        ys, status, nsteps = None, None, None
        if not active:
            ys, status, nsteps = fwd(diff, const)
            return (ys, status, nsteps), (jnp.zeros_like(ys), _float0(status), _float0(nsteps))

        sizes = [leaves[i].size for i in active]
        offsets = np.cumsum([0, *sizes])
        theta0 = jnp.concatenate([jnp.ravel(leaves[i]) for i in active])
        theta_dot = jnp.concatenate(
            [jnp.ravel(dots[i]).astype(theta0.dtype) for i in active]
        )
        n_theta = theta0.shape[0]

        def unpack(theta):
            new = list(leaves)
            for j, i in enumerate(active):
                new[i] = theta[offsets[j]:offsets[j + 1]].reshape(leaves[i].shape)
            return jax.tree.unflatten(treedef, new)

        u0 = diff["u0"]
        dtype = u0.dtype
        n_u = u0.size
        # The augmented state is one flat vector [u, S] with S of shape (n_theta, *u.shape)
        # raveled: diffrax then runs one array through every stage and the error norm
        # (identical to the norm over the pair (u, S), so the steps are the same), instead
        # of two leaves with their own operations each.
        s0 = jnp.moveaxis(jax.jacfwd(lambda th: unpack(th)["u0"])(theta0), -1, 0)
        y0 = jnp.concatenate([jnp.ravel(u0), jnp.ravel(s0)])
        table = problem.table(diff, const, dtype)
        if table is not None:
            # Sensitivities of the event table (dose magnitudes), flattened the same way.
            dtable = jax.jacfwd(lambda th: problem.table(unpack(th), const, dtype))(theta0)

            def flat(x, dx):
                return jnp.concatenate(
                    [x, jnp.moveaxis(dx, -1, 1).reshape(x.shape[0], -1)], axis=1)

            table = EventTable(ends=table.ends, rates=flat(table.rates, dtable.rates),
                               jumps=flat(table.jumps, dtable.jumps))
        eye = jnp.eye(n_u + n_theta, dtype=dtype)

        def augmented(t, y, theta):
            # S' = (df/du) S + df/dtheta from the dense Jacobian of f with respect to
            # x = [u, theta] (n_u + n_theta forward-mode directions, once per evaluation)
            # and one small matrix product, on the flat state. Measured on the lynx-hare
            # gradient (6 parameters): 11-31 % faster than a JVP per column of S on the
            # pair (u, S). Most of the remaining cost per step is XLA's, not this
            # function's: see benchmarks/bayes_lv.py.
            def f(x):
                vf, args = problem.parts(unpack(x[n_u:]), const)
                return jnp.ravel(vf(t, x[:n_u].reshape(u0.shape), args))

            fu, f_lin = jax.linearize(f, jnp.concatenate([y[:n_u], theta]))
            jac = jax.vmap(f_lin, out_axes=1)(eye)  # (n_u, n_u + n_theta)
            s = y[n_u:].reshape(n_theta, n_u)
            ds = s @ jac[:, :n_u].T + jac[:, n_u:].T
            return jnp.concatenate([fu, jnp.ravel(ds)])

        aug_opts = _opts_with_mass(opts, const)
        if getattr(aug_opts.solver, "jacobian", None) is not None:
            # A user Jacobian is for the state alone: the augmented system uses autodiff.
            aug_opts = _replace_solver(aug_opts, jacobian=None)
        ys_aug, status, nsteps = _integrate(augmented, y0, theta0, table, const["t0"],
                                            const["saveat"], aug_opts, dfx.ForwardMode())
        ys_aug, status = _finalise(ys_aug, status)
        n_save = ys_aug.shape[0]
        ys = ys_aug[:, :n_u].reshape(n_save, *u0.shape)
        sens = ys_aug[:, n_u:].reshape(n_save, n_theta, *u0.shape)
        # On failure the values are NaN and the derivatives zero, so that a log density
        # that masks the failure (-inf) keeps finite gradients; a loss computed from the
        # NaN values still gets a NaN gradient (its cotangent is NaN, and NaN x 0 = NaN).
        sens = jnp.where(status == Status.SUCCESS, sens, 0.0)
        ys_dot = jnp.tensordot(theta_dot, jnp.moveaxis(sens, 1, 0), axes=1)
        return (ys, status, nsteps), (ys_dot, _float0(status), _float0(nsteps))

    fwd.defjvp(jvp_rule, symbolic_zeros=True)
    return fwd


def _float0(x):
    return np.zeros(np.shape(x), dtype=jax.dtypes.float0)


def _num_inexact(tree) -> int:
    return sum(x.size for x in jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array)))


@eqx.filter_jit
def _solve_jit(vector_field, u0, saveat, args, t0, tstops, doses, opts: _Opts, sensitivity,
               algebraic=None):
    dtype = u0.dtype
    saveat = jnp.asarray(saveat, dtype)
    t0 = saveat[0] if t0 is None else jnp.asarray(t0, dtype)
    # Parameters closed over by the vector field become explicit inputs, so that they
    # are differentiated like `args`.
    vf = eqx.filter_closure_convert(vector_field, t0, u0, args)
    vf_diff, vf_const = eqx.partition(vf, eqx.is_inexact_array)
    args_diff, args_const = eqx.partition(args, eqx.is_inexact_array)
    n_events = count_events(tstops, doses)
    mags = [d.amounts if isinstance(d, Bolus) else d.rate for d in doses]
    diff = {"vf": vf_diff, "u0": u0, "args": args_diff,
            "mags": [m.astype(dtype) for m in mags]}
    const = {
        "vf": vf_const,
        "args": args_const,
        "times": event_times(tstops, doses, dtype) if n_events else None,
        "comps": [d.compartment for d in doses],
        "saveat": saveat,
        "t0": t0,
        "mass": getattr(opts.solver, "mass_matrix", None),
    }
    if const["mass"] is not None:
        opts = _replace_solver(opts, mass_matrix=None)
    user_jacobian = getattr(opts.solver, "jacobian", None)
    if user_jacobian is not None:
        # The solver sees the segment's (args, input rate); the rate does not change J.
        opts = _replace_solver(opts, jacobian=lambda t, y, a: user_jacobian(t, y, a[0]))
    const, static = eqx.partition(const, eqx.is_array)
    problem = _Problem(
        kinds=tuple("bolus" if isinstance(d, Bolus) else "infusion" for d in doses),
        n_tstops=0 if tstops is None else int(np.shape(tstops)[0]),
        static=static,
    )
    if sensitivity == "auto":
        n_params = _num_inexact(diff)
        sensitivity = "forward" if n_params <= AUTO_FORWARD_MAX_PARAMS else "reverse"
    if sensitivity == "forward":
        ys, status, nsteps = _forward_solve(problem, opts)(diff, const)
    elif sensitivity == "adjoint":
        from ._adjoint import adjoint_solve  # imports this module: keep it lazy

        ys, status, nsteps = adjoint_solve(problem, opts)(diff, const)
    else:
        ys, status, nsteps = _run_plain(problem, diff, const, opts,
                                        dfx.RecursiveCheckpointAdjoint())
    if algebraic is not None:
        # A DAE whose u0 could not be checked before tracing: an inconsistent start fails
        # the solve (the root cause, so it replaces any later status).
        bad = inconsistent(vector_field, u0, args, t0, algebraic)
        status = jnp.where(bad, Status.INCONSISTENT, status).astype(status.dtype)
        ys = jax.tree.map(lambda v: _nan_where_failed(v, ~bad), ys)
    return Solution(ts=saveat, ys=ys, status=status, num_steps=nsteps)




def solve(
    vector_field: Callable[[Any, Array, Any], Array],
    u0: ArrayLike,
    saveat: ArrayLike,
    args: PyTree = None,
    *,
    solver: dfx.AbstractSolver | None = None,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    t0: ArrayLike | None = None,
    tstops: ArrayLike | None = None,
    doses: Sequence[Bolus | Infusion] = (),
    sensitivity: str = "auto",
    max_steps: int = 10_000,
    dt0: float | None = None,
    adaptive: bool = True,
    mass_matrix: ArrayLike | None = None,
) -> Solution:
    """Solve ``du/dt = vector_field(t, u, args)`` and return the solution at ``saveat``.

    Parameters
    ----------
    vector_field : ``f(t, u, args) -> du/dt`` (same shape as ``u``). Parameters may be in
        ``args``, inside an ``equinox.Module`` vector field, or closed over; all are
        differentiable.
    u0 : initial state: an array of any shape (1-D when doses are given), or a pytree of
        arrays (a dict, tuple, NamedTuple or ``equinox.Module``; no doses, mass matrix or
        user Jacobian then), for which ``vector_field`` returns a pytree of the same
        structure. It is solved as the flat vector of its leaves; ``ys`` then has the
        structure of ``u0``, each leaf with a leading save axis.
    saveat : strictly increasing 1-D array of output times. The solve starts at
        ``t0`` (default ``saveat[0]``) and ends at ``saveat[-1]``.
    args : pytree passed to ``vector_field``.
    solver : a diffrax solver; default :class:`Tsit5`. Stiff problems: :class:`Rodas5P`;
        unknown stiffness: :class:`Auto` (Tsit5 switching to Rodas5P while stiff).
    rtol, atol : tolerances of the step-size controller. With forward sensitivities
        they apply to the sensitivities too. ``rtol`` must be at least
        :data:`MIN_RTOL_EPS` machine epsilons of the solve's dtype (1e-15 in float64,
        6e-7 in float32).
    t0 : start time, if before ``saveat[0]``.
    tstops : times where the vector field is discontinuous (e.g. piecewise parameters);
        the solver steps exactly onto each and restarts there.
    doses : :class:`Bolus` and :class:`Infusion` objects (state jumps and input rates).
        A value saved at a dose time is the value just before the dose.
    sensitivity : ``"auto"`` (default), ``"forward"``, ``"reverse"`` or ``"adjoint"``
        (interpolating continuous adjoint, stable on stiff problems; reverse mode only);
        see the module notes. Only matters when the result is differentiated.
    max_steps : maximum number of steps per segment between events.
    dt0 : initial step; chosen automatically by default.
    adaptive : ``False`` for fixed steps of size ``dt0`` (the last step of each segment is
        shortened to land on its end); tolerances are then unused.
    mass_matrix : ``M`` of ``M u' = f(t, u, args)`` (1-D ``u``), possibly singular for an
        index-1 DAE; needs a Rosenbrock solver (:class:`Rodas5P`, :class:`Rosenbrock23`).
        The initial state must be consistent (algebraic equations satisfied) and the system
        of index 1; both are checked before solving when the inputs are concrete
        (``ValueError``). Under ``jit``/``vmap``/``grad`` an inconsistent ``u0`` fails the
        solve with ``Status.INCONSISTENT`` (one evaluation of ``f`` at ``t0``).

    Returns
    -------
    Solution with ``ts``, ``ys`` (``(len(saveat), *u0.shape)``), ``status``,
    ``success`` and ``num_steps``. A failed solve (too many steps, collapsing step
    size, non-finite values) gives ``success=False`` and NaN values; it never raises
    under ``jit``. A non-finite initial state or vector field stops the solve within a
    few steps (``Status.NONFINITE``). The gradient of a loss computed from the NaN values
    of a failed solve is NaN; use :func:`sanitize` and :func:`log_density_penalty` for a
    ``-inf`` log density with finite gradients.

    Raises
    ------
    ValueError, TypeError
        For bad input, before anything is traced: wrong shapes, non-increasing
        ``saveat``, ``tstops`` or dose times outside the span, unknown options, a
        ``diffrax.SaveAt`` instead of times, an ``rtol`` the dtype cannot resolve.

    Notes
    -----
    Precision: the solve computes in JAX's default float dtype, float64 since
    ``import bayes_ude`` turns JAX's x64 mode on for the process. Float32 inputs
    (``u0``, floating leaves of ``args``, times) are promoted to float64, which loses
    nothing. With the opt-out ``BAYES_UDE_X64=0`` (x64 off) the solve runs in float32 and
    warns once per process that it does, and an ``rtol`` below :data:`MIN_RTOL_EPS` x
    float32's epsilon (6e-7) raises ``ValueError`` instead of silently missing the
    tolerance.
    """
    solver = dfx.Tsit5() if solver is None else solver
    doses = tuple(doses) if isinstance(doses, (list, tuple)) else doses
    structure = None
    if not is_array_like(u0):
        if doses or mass_matrix is not None or getattr(solver, "jacobian", None) is not None:
            raise TypeError(
                "doses, mass_matrix and a solver's jacobian need u0 to be a 1-D array "
                f"(they index its entries); got a pytree state ({type(u0).__name__})"
            )
        u0, vector_field, structure = flatten_state(vector_field, u0)
    validate(vector_field, u0, saveat, args, t0, tstops, doses, solver, rtol, atol,
              sensitivity, max_steps)
    # Compute in JAX's default dtype (see the module notes): float32 inputs are promoted.
    u0 = jnp.asarray(u0)
    u0 = u0.astype(default_dtype(u0))
    args = _precision.promote(args)
    check_precision(u0.dtype, rtol, adaptive)
    if sensitivity == "adjoint" and (tstops is not None or doses or mass_matrix is not None):
        raise ValueError(
            "sensitivity='adjoint' does not support tstops, doses or mass_matrix yet; use "
            "sensitivity='forward' or 'reverse' for those problems"
        )
    if not adaptive and (dt0 is None or not dt0 > 0):
        raise ValueError(f"adaptive=False needs a positive step dt0, got dt0={dt0!r}")
    algebraic = None
    if mass_matrix is not None:
        mass_matrix = jnp.asarray(mass_matrix, u0.dtype)
        solver, algebraic = with_mass_matrix(vector_field, u0, args, t0, saveat, solver,
                                             mass_matrix)
    opts = _Opts(solver=solver, rtol=float(rtol), atol=float(atol), max_steps=max_steps,
                 dt0=None if dt0 is None else float(dt0), adaptive=bool(adaptive))
    sol = _solve_jit(vector_field, u0, saveat, args, t0, tstops, doses, opts, sensitivity,
                     algebraic)
    if structure is not None:
        sol = dataclasses.replace(sol, ys=unravel(sol.ys, *structure))
    return sol
