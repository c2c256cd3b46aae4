"""ODE structural models on a fixed grid: differentiable to any order, in any mode.

Why. FOCEI differentiates the model three times over: the inner Newton step needs the
Hessian of the conditional objective in ``eta`` (forward over reverse), the interaction
term needs ``df/deta`` (forward), and the outer quasi-Newton step takes the reverse-mode
gradient of all of that with respect to theta. :class:`ODEModel` solves with an adaptive
solver whose forward sensitivities are a ``custom_jvp`` integrated by a ``while_loop``:
forward over it works (so its objective evaluates), reverse over it does not (JAX cannot
transpose a ``while_loop``), so its FOCEI fit takes the outer gradient in forward mode, one
directional derivative per population parameter: fine for a few parameters, slow for a
network's weights, and a large program to compile. A fixed grid is a ``lax.scan``, which JAX
differentiates in every mode and to every order, and compiles to a small program (one
Runge--Kutta step).

How. Per subject, the grid is the sorted union of

* every observation time and every dose time (so each is hit exactly; an observation at
  a dose time sees the state just before the dose, as in :class:`ODEModel`);
* ``n_uniform`` equally spaced points over the subject's time span;
* ``n_post_dose`` points after each dose, geometrically spaced from ``first_step`` to
  ``post_dose_span`` after it (absorption is fast just after a dose).

Each grid interval is one step of the Dormand--Prince 5th-order Runge--Kutta method
(Dormand & Prince 1980; the propagating solution of ``ode45``/``Dopri5``, without its
error control). The grid has a static size (``n_obs + n_dose (1 + n_post_dose) +
n_uniform`` points), so all subjects batch under ``vmap``. Accuracy is set by the grid
(``tests/nlme/test_pkpd.py`` checks it against scipy's Radau at ``rtol=1e-10``), and so
is stability: an explicit step is stable for ``h * rate < 3.3`` (the Dormand--Prince
stability interval on the negative real axis), so the grid must resolve the fastest rate
of the states it integrates. The PK/PD models of :mod:`._pkpd` therefore integrate only
the slow states and take the fast linear absorption in closed form.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._pk import StructuralModel

__all__ = ["FixedStepODEModel", "check_bolus_only", "integrate_on_grid", "linear_on_grid",
           "subject_grid"]

# Dormand-Prince 5(4): nodes, stage coefficients and the 5th-order weights.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)


def subject_grid(obs_time, dose_time, dose_mask, *, n_uniform: int, n_post_dose: int,
                 first_step: float, post_dose_span: float):
    """One subject's grid (see the module notes).

    Returns ``(times, kind, index, t0)``: grid points sorted by time, their kind (0 an
    observation, 1 a filler point, 2 a dose; at equal times observations come first, so
    they see the state before the dose), their index among the observations or doses,
    and the start time (the first dose or record).
    """
    t0 = jnp.minimum(jnp.min(jnp.where(dose_mask, dose_time, jnp.inf)), obs_time[0])
    t_end = jnp.maximum(jnp.max(obs_time), t0)
    uniform = t0 + (t_end - t0) * jnp.arange(1, n_uniform + 1) / n_uniform
    parts = [obs_time, uniform]
    kinds = [jnp.zeros(obs_time.shape, int), jnp.ones(n_uniform, int)]
    if n_post_dose:
        ratio = (post_dose_span / first_step) ** (1.0 / max(n_post_dose - 1, 1))
        offsets = first_step * ratio ** np.arange(n_post_dose)
        post = jnp.minimum((dose_time[:, None] + offsets[None, :]).ravel(), t_end)
        parts.append(post)
        kinds.append(jnp.ones(post.shape, int))
    parts.append(dose_time)
    kinds.append(jnp.full(dose_time.shape, 2))
    times = jnp.concatenate(parts)
    kind = jnp.concatenate(kinds)
    index = jnp.concatenate([jnp.arange(p.shape[0]) for p in parts])
    order = jnp.lexsort((kind, times))
    return times[order], kind[order], index[order], t0


def integrate_on_grid(f, y0, grid, n_obs: int, jumps=None, forcing=None):
    """Integrate ``y' = f(t, y, u)`` over a :func:`subject_grid`; the states at the
    ``n_obs`` observations (before any jump at the same time).

    ``forcing(t, t_start) -> u``: an input that does not depend on the state (e.g. a
    closed-form concentration), evaluated at every stage time of every step at once,
    outside the sequential loop (vectorised, and left out of the loop's derivatives);
    ``t_start`` is the start of the step, so an input that switches on at a dose (a grid
    point) is on within a step iff it is on at ``t_start``. Without ``forcing``, ``u`` is
    ``None``. ``jumps``: ``(n_dose, n_states)`` state jumps at the doses.
    """
    times, kind, index, t0 = grid
    t_prev = jnp.concatenate([t0[None], times[:-1]])
    h = times - t_prev
    if forcing is None:
        inputs = jnp.zeros((times.shape[0], len(_C)))
    else:
        stage_t = t_prev[:, None] + h[:, None] * jnp.asarray(_C)[None, :]
        inputs = jax.vmap(lambda ts, t_s: jax.vmap(lambda t: forcing(t, t_s))(ts))(
            stage_t, t_prev)
    if jumps is None:
        jump = jnp.zeros((times.shape[0],) + jnp.shape(y0), jnp.result_type(y0))
    else:
        jump = jnp.where((kind == 2)[:, None], jumps[jnp.where(kind == 2, index, 0)], 0.0)

    def step(y, xs):
        t, h, u, dy = xs
        ks = []
        for i, (c, row) in enumerate(zip(_C, _A, strict=True)):
            yi = y
            for a, k in zip(row, ks, strict=False):
                yi = yi + (h * a) * k
            ks.append(f(t + c * h, yi, None if forcing is None else u[i]))
        out = y
        for b, k in zip(_B, ks, strict=True):
            if b:
                out = out + (h * b) * k
        return out + dy, out  # saved: the state before this point's jump

    _, ys = jax.lax.scan(step, y0, (t_prev, h, inputs, jump))
    # grid position of each observation (other points are dropped)
    pos = jnp.zeros(n_obs, int).at[jnp.where(kind == 0, index, n_obs)].set(
        jnp.arange(kind.shape[0]), mode="drop")
    return ys[pos]


# Gauss-Legendre nodes and weights on [0, 1] (5 nodes: exact for polynomials of degree 9).
_GL_X, _GL_W = np.polynomial.legendre.leggauss(5)
_GL_X, _GL_W = (_GL_X + 1) / 2, _GL_W / 2


def linear_on_grid(production, k, y0, grid, at):
    """``y' = production(t) - k y``, ``y(t0) = y0``, at the times ``at`` -- without a
    sequential loop.

    Exact in ``y`` (variation of constants): ``y(t) = e^{-k (t - t0)} y0 + sum over grid
    intervals [a, b] ending by t of e^{-k (t - b)} Q``, with ``Q = int_a^b e^{-k (b - s)}
    production(s) ds`` by 5-point Gauss-Legendre on each interval (exact for polynomial
    integrands of degree 9, so the grid only needs to resolve ``production``; stable for
    any ``k``). Everything is a vectorised array expression, which JAX differentiates to
    any order and compiles small. ``at`` must be grid points (e.g. the observation times).
    """
    times, _, _, t0 = grid
    t_prev = jnp.concatenate([t0[None], times[:-1]])
    h = times - t_prev
    nodes = t_prev[:, None] + h[:, None] * _GL_X[None, :]
    kernel = jnp.exp(-k * h[:, None] * (1.0 - _GL_X[None, :]))
    q = h * jnp.sum(_GL_W[None, :] * kernel * jax.vmap(jax.vmap(production))(nodes), axis=1)
    lag = at[:, None] - times[None, :]
    ended = lag >= 0.0  # intervals that end at or before the output time
    decay = jnp.where(ended, jnp.exp(-k * jnp.where(ended, lag, 0.0)), 0.0)
    return jnp.exp(-k * (at - t0)) * y0 + decay @ q


def check_bolus_only(population, what: str, compartments=None) -> None:
    """Raise ``ValueError`` unless every dose is a bolus (no infusion, steady state or
    reset), into one of ``compartments`` (1-based) when given."""
    mask = np.asarray(population.dose_mask)
    problems = []
    if np.any(np.asarray(population.dose_rate)[mask] > 0):
        problems.append("infusions (RATE > 0)")
    if np.any(np.asarray(population.dose_ss)[mask]):
        problems.append("steady-state doses (SS = 1)")
    if np.any(np.asarray(population.reset_mask)):
        problems.append("resets (EVID 3/4)")
    if compartments is not None:
        cmt = sorted(set(np.asarray(population.dose_cmt)[mask].tolist()) - set(compartments))
        if cmt:
            problems.append(f"doses into CMT {cmt} (expected CMT {list(compartments)})")
    if problems:
        raise ValueError(f"{what} supports bolus doses only; the data have "
                         f"{', '.join(problems)}")


class FixedStepODEModel(StructuralModel):
    """An ODE model solved on a fixed, data-adapted grid (see the module notes).

    The same interface as :class:`ODEModel` (bolus doses only): mind the stability limit
    ``h * rate < 3.3`` for the fastest rate of the system and the largest grid step ``h``.

    Attributes
    ----------
    vector_field : ``f(t, amounts, params) -> d amounts / dt``; ``params`` is the
        individual-parameter mapping (it may carry a network's weights).
    n_states : number of states; doses go into ``CMT - 1``.
    observe : ``observe(amounts, params)`` or a mapping ``{dvid: observe}``.
    initial : optional ``initial(params) -> states at the first record`` (default zeros).
    dosing_compartment : the (1-based) compartment that ``f`` (bioavailability) applies to.
    n_uniform : equally spaced grid points over each subject's time span.
    n_post_dose, first_step, post_dose_span : the geometric grid after each dose (in the
        data's time unit).
    """

    vector_field: Callable
    n_states: int = eqx.field(static=True)
    observe: Callable | Mapping[int, Callable] = eqx.field(static=True)
    initial: Callable | None = eqx.field(static=True, default=None)
    dosing_compartment: int = eqx.field(static=True, default=1)
    n_uniform: int = eqx.field(static=True, default=128)
    n_post_dose: int = eqx.field(static=True, default=32)
    first_step: float = eqx.field(static=True, default=0.02)
    post_dose_span: float = eqx.field(static=True, default=12.0)

    def __check_init__(self):
        if self.n_uniform < 1 or self.n_post_dose < 0:
            raise ValueError("n_uniform must be >= 1 and n_post_dose >= 0")
        if not 0 < self.first_step < self.post_dose_span:
            raise ValueError("need 0 < first_step < post_dose_span")

    @property
    def grid_options(self) -> dict:
        return {"n_uniform": self.n_uniform, "n_post_dose": self.n_post_dose,
                "first_step": self.first_step, "post_dose_span": self.post_dose_span}

    def specialise(self, population) -> FixedStepODEModel:
        """Checks the data: bolus doses only (no infusions, steady state or resets)."""
        check_bolus_only(population, "FixedStepODEModel")
        return self

    def solve(self, params, subject):
        """States at the observation times (just before any dose at the same time)."""
        into = subject.dose_cmt == self.dosing_compartment
        amt = jnp.where(subject.dose_mask,
                        subject.dose_amt * jnp.where(into, params.get("f", 1.0), 1.0), 0.0)
        grid = subject_grid(subject.obs_time, subject.dose_time, subject.dose_mask,
                            **self.grid_options)
        cmt = jnp.clip(subject.dose_cmt - 1, 0, self.n_states - 1)
        jumps = jnp.zeros((amt.shape[0], self.n_states)).at[
            jnp.arange(amt.shape[0]), cmt].set(amt)
        y0 = (jnp.zeros(self.n_states) if self.initial is None
              else jnp.asarray(self.initial(params), float))
        return integrate_on_grid(lambda t, y, _: self.vector_field(t, y, params), y0, grid,
                                 subject.obs_time.shape[0], jumps)

    def predict(self, params, subject):
        return observe_states(self.observe, self.solve(params, subject), params, subject)


def observe_states(observe, states, params, subject):
    """Predictions from states at the observation records (one observe function, or a
    mapping ``{dvid: observe}`` picked per record)."""
    if callable(observe):
        return jax.vmap(lambda a: observe(a, params))(states)
    outs = jnp.stack([jax.vmap(lambda a, fn=fn: fn(a, params))(states)
                      for fn in observe.values()], axis=-1)
    keys = jnp.asarray(list(observe.keys()))
    which = jnp.argmax(subject.obs_dvid[:, None] == keys[None, :], axis=1)
    return jnp.take_along_axis(outs, which[:, None], axis=1)[:, 0]
