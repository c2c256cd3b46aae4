"""Candidate libraries: the columns ``Theta(X)`` that a derivative is regressed on.

A library maps states ``X`` of shape ``(..., n_features)`` to candidate terms of shape
``(..., n_terms)`` in pure ``jax.numpy`` (so it jits, vmaps and differentiates), and names
its terms given the feature names. Libraries combine: ``a + b`` concatenates their columns
(:class:`ConcatLibrary`), ``a * b`` takes every product of a column of ``a`` with a column
of ``b`` (:class:`TensorLibrary`).
"""

from __future__ import annotations

import abc
import functools
import itertools
import operator
from collections import Counter
from collections.abc import Callable, Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float


def default_feature_names(n_features: int) -> tuple[str, ...]:
    """The default names of the state components: ``u1, u2, ...``."""
    return tuple(f"u{i + 1}" for i in range(n_features))


def _check_names(names: Sequence[str] | None, n: int, what: str, where: str) -> tuple[str, ...]:
    if isinstance(names, str):
        raise ValueError(f"{what} must be a sequence of strings, got the string {names!r}")
    names = tuple(str(s) for s in names)
    if len(names) != n:
        raise ValueError(f"{what} has {len(names)} names but {where} has {n}")
    return names


def _as_states(x: ArrayLike) -> Array:
    x = jnp.asarray(x)
    if x.ndim == 0:
        raise ValueError("a library needs states of shape (..., n_features), got a scalar")
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        x = x.astype(float)
    return x


class AbstractLibrary(eqx.Module):
    """A set of candidate terms: ``library(X)`` is the matrix ``Theta``.

    Subclasses implement :meth:`__call__` and :meth:`term_names`. ``a + b`` is
    ``ConcatLibrary(a, b)`` and ``a * b`` is ``TensorLibrary(a, b)``.
    """

    @abc.abstractmethod
    def __call__(self, x: ArrayLike) -> Float[Array, "... n_terms"]:
        """Evaluate the terms at states ``x`` of shape ``(..., n_features)``.

        Parameters
        ----------
        x : array of shape ``(..., n_features)``
            States; leading axes (samples, draws) are kept.

        Returns
        -------
        Array of shape ``(..., n_terms)``.
        """

    @abc.abstractmethod
    def term_names(self, feature_names: Sequence[str]) -> list[str]:
        """Readable names of the terms, in column order, for the given feature names."""

    def n_terms(self, n_features: int) -> int:
        """Number of terms (columns of ``Theta``) for ``n_features`` state components."""
        return len(self.term_names(default_feature_names(n_features)))

    def __add__(self, other: AbstractLibrary) -> ConcatLibrary:
        if not isinstance(other, AbstractLibrary):
            return NotImplemented
        return ConcatLibrary(self, other)

    def __mul__(self, other: AbstractLibrary) -> TensorLibrary:
        if not isinstance(other, AbstractLibrary):
            return NotImplemented
        return TensorLibrary(self, other)


def _monomial_name(combination: tuple[int, ...], feature_names: Sequence[str]) -> str:
    if not combination:
        return "1"
    counts = Counter(combination)
    parts = []
    for i in sorted(counts):
        parts.append(feature_names[i] if counts[i] == 1 else f"{feature_names[i]}^{counts[i]}")
    return "*".join(parts)


class PolynomialLibrary(AbstractLibrary):
    """All monomials of the state up to a total degree.

    Terms are ordered by degree, then lexicographically (the order of
    ``itertools.combinations_with_replacement`` and of pysindy's ``PolynomialLibrary``):
    for two features and degree 2, ``1, u1, u2, u1^2, u1*u2, u2^2``.

    Attributes
    ----------
    degree : int
        Highest total degree, an integer >= 1.
    include_bias : bool
        Whether the constant term ``1`` is included (default True).
    include_interaction : bool
        Whether products of different features are included (default True); if False,
        only the powers ``u_i^d`` are.
    """

    degree: int = eqx.field(static=True)
    include_bias: bool = eqx.field(static=True)
    include_interaction: bool = eqx.field(static=True)

    def __init__(self, degree: int = 2, *, include_bias: bool = True,
                 include_interaction: bool = True):
        if (isinstance(degree, bool) or not isinstance(degree, int | np.integer)
                or degree < 1):
            raise ValueError(f"PolynomialLibrary degree must be an integer >= 1, got {degree!r}")
        self.degree = int(degree)
        self.include_bias = bool(include_bias)
        self.include_interaction = bool(include_interaction)

    def combinations(self, n_features: int) -> list[tuple[int, ...]]:
        """The feature indices multiplied together in each term (``()`` is the constant)."""
        out: list[tuple[int, ...]] = []
        for d in range(0 if self.include_bias else 1, self.degree + 1):
            if self.include_interaction or d == 0:
                out.extend(itertools.combinations_with_replacement(range(n_features), d))
            else:
                out.extend((i,) * d for i in range(n_features))
        return out

    def __call__(self, x: ArrayLike) -> Float[Array, "... n_terms"]:
        x = _as_states(x)
        columns = []
        for c in self.combinations(x.shape[-1]):
            if c:
                columns.append(functools.reduce(operator.mul, [x[..., i] for i in c]))
            else:
                columns.append(jnp.ones(x.shape[:-1], x.dtype))
        return jnp.stack(columns, axis=-1)

    def term_names(self, feature_names: Sequence[str]) -> list[str]:
        return [_monomial_name(c, feature_names) for c in self.combinations(len(feature_names))]


