"""ODE structural models: any vector field, solved with the doses as events.

:class:`ODEModel` solves with :func:`bayes_ude.solvers.solve` (adaptive steps, forward
sensitivities) and reads its predictions from the states through an ``observe`` function,
one per observation type (``DVID``) if there are several. Its states are the compartments
``CMT = 1, ..., n_states``. ``_fixed_step.py`` has the fixed-grid variant, which FOCEI can
differentiate in reverse mode; the closed-form models are in ``_pk.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp

from .. import solvers
from ._structural import StructuralModel, check_dose_kinds, observe_states, observe_types

__all__ = ["ODEModel"]

#: :class:`ODEModel`'s default solve: Tsit5 (:func:`bayes_ude.solvers.solve`'s default)
#: at tolerances tight enough that the solver's error stays far below any assay's (and the
#: FOCE/FOCEI objective's finite-precision noise): ``rtol=1e-8``, ``atol=1e-10``.
ODE_MODEL_SOLVE = solvers.SolveOptions(rtol=1e-8, atol=1e-10, max_steps=10_000)


class ODEModel(StructuralModel):
    """Any ODE model, solved by :func:`bayes_ude.solvers.solve` with doses as events.

    Bioavailability ``f`` and lag ``tlag`` in the parameters apply to doses into
    ``dosing_compartment``. Steady-state doses and resets are not supported by ODE models
    (use a closed-form model, or give the doses explicitly).

    Attributes
    ----------
    vector_field : ``f(t, amounts, params) -> d amounts / dt`` with ``params`` the
        individual-parameter mapping; may contain a neural network (closed over or as an
        ``equinox.Module``).
    n_states : number of states (compartments); a dose goes into state ``CMT - 1``, and
        ``CMT`` must be 1, ..., ``n_states`` for doses and observations alike
        (:meth:`check_population`; which state an observation sees is ``observe``'s
        choice, by ``DVID``).
    observe : ``observe(amounts, params) -> prediction`` for one time point, or a mapping
        ``{dvid: observe}`` for several observation types.
    options : the :class:`bayes_ude.solvers.SolveOptions` of the solves (default
        :data:`ODE_MODEL_SOLVE`: Tsit5, ``rtol=1e-8``, ``atol=1e-10``,
        ``max_steps=10_000``). The constructor also takes ``solver``, ``rtol``, ``atol``
        and ``max_steps`` as keywords, each replacing that field of the default (not
        together with ``options``).
    initial : optional ``initial(params) -> amounts at the first record`` (default zeros;
        e.g. a PD baseline).
    dosing_compartment : the (1-based) compartment that ``f`` and ``tlag`` apply to.

    Notes
    -----
    FOCE/FOCEI/Laplace differentiate the model to third order. The solve's forward
    sensitivities are integrated by a ``while_loop``, which JAX differentiates in forward
    mode to any order but cannot transpose, so the outer gradient of these fits is taken
    in forward mode (``outer_gradient = "forward"``: one directional derivative per
    population parameter). :class:`bayes_ude.nlme.FixedStepODEModel` (a ``lax.scan`` on a
    fixed grid) allows reverse mode and compiles a smaller program.
    """

    outer_gradient: ClassVar[str] = "forward"

    vector_field: Callable
    n_states: int = eqx.field(static=True)
    observe: Callable | Mapping[int, Callable] = eqx.field(static=True)
    options: solvers.SolveOptions
    initial: Callable | None = eqx.field(static=True)
    dosing_compartment: int = eqx.field(static=True)

    def __init__(self, vector_field: Callable, n_states: int,
                 observe: Callable | Mapping[int, Callable], *,
                 options: solvers.SolveOptions | None = None, solver=None,
                 rtol: float | None = None, atol: float | None = None,
                 max_steps: int | None = None, initial: Callable | None = None,
                 dosing_compartment: int = 1):
        flat = {name: value for name, value in (("solver", solver), ("rtol", rtol),
                                                ("atol", atol), ("max_steps", max_steps))
                if value is not None}
        if options is not None and flat:
            raise ValueError(f"ODEModel: give either options or {', '.join(flat)}, not both "
                             "(options.replace(...) changes single fields)")
        if options is not None and not isinstance(options, solvers.SolveOptions):
            raise TypeError("ODEModel: options must be a solvers.SolveOptions, got "
                            f"{type(options).__name__}")
        self.vector_field = vector_field
        self.n_states = n_states
        self.observe = observe
        self.options = options if options is not None else ODE_MODEL_SOLVE.replace(**flat)
        self.initial = initial
        self.dosing_compartment = dosing_compartment

    @property
    def observation_types(self) -> tuple[int, ...]:
        return observe_types(self.observe)

    def check_population(self, population) -> None:
        """The compartments (:meth:`StructuralModel.check_population`), and no
        steady-state dose or reset: the solve starts from the first record, so it would
        leave them out without a word."""
        super().check_population(population)
        check_dose_kinds(population, "ODEModel", infusions=True)

    def predict(self, params, subject):
        times = subject.obs_time
        t0 = jnp.minimum(jnp.min(jnp.where(subject.dose_mask, subject.dose_time, jnp.inf)),
                         times[0])
        into = subject.dose_cmt == self.dosing_compartment
        f = params.get("f", 1.0)
        tlag = params.get("tlag", 0.0)
        amt = jnp.where(subject.dose_mask, subject.dose_amt * jnp.where(into, f, 1.0), 0.0)
        td = subject.dose_time + jnp.where(into, tlag, 0.0)
        # padded doses: zero amount at the first record (a no-op event)
        td = jnp.where(subject.dose_mask, td, t0)
        cmt = jnp.clip(subject.dose_cmt - 1, 0, self.n_states - 1)
        is_inf = subject.dose_rate > 0
        doses = (
            solvers.Bolus(td, jnp.where(is_inf, 0.0, amt), cmt),
            # a bolus row's infusion entry is a no-op (rate 0 over a unit duration)
            solvers.Infusion(td, jnp.where(is_inf, amt / jnp.where(is_inf, subject.dose_rate,
                                                                    1.0), 1.0),
                             jnp.where(is_inf, subject.dose_rate, 0.0), cmt),
        )
        u0 = (jnp.zeros(self.n_states) if self.initial is None
              else jnp.asarray(self.initial(params)))
        # saveat must increase strictly, but observation times repeat (padding, or two
        # observation types at one time): solve at the distinct times plus, for each
        # repeat, a dummy time just after the last record, and read each repeat from the
        # slot of its first occurrence.
        n = times.shape[0]
        order = jnp.argsort(times)
        sorted_t = times[order]
        first = jnp.searchsorted(sorted_t, sorted_t, side="left")
        repeat = first != jnp.arange(n)
        tail = sorted_t[-1] + (1.0 + jnp.arange(n)) * 1e-6 * (1.0 + jnp.abs(sorted_t[-1]))
        key = jnp.where(repeat, tail, sorted_t)
        order2 = jnp.argsort(key)
        sol = self.options.solve(self.vector_field, u0, key[order2], params, t0=t0,
                                 doses=doses)
        slot = jnp.empty(n, int).at[order2].set(jnp.arange(n))  # position of key k in grid
        states_sorted = sol.ys[slot[first]]
        states = jnp.empty_like(states_sorted).at[order].set(states_sorted)
        pred = observe_states(self.observe, states, params, subject)
        return jnp.where(sol.success, pred, jnp.nan)
