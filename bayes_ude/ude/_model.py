"""A universal differential equation: known physics plus a neural network."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PyTree


def _state(t, u):
    return u


class UDE(eqx.Module):
    """``du/dt = physics(t, u, theta) + network(inputs(t, u))``.

    The whole module is the parameter pytree: the network's weights and ``theta`` (the
    physical parameters, any pytree; ``None`` when the physics has none) are trained or
    sampled together. Use it directly as the model of the losses in
    :mod:`bayes_ude.ude` (they call ``model(t, u)``), or in
    ``solvers.solve(lambda t, u, m: m(t, u), u0, ts, ude)``.

    Attributes
    ----------
    physics : ``physics(t, u, theta) -> du/dt``, the known part (``None``: a pure neural
        ODE).
    network : any callable module mapping ``inputs(t, u)`` to an array of ``u``'s shape.
    theta : physical parameters passed to ``physics`` (trainable unless frozen with
        ``equinox.partition`` by the caller). Numbers in it, floats and integers (Python,
        numpy or JAX), become float arrays: :func:`bayes_ude.ude.fit` trains float arrays
        only, and ``theta=1.0`` or ``{"k": 1}`` stayed 1 while the network absorbed the
        missing physics.
    inputs : ``inputs(t, u)`` -> the network's input (default: the state ``u``).

    Called as ``model(t, u)``. It is its own parameters, so it takes no ``args``: as the
    vector field of ``solvers.solve(model, u0, ts, other)`` it would have solved with its
    own weights and ignored ``other``; use ``solve(lambda t, u, m: m(t, u), u0, ts, m)``.
    """

    physics: Callable | None = eqx.field(static=True)
    network: eqx.Module
    theta: PyTree = None
    inputs: Callable = eqx.field(static=True, default=_state)

    def __post_init__(self):
        self.theta = jax.tree.map(_trainable, self.theta)

    def __call__(self, t, u, args=None) -> Array:
        if args is not None:
            raise TypeError(
                "a UDE is its own parameters: call it as model(t, u); as a vector field "
                "pass solve(lambda t, u, m: m(t, u), u0, ts, model), not solve(model, u0, "
                "ts, args), whose args it would ignore")
        learned = self.network_term(t, u)
        if self.physics is None:
            return learned
        return _of_state_shape(jnp.asarray(self.physics(t, u, self.theta)), u,
                               "physics(t, u, theta)") + learned

    def network_term(self, t, u) -> Array:
        """The learned part alone (what SINDy is fitted to)."""
        return _of_state_shape(jnp.asarray(self.network(self.inputs(t, u))), u,
                               "the network")


def _trainable(x):
    """A number of ``theta`` as a float array (``fit`` trains float arrays only); booleans
    and everything else as they are."""
    if isinstance(x, bool) or jnp.issubdtype(getattr(x, "dtype", object), jnp.bool_):
        return x
    if isinstance(x, int | float) or jnp.issubdtype(getattr(x, "dtype", object), jnp.integer):
        return jnp.asarray(x, float)
    return x


def _of_state_shape(term, u, what: str) -> Array:
    """``term``, refused unless it has the state's shape: a network with too few outputs
    (or physics for fewer states) would otherwise be broadcast over the state and add the
    same value to every equation. Shapes are static, so this costs nothing when compiled."""
    if jnp.shape(term) != jnp.shape(u):
        hint = (": its out_size must be the number of states" if what == "the network"
                else "")
        raise ValueError(f"{what} must return an array of the state's shape "
                         f"{jnp.shape(u)}, got shape {jnp.shape(term)}{hint}")
    return term
