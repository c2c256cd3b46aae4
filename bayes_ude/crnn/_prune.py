"""Pruning a trained CRNN and reading its weights as a reaction mechanism."""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike

from ._model import CRNN


def prune(model: CRNN, threshold: float = 0.1) -> CRNN:
    """Set every stoichiometric coefficient (and free order) with ``|value| < threshold``
    to zero, through the model's ``mask``: a refit (:func:`bayes_ude.crnn.fit`) keeps them
    at zero. A reaction left with no coefficient is absent.

    The default 0.1: a coefficient of a true reaction is an integer (a half at the least),
    so a tenth is far from any of them and well above what weight decay leaves of an
    unneeded coefficient.
    """
    if not isinstance(model, CRNN):
        raise TypeError(f"model must be a crnn.CRNN, got {type(model).__name__}")
    if not threshold >= 0:
        raise ValueError(f"threshold must be >= 0, got {threshold!r}")
    mask = model.mask & (jnp.abs(model.stoichiometry) >= threshold)
    new = eqx.tree_at(lambda m: m.mask, model, mask)
    if model.free_orders is not None:
        order_mask = model.order_mask & (jnp.abs(model.free_orders) >= threshold)
        # A reaction without any stoichiometric coefficient does nothing: drop its orders.
        order_mask = order_mask & jnp.any(mask, axis=1, keepdims=True)
        new = eqx.tree_at(lambda m: m.order_mask, new, order_mask)
    return new


def unprune(model: CRNN) -> CRNN:
    """Every weight free again, the pruned ones starting at exactly zero: e.g. to sample
    the full B-CRNN posterior around a pruned fit."""
    if not isinstance(model, CRNN):
        raise TypeError(f"model must be a crnn.CRNN, got {type(model).__name__}")
    new = eqx.tree_at(lambda m: (m.stoichiometry, m.mask), model,
                      (model.nu, jnp.ones_like(model.mask)))
    if model.free_orders is not None:
        new = eqx.tree_at(lambda m: (m.free_orders, m.order_mask), new,
                          (jnp.where(model.order_mask, model.free_orders, 0.0),
                           jnp.ones_like(model.order_mask)))
    return new


def round_stoichiometry(model: CRNN, step: float = 1.0) -> CRNN:
    """The kept stoichiometric coefficients rounded to multiples of ``step`` (integers by
    default; 0.5 for half-integer mechanisms): reading a trained, pruned CRNN as a
    mechanism (``2.03A -> 1.02B`` is ``2A -> B``). A coefficient that rounds to zero is
    pruned. Refit (or sample) the rate constants afterwards: they were trained with the
    unrounded coefficients."""
    if not isinstance(model, CRNN):
        raise TypeError(f"model must be a crnn.CRNN, got {type(model).__name__}")
    if not step > 0:
        raise ValueError(f"step must be positive, got {step!r}")
    rounded = step * jnp.round(model.stoichiometry / step)
    mask = model.mask & (rounded != 0)
    return eqx.tree_at(lambda m: (m.stoichiometry, m.mask), model,
                       (jnp.where(mask, rounded, 0.0), mask))


def active_reactions(model: CRNN) -> np.ndarray:
    """Boolean ``(n_reactions,)``: reactions with at least one coefficient left."""
    return np.asarray(model.mask).any(axis=1)  # NumPy: also inside a traced function


class Reaction(NamedTuple):
    """One reaction of a mechanism: ``{species: coefficient}`` of reactants (consumed,
    positive numbers) and products, its rate constant, its reaction orders
    ``{species: order}`` and its index among the candidate reactions."""

    reactants: dict
    products: dict
    rate_constant: float
    orders: dict
    index: int

    def format(self, digits: int = 2) -> str:
        """Chemistry notation, e.g. ``2A -> B  k=0.100``; coefficients rounded to
        ``digits`` decimals (1 omitted); free orders that differ from the reactant
        coefficients are appended."""
        def side(terms):
            if not terms:
                return "0"
            out = []
            for name, coef in terms.items():
                c = round(float(coef), digits)
                out.append(name if c == 1 else f"{c:g}{name}")
            return " + ".join(out)

        text = f"{side(self.reactants)} -> {side(self.products)}  k={self.rate_constant:#.3g}"
        rounded = {n: round(float(o), digits) for n, o in self.orders.items()}
        if rounded != {n: round(float(c), digits) for n, c in self.reactants.items()}:
            text += "  orders " + ", ".join(f"{n}:{o:g}" for n, o in rounded.items())
        return text

    def __str__(self) -> str:
        return self.format()


def mechanism(model: CRNN, temperature: ArrayLike | None = None) -> list[Reaction]:
    """The reactions of ``model`` (the active ones, in candidate order), with rate
    constants at ``temperature`` (one, in kelvin) for an Arrhenius model."""
    if temperature is not None and np.ndim(temperature) != 0:
        raise ValueError(f"temperature must be one number (kelvin), got shape "
                         f"{np.shape(temperature)}")
    nu = np.asarray(model.nu)
    orders = np.asarray(model.reaction_orders)
    k = np.asarray(model.rate_constants(temperature))
    out = []
    for j in np.flatnonzero(active_reactions(model)):
        reactants = {s: -nu[j, i] for i, s in enumerate(model.species) if nu[j, i] < 0}
        products = {s: nu[j, i] for i, s in enumerate(model.species) if nu[j, i] > 0}
        order = {s: orders[j, i] for i, s in enumerate(model.species) if orders[j, i] > 0}
        out.append(Reaction(reactants, products, float(k[j]), order, int(j)))
    return out


def format_mechanism(model: CRNN, temperature: ArrayLike | None = None,
                     digits: int = 2) -> str:
    """The mechanism of ``model`` in chemistry notation, one reaction a line
    (``2A -> B  k=0.1``). Print it."""
    reactions = mechanism(model, temperature)
    if not reactions:
        return "(no reactions)"
    return "\n".join(r.format(digits) for r in reactions)
