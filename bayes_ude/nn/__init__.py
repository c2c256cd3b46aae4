"""Small neural networks for UDEs: equinox MLPs, near-zero initialisation, weight flattening.

A UDE adds a network to known physics. Two things matter more than architecture here:

* **Start from the physics.** ``MLP(..., init="small")`` draws every weight from
  ``N(0, small_scale^2)`` (default ``1e-4``) and ``init="zero_last"`` zeroes the last
  layer, so the network's output starts near 0 and the UDE starts as the known physics.
* **One vector of weights.** :func:`flatten` turns any network (any equinox module or
  pytree) into one float vector and a function back; priors, SG-MCMC and L-BFGS work on
  that vector.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, PRNGKeyArray, PyTree

__all__ = ["ACTIVATIONS", "MLP", "count_params", "flatten", "rbf"]


def rbf(x: Array) -> Array:
    """Gaussian radial basis activation ``exp(-x^2)`` (used in the SciML missing-physics
    examples)."""
    return jnp.exp(-(x**2))


#: Activations by name, for ``MLP(activation="...")``.
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "rbf": rbf,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "relu": jax.nn.relu,
    "softplus": jax.nn.softplus,
    "sigmoid": jax.nn.sigmoid,
    "swish": jax.nn.swish,
    "identity": lambda x: x,
}

_INITS = ("default", "small", "zero_last")


class MLP(eqx.Module):
    """A multilayer perceptron ``in_size -> widths... -> out_size``.

    Attributes
    ----------
    layers : the ``equinox.nn.Linear`` layers (weights ``layers[i].weight``, biases
        ``layers[i].bias``; these are the names that appear in posteriors).
    activation : the hidden-layer activation (none after the last layer).
    final_activation : applied to the output (default identity).

    Examples
    --------
    The 2-5-5-5-2 rbf network of the Lotka--Volterra missing-physics example, starting
    with an output near zero:

    >>> net = MLP(2, 2, widths=(5, 5, 5), activation="rbf", init="small",
    ...           key=jax.random.key(0))
    """

    layers: tuple[eqx.nn.Linear, ...]
    activation: Callable = eqx.field(static=True)
    final_activation: Callable = eqx.field(static=True)

    def __init__(
        self,
        in_size: int,
        out_size: int,
        widths: Sequence[int] = (32, 32),
        activation: str | Callable = "tanh",
        *,
        key: PRNGKeyArray,
        init: str = "default",
        small_scale: float = 1e-4,
        final_activation: str | Callable = "identity",
    ):
        """Build the network.

        Parameters
        ----------
        in_size, out_size : input and output sizes (positive integers).
        widths : hidden layer widths; ``()`` gives a linear map.
        activation : a name in :data:`ACTIVATIONS` or a callable.
        key : PRNG key, e.g. ``jax.random.key(0)``.
        init : ``"default"`` (equinox's uniform fan-in init), ``"small"`` (all weights
            and biases ``~ N(0, small_scale^2)``) or ``"zero_last"`` (default init with the
            last layer's weights and bias zero: the output is exactly 0 at the start).
        small_scale : standard deviation for ``init="small"``.
        final_activation : applied to the output; name or callable.
        """
        for name, value in (("in_size", in_size), ("out_size", out_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        widths = tuple(widths)
        if any(not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"widths must be positive integers, got {widths!r}")
        if init not in _INITS:
            raise ValueError(f"init must be one of {_INITS}, got {init!r}")
        if not small_scale > 0:
            raise ValueError(f"small_scale must be positive, got {small_scale!r}")
        sizes = (in_size, *widths, out_size)
        keys = jax.random.split(key, len(sizes) - 1)
        layers = [eqx.nn.Linear(a, b, key=k) for a, b, k in zip(sizes[:-1], sizes[1:], keys,
                                                                strict=True)]
        if init == "small":
            noise_keys = jax.random.split(jax.random.fold_in(key, 1), 2 * len(layers))
            layers = [
                eqx.tree_at(lambda lin: (lin.weight, lin.bias), lin, (
                    small_scale * jax.random.normal(noise_keys[2 * i], lin.weight.shape),
                    small_scale * jax.random.normal(noise_keys[2 * i + 1], lin.bias.shape)))
                for i, lin in enumerate(layers)
            ]
        elif init == "zero_last":
            last = layers[-1]
            layers[-1] = eqx.tree_at(lambda lin: (lin.weight, lin.bias), last,
                                     (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)))
        self.layers = tuple(layers)
        self.activation = _activation(activation, "activation")
        self.final_activation = _activation(final_activation, "final_activation")

    def __call__(self, x: Array) -> Array:
        """Evaluate on one input vector of shape ``(in_size,)`` (``vmap`` for batches)."""
        if jnp.shape(x) != (self.in_size,):
            # A batch (B, in_size) would meet the weights as W @ x: an error for most B,
            # and for B == in_size a silently wrong column-wise evaluation.
            raise ValueError(f"MLP takes one input vector of shape ({self.in_size},), got "
                             f"shape {jnp.shape(x)}; use jax.vmap(net)(xs) for a batch")
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))
        return self.final_activation(self.layers[-1](x))

    @property
    def in_size(self) -> int:
        return self.layers[0].in_features

    @property
    def out_size(self) -> int:
        return self.layers[-1].out_features


def _activation(value, name: str) -> Callable:
    if callable(value):
        return value
    if value not in ACTIVATIONS:
        raise ValueError(f"{name} must be a callable or one of {sorted(ACTIVATIONS)}, "
                         f"got {value!r}")
    return ACTIVATIONS[value]


def flatten(tree: PyTree) -> tuple[Array, Callable[[Array], PyTree]]:
    """All floating-point arrays of ``tree`` (a network, or any pytree of parameters) as
    one vector, and the function that puts a vector of that size back.

    Non-float leaves (activations, integer arrays, static fields) are kept as they are.

    >>> vec, unflatten = flatten(net)
    >>> net2 = unflatten(vec * 0.5)     # same structure, new weights
    """
    params, static = eqx.partition(tree, eqx.is_inexact_array)
    vec, unravel = ravel_pytree(params)
    size = vec.shape[0]

    def unflatten(v: Array) -> PyTree:
        v = jnp.asarray(v)
        if v.shape != (size,):
            raise ValueError(f"expected a weight vector of shape ({size},), got {v.shape}")
        return eqx.combine(unravel(v), static)

    return vec, unflatten


def count_params(tree: PyTree) -> int:
    """Number of floating-point parameters in ``tree``."""
    return sum(x.size for x in jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array)))