class FunctionLibrary(AbstractLibrary):
    """User functions, each applied elementwise to each state component.

    Columns are ordered function-major: ``f1(u1), f1(u2), ..., f2(u1), ...``.

    Attributes
    ----------
    functions : tuple of callables
        Elementwise ``jax.numpy`` functions of one array (e.g. ``jnp.sin``,
        ``lambda u: 1 / u``).
    names : tuple of str
        One name per function. A name containing ``{}`` is a template filled with the
        feature name (``"1/{}"`` gives ``1/u1``); any other name is written as a call
        (``"sin"`` gives ``sin(u1)``). Default: each function's ``__name__``.
    """

    functions: tuple[Callable, ...] = eqx.field(static=True)
    names: tuple[str, ...] = eqx.field(static=True)

    def __init__(self, functions: Sequence[Callable], names: Sequence[str] | None = None):
        functions = tuple(functions)
        if not functions:
            raise ValueError("FunctionLibrary functions must be a non-empty sequence of callables")
        for i, f in enumerate(functions):
            if not callable(f):
                raise ValueError(f"FunctionLibrary functions[{i}] must be callable, got {f!r}")
        if names is None:
            names = []
            for i, f in enumerate(functions):
                name = getattr(f, "__name__", None)
                if name is None or name == "<lambda>":
                    raise ValueError(
                        f"FunctionLibrary functions[{i}] has no usable __name__; pass names="
                    )
                names.append(name)
        self.functions = functions
        self.names = _check_names(names, len(functions), "FunctionLibrary names",
                                  "functions")

    def __call__(self, x: ArrayLike) -> Float[Array, "... n_terms"]:
        x = _as_states(x)
        columns = []
        for f, name in zip(self.functions, self.names, strict=True):
            for i in range(x.shape[-1]):
                col = jnp.asarray(f(x[..., i]))
                if col.shape != x.shape[:-1]:
                    raise ValueError(
                        f"FunctionLibrary function {name!r} must act elementwise: for input "
                        f"shape {x.shape[:-1]} it returned shape {col.shape}"
                    )
                columns.append(col.astype(x.dtype))
        return jnp.stack(columns, axis=-1)

    def term_names(self, feature_names: Sequence[str]) -> list[str]:
        out = []
        for name in self.names:
            for u in feature_names:
                out.append(name.format(u) if "{}" in name else f"{name}({u})")
        return out


def _flatten_concat(libraries) -> tuple[AbstractLibrary, ...]:
    out: list[AbstractLibrary] = []
    for lib in libraries:
        if isinstance(lib, ConcatLibrary):
            out.extend(lib.libraries)
        elif isinstance(lib, AbstractLibrary):
            out.append(lib)
        else:
            raise ValueError(f"ConcatLibrary needs libraries, got {lib!r}")
    return tuple(out)


class ConcatLibrary(AbstractLibrary):
    """The columns of several libraries side by side (``a + b``).

    Attributes
    ----------
    libraries : tuple of AbstractLibrary
        The libraries, in column order (nested concatenations are flattened).
    """

    libraries: tuple[AbstractLibrary, ...]

    def __init__(self, *libraries: AbstractLibrary):
        if not libraries:
            raise ValueError("ConcatLibrary needs at least one library")
        self.libraries = _flatten_concat(libraries)

    def __call__(self, x: ArrayLike) -> Float[Array, "... n_terms"]:
        x = _as_states(x)
        return jnp.concatenate([lib(x) for lib in self.libraries], axis=-1)

    def term_names(self, feature_names: Sequence[str]) -> list[str]:
        return [name for lib in self.libraries for name in lib.term_names(feature_names)]


def _product_name(a: str, b: str) -> str:
    if a == "1":
        return b
    if b == "1":
        return a
    return f"{a}*{b}"


class TensorLibrary(AbstractLibrary):
    """Every product of a term of ``left`` with a term of ``right`` (``left * right``).

    Columns are ordered left-major: ``l1*r1, l1*r2, ..., l2*r1, ...``. A constant term
    ``1`` on either side is left out of the product's name (``1*sin(u1)`` is ``sin(u1)``).
    Products of two polynomial libraries repeat monomials (``u1*u2`` and ``u2*u1``);
    such duplicate columns make the regression rank deficient, so prefer a higher
    :class:`PolynomialLibrary` degree for pure polynomials.

    Attributes
    ----------
    left : AbstractLibrary
        The first factor.
    right : AbstractLibrary
        The second factor.
    """

    left: AbstractLibrary
    right: AbstractLibrary

    def __init__(self, left: AbstractLibrary, right: AbstractLibrary):
        for name, lib in (("left", left), ("right", right)):
            if not isinstance(lib, AbstractLibrary):
                raise ValueError(f"TensorLibrary {name} must be a library, got {lib!r}")
        self.left = left
        self.right = right

    def __call__(self, x: ArrayLike) -> Float[Array, "... n_terms"]:
        x = _as_states(x)
        a, b = self.left(x), self.right(x)
        prod = a[..., :, None] * b[..., None, :]
        return prod.reshape(*prod.shape[:-2], a.shape[-1] * b.shape[-1])

    def term_names(self, feature_names: Sequence[str]) -> list[str]:
        return [_product_name(a, b) for a in self.left.term_names(feature_names)
                for b in self.right.term_names(feature_names)]
