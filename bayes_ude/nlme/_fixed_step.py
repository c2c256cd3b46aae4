"""An ODE structural model on a fixed grid, differentiable to any order in any mode.

Why. FOCEI differentiates the model three times over: the inner Newton step needs the
Hessian of the conditional objective in ``eta`` (forward over reverse), the interaction
term needs ``df/deta`` (forward), and the outer quasi-Newton step takes the reverse-mode
gradient of all of that with respect to theta. :class:`ODEModel` solves with an adaptive
solver whose forward sensitivities are a ``custom_jvp`` integrated by a ``while_loop``:
forward over it works (so its objective evaluates), reverse over it does not (JAX cannot
transpose a ``while_loop``), so its FOCEI fit takes the outer gradient in forward mode, one
directional derivative per population parameter: fine for a few parameters, slow for a
network's weights, and a large program to compile. :class:`FixedStepODEModel` integrates
instead with :func:`bayes_ude.solvers.integrate_on_grid` (a ``lax.scan`` of
Dormand--Prince steps on a grid through every observation and dose time; see
``bayes_ude/solvers/_fixed_grid.py``), which JAX differentiates in every mode and to every
order. Accuracy is set by the grid (``tests/nlme/test_pkpd.py`` checks it against scipy's
Radau at ``rtol=1e-10``), and so is stability: the grid must resolve the fastest rate of
the states it integrates (``h * rate < 3.3``). The PK/PD models of ``_warfarin.py`` and
``_network_pk.py`` therefore integrate only the slow states and take the fast linear
absorption in closed form.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import equinox as eqx
import jax.numpy as jnp

from .. import solvers
from ._structural import StructuralModel, check_dose_kinds, observe_states, observe_types

__all__ = ["FixedStepODEModel"]


class FixedStepODEModel(StructuralModel):
    """An ODE model solved on a fixed, data-adapted grid
    (:func:`bayes_ude.solvers.subject_grid` with :attr:`grid_options`; see the module notes).

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
        check_dose_kinds(population, "FixedStepODEModel")
        return self

    def solve(self, params, subject):
        """States at the observation times (just before any dose at the same time)."""
        into = subject.dose_cmt == self.dosing_compartment
        amt = jnp.where(subject.dose_mask,
                        subject.dose_amt * jnp.where(into, params.get("f", 1.0), 1.0), 0.0)
        grid = solvers.subject_grid(subject.obs_time, subject.dose_time, subject.dose_mask,
                                    **self.grid_options)
        cmt = jnp.clip(subject.dose_cmt - 1, 0, self.n_states - 1)
        jumps = jnp.zeros((amt.shape[0], self.n_states)).at[
            jnp.arange(amt.shape[0]), cmt].set(amt)
        y0 = (jnp.zeros(self.n_states) if self.initial is None
              else jnp.asarray(self.initial(params), float))
        return solvers.integrate_on_grid(lambda t, y, _: self.vector_field(t, y, params), y0,
                                         grid, subject.obs_time.shape[0], jumps)

    @property
    def observation_types(self) -> tuple[int, ...]:
        return observe_types(self.observe)

    def predict(self, params, subject):
        return observe_states(self.observe, self.solve(params, subject), params, subject)

