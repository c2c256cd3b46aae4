"""SINDy: fits, threshold sweeps and summaries over posterior draws."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jaxtyping import Array, ArrayLike, Bool, Float

from .. import _precision
from ._library import AbstractLibrary, PolynomialLibrary, _check_names, default_feature_names
from ._stlsq import stlsq_grid

CRITERIA = ("aicc", "bic")

# --------------------------------------------------------------------------------------
# Validation: on concrete values before anything is traced; shapes always.
# --------------------------------------------------------------------------------------


def _concrete(x) -> np.ndarray | None:
    if isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x)


def _as_data(x: ArrayLike, name: str, ndims: tuple[int, ...], layout: str) -> Array:
    if isinstance(x, jax.core.Tracer):
        arr = x
    else:
        try:
            arr = jnp.asarray(np.asarray(x) if not isinstance(x, jax.Array) else x)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a numeric array {layout}, got {type(x)}") from None
    if not (jnp.issubdtype(arr.dtype, jnp.floating) or jnp.issubdtype(arr.dtype, jnp.integer)):
        raise ValueError(f"{name} must be a real numeric array {layout}, got dtype {arr.dtype}")
    if arr.ndim not in ndims:
        want = " or ".join(f"{d}-D" for d in ndims)
        raise ValueError(f"{name} must be a {want} array {layout}, got shape {arr.shape}")
    if arr.shape[-2] == 0 or arr.shape[-1] == 0:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(float)
    arr = _precision.promote(arr)  # float32 data: the fit runs in JAX's default float
    bad = _count_nonfinite(arr)
    if bad:
        raise ValueError(
            f"{name} contains {bad} non-finite value{'s' if bad > 1 else ''} (NaN or inf) "
            f"out of {arr.size}; SINDy needs finite data"
        )
    return arr


def _count_nonfinite(arr: Array) -> int:
    """NaN/inf entries of a concrete array (0 for a tracer: nothing to check)."""
    value = _concrete(arr)
    if value is None:
        return 0
    return int(np.size(value) - np.count_nonzero(np.isfinite(value)))


def _check_samples(a: Array, a_name: str, b: Array, b_name: str) -> None:
    if a.shape[-2] != b.shape[-2]:
        raise ValueError(
            f"{a_name} and {b_name} must have the same number of samples (rows), got "
            f"{a.shape[-2]} and {b.shape[-2]}"
        )


def _check_scalar(x, name: str, *, minimum: float = 0.0) -> None:
    value = _concrete(x)
    if value is None:
        return
    if value.ndim != 0 or not np.isreal(value):
        raise ValueError(f"{name} must be a real scalar, got {x!r}")
    if not np.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum:g}, got {float(value)!r}")


def _check_thresholds(thresholds) -> Array:
    value = _concrete(thresholds)
    if value is None:
        return jnp.asarray(thresholds)
    value = np.asarray(value, dtype=float)
    if value.ndim != 1 or value.size == 0:
        raise ValueError(
            f"thresholds must be a non-empty 1-D array of values >= 0, got shape {value.shape}"
        )
    bad = ~np.isfinite(value) | (value < 0)
    if bad.any():
        raise ValueError(
            "thresholds must be finite and >= 0, got "
            f"{', '.join(repr(float(v)) for v in value[bad])}"
        )
    return jnp.asarray(value)


def _check_max_iter(max_iter) -> None:
    value = _concrete(max_iter)
    if value is None:
        return
    if (value.ndim != 0 or not np.issubdtype(value.dtype, np.integer)
            or isinstance(max_iter, bool) or value < 1):
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")


def _check_options(alpha, max_iter, unbias, rcond) -> float:
    """Check the solver options; returns ``rcond`` as a number (-1 for None)."""
    _check_scalar(alpha, "alpha")
    _check_max_iter(max_iter)
    if not isinstance(unbias, bool | np.bool_):
        raise ValueError(f"unbias must be True or False, got {unbias!r}")
    if rcond is None:
        return -1.0
    _check_scalar(rcond, "rcond")
    return rcond


def _check_library(library) -> AbstractLibrary:
    if library is None:
        return PolynomialLibrary(2)
    if not isinstance(library, AbstractLibrary):
        raise ValueError(
            f"library must be a bayes_ude.discovery library (e.g. PolynomialLibrary(2)), "
            f"got {library!r}"
        )
    return library


def _theta(library: AbstractLibrary, x: Array) -> Array:
    theta = library(x)
    bad = _count_nonfinite(theta)
    if bad:
        raise ValueError(
            f"library(X) produced {bad} non-finite value{'s' if bad > 1 else ''} (NaN or "
            "inf); check the library's functions on the range of X"
        )
    return theta


def _check_design(theta: Array, terms: Sequence[str]) -> None:
    """Warn when the library's columns do not determine the coefficients over the data:
    fewer samples than terms, or terms that are linear combinations of others (a state
    that is constant makes ``1``, ``u`` and ``u^2`` one column). The least-squares split
    between such terms is arbitrary, so thresholding can drop a true term."""
    value = _concrete(theta)
    if value is None or value.ndim != 2:
        return
    n_samples, n_terms = value.shape
    if n_samples < n_terms:
        warnings.warn(f"{n_samples} samples for {n_terms} library terms: the coefficients "
                      "are not determined by the data; use more samples or a smaller "
                      "library", RuntimeWarning, stacklevel=3)
        return
    norms = np.linalg.norm(value, axis=0)
    unit = value / np.where(norms > 0, norms, 1.0)
    singular = np.linalg.svd(unit, compute_uv=False)
    rank = int(np.sum(singular > 1e-8 * singular[0])) if singular.size else 0
    if rank == n_terms:
        return
    alike = [f"{terms[i]} ~ {terms[j]}" for i in range(n_terms) for j in range(i + 1, n_terms)
             if norms[i] > 0 and norms[j] > 0 and abs(unit[:, i] @ unit[:, j]) > 1 - 1e-10]
    zero = [terms[i] for i in range(n_terms) if norms[i] == 0]
    detail = "; ".join(part for part in (
        f"proportional over the data: {', '.join(alike[:6])}" if alike else "",
        f"zero over the data: {', '.join(zero)}" if zero else "") if part)
    warnings.warn(
        f"library(X) has rank {rank} for {n_terms} terms: some terms are linear combinations "
        f"of others over the data ({detail or 'not pairwise'}), so their coefficients are "
        "not determined and thresholding may drop a true term; remove a constant state or "
        "the redundant terms", RuntimeWarning, stacklevel=3)


def _first_draw(theta: Array) -> Array:
    """The library matrix :func:`_check_design` sees for a batch: the shared one, or the
    first draw's (the collinearity of a constant state is in every draw)."""
    return theta if theta.ndim == 2 else theta[0]


def _column_names(theta: Array) -> list[str]:
    return [f"column {i}" for i in range(theta.shape[-1])]


def _warn_empty(coef, target_names, threshold) -> None:
    """Warn for each target whose every term was thresholded away."""
    empty = [name for name, row in zip(target_names, np.asarray(coef), strict=True)
             if not np.any(row)]
    if empty:
        warnings.warn(f"threshold={float(threshold):g} removed every term of "
                      f"{', '.join(empty)}: the model says {empty[0]} = 0; try a smaller "
                      "threshold", RuntimeWarning, stacklevel=3)


def _names(library, n_features, n_targets, feature_names, target_names):
    feature_names = (default_feature_names(n_features) if feature_names is None else
                     _check_names(feature_names, n_features, "feature_names",
                                  "X (features, columns)"))
    if target_names is None:
        if n_targets == n_features:
            target_names = tuple(f"d{u}/dt" for u in feature_names)
        else:
            target_names = tuple(f"y{i + 1}" for i in range(n_targets))
    else:
        target_names = _check_names(target_names, n_targets, "target_names",
                                    "dX (targets, columns)")
    terms = tuple(library.term_names(feature_names))
    return feature_names, target_names, terms


# --------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------


def _format_number(c: float, precision: int) -> str:
    text = f"{c:.{precision}f}"
    if float(text) == 0.0 or abs(c) >= 1e6:
        text = f"{c:.{precision}e}"
    return text


def _check_precision(precision) -> None:
    if isinstance(precision, bool) or not isinstance(precision, int | np.integer) or precision < 0:
        raise ValueError(f"precision must be a non-negative integer, got {precision!r}")


def _equation(target: str, row: np.ndarray, terms: Sequence[str], precision: int) -> str:
    parts = []
    for c, term in zip(row, terms, strict=True):
        if c == 0:
            continue
        number = _format_number(abs(float(c)), precision)
        body = number if term == "1" else f"{number}*{term}"
        if not parts:
            parts.append(f"-{body}" if c < 0 else body)
        else:
            parts.append(f"- {body}" if c < 0 else f"+ {body}")
    return f"{target} = {' '.join(parts) if parts else '0'}"


def _active_terms_text(active: np.ndarray, targets: Sequence[str],
                       terms: Sequence[str]) -> str:
    out = []
    for target, row in zip(targets, active, strict=True):
        chosen = [t for t, a in zip(terms, row, strict=True) if a]
        out.append(f"{target}: {', '.join(chosen) if chosen else '(none)'}")
    return "; ".join(out)


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


class SINDyResult(eqx.Module):
    """A sparse model ``dX = library(X) @ coefficients.T``, from :func:`sindy` or :func:`sweep`.

    Attributes
    ----------
    coefficients : array of shape ``(n_targets, n_terms)``
        Coefficient of each library term in each target; exactly zero for inactive terms.
    library : AbstractLibrary
        The candidate library the model was fitted with.
    feature_names : tuple of str
        Names of the state components (columns of ``X``).
    target_names : tuple of str
        Names of the targets (columns of ``dX``), e.g. ``du1/dt``.
    term_names : tuple of str
        Names of the library terms, in column order.
    threshold : float
        The sparsity threshold ``lambda`` used.
    alpha : float
        The ridge strength used.
    error : float
        Mean squared residual ``RSS / n`` over all ``n = n_samples * n_targets`` values.
    aicc : float
        Corrected Akaike information criterion (formula in :func:`sweep`).
    bic : float
        Bayesian information criterion (formula in :func:`sweep`).
    converged : bool
        False if ``max_iter`` iterations ended before the active set settled.
    """

    coefficients: Float[Array, "n_targets n_terms"]
    library: AbstractLibrary
    feature_names: tuple[str, ...] = eqx.field(static=True)
    target_names: tuple[str, ...] = eqx.field(static=True)
    term_names: tuple[str, ...] = eqx.field(static=True)
    threshold: float = eqx.field(static=True)
    alpha: float = eqx.field(static=True)
    error: float = eqx.field(static=True)
    aicc: float = eqx.field(static=True)
    bic: float = eqx.field(static=True)
    converged: bool = eqx.field(static=True)

    @property
    def active(self) -> np.ndarray:
        """Boolean mask ``(n_targets, n_terms)`` of the non-zero coefficients."""
        return np.asarray(self.coefficients) != 0

    @property
    def n_active(self) -> int:
        """Number of non-zero coefficients (over all targets)."""
        return int(self.active.sum())

    def equations(self, precision: int = 3) -> list[str]:
        """The model as readable equations, one per target.

        Parameters
        ----------
        precision : int
            Digits after the decimal point (scientific notation for coefficients that
            would print as zero or are ``>= 1e6``).

        Returns
        -------
        list of str
            E.g. ``["du1/dt = 1.300*u1 - 0.900*u1*u2", ...]``; terms with a zero
            coefficient are omitted (``du1/dt = 0`` if all are).
        """
        _check_precision(precision)
        coef = np.asarray(self.coefficients)
        return [_equation(t, row, self.term_names, precision)
                for t, row in zip(self.target_names, coef, strict=True)]

    def table(self) -> pd.DataFrame:
        """Coefficients as a DataFrame: one row per target, one column per term that is
        active in at least one target (library order); 0.0 where a term is inactive."""
        coef = np.asarray(self.coefficients)
        keep = self.active.any(axis=0)
        return pd.DataFrame(coef[:, keep], index=pd.Index(self.target_names, name="target"),
                            columns=[t for t, k in zip(self.term_names, keep, strict=True) if k])

    def predict(self, x: ArrayLike) -> Float[Array, "... n_targets"]:
        """The model's right-hand side ``library(x) @ coefficients.T`` for states ``x`` of
        shape ``(..., n_features)`` (pure JAX; jits and vmaps)."""
        return self.library(x) @ self.coefficients.T


def stlsq(theta: ArrayLike, dX: ArrayLike, *, threshold: float = 0.1, alpha: float = 0.05,
          max_iter: int = 20, unbias: bool = True,
          rcond: float | None = 1e-6) -> Float[Array, "n_targets n_terms"]:
    """Sequentially thresholded least squares on a given library matrix.

    The algorithm of pysindy's ``STLSQ(threshold, alpha, max_iter)`` with
    ``normalize_columns=False`` and ``unbias=True`` (agreement checked to 1e-6): ridge
    regression on the active terms, terms with ``|coefficient| < threshold`` dropped,
    repeated until the active set stops changing or ``max_iter`` iterations; then an
    unregularised least-squares refit on the final active set (``unbias``). Pure JAX with
    fixed shapes: ``jax.jit`` and ``jax.vmap`` work (over ``dX``, ``theta``, ``threshold``
    or ``alpha``); for many draws at once see :func:`stlsq_batched`.

    Parameters
    ----------
    theta : array of shape ``(n_samples, n_terms)``
        The library evaluated at the states, ``library(X)``.
    dX : array of shape ``(n_samples, n_targets)``
        The targets: derivatives, or a learned term evaluated at the same states.
    threshold : float
        Sparsity threshold ``lambda >= 0``.
    alpha : float
        Ridge strength ``>= 0`` in ``||y - Theta w||^2 + alpha ||w||^2``.
    max_iter : int
        Maximum number of thresholding iterations (``>= 1``).
    unbias : bool
        Refit the final active set without the ridge penalty (pysindy's default).
    rcond : float or None
        Singular values of the active columns below ``rcond`` times the largest count as
        zero in the refit; ``1e-6`` matches pysindy (through scikit-learn >= 1.9's
        ``LinearRegression(tol=1e-6)``) and only matters when ``theta`` has a condition
        number above ``1e6``. ``None`` uses machine precision (plain least squares).

    Returns
    -------
    Array of shape ``(n_targets, n_terms)``; zero for inactive terms.
    """
    theta = _as_data(theta, "theta", (2,), "(n_samples, n_terms)")
    dX = _as_data(dX, "dX", (2,), "(n_samples, n_targets)")
    _check_samples(theta, "theta", dX, "dX")
    _check_scalar(threshold, "threshold")
    rcond = _check_options(alpha, max_iter, unbias, rcond)
    _check_design(theta, _column_names(theta))
    out = stlsq_grid(theta, dX[None], jnp.reshape(threshold, (1,)).astype(dX.dtype), alpha,
                     max_iter, bool(unbias), rcond, False)
    return out[0][0, 0]


def stlsq_batched(theta: ArrayLike, dX: ArrayLike, *, threshold: float = 0.1,
                  alpha: float = 0.05, max_iter: int = 20,
                  unbias: bool = True,
                  rcond: float | None = 1e-6) -> Float[Array, "n_draws n_targets n_terms"]:
    """:func:`stlsq` for many draws at once (one compiled, vmapped computation).

    Parameters
    ----------
    theta : array of shape ``(n_samples, n_terms)`` or ``(n_draws, n_samples, n_terms)``
        The library matrix, shared by all draws or one per draw.
    dX : array of shape ``(n_draws, n_samples, n_targets)``
        The targets of each draw (e.g. a learned term evaluated for each posterior draw).
    threshold, alpha, max_iter, unbias, rcond
        As in :func:`stlsq`.

    Returns
    -------
    Array of shape ``(n_draws, n_targets, n_terms)``.
    """
    theta = _as_data(theta, "theta", (2, 3), "(n_samples, n_terms) or (n_draws, n_samples, "
                     "n_terms)")
    dX = _as_data(dX, "dX", (3,), "(n_draws, n_samples, n_targets)")
    _check_samples(theta, "theta", dX, "dX")
    if theta.ndim == 3 and theta.shape[0] != dX.shape[0]:
        raise ValueError(f"theta and dX must have the same number of draws, got "
                         f"{theta.shape[0]} and {dX.shape[0]}")
    _check_scalar(threshold, "threshold")
    rcond = _check_options(alpha, max_iter, unbias, rcond)
    _check_design(_first_draw(theta), _column_names(theta))
    out = stlsq_grid(theta, dX, jnp.reshape(threshold, (1,)).astype(dX.dtype), alpha, max_iter,
                     bool(unbias), rcond, theta.ndim == 3)
    return out[0][0]


def _result(coef, library, names, threshold, alpha, error, aicc, bic, converged):
    feature_names, target_names, terms = names
    return SINDyResult(
        coefficients=coef, library=library, feature_names=feature_names,
        target_names=target_names, term_names=terms, threshold=float(threshold),
        alpha=float(alpha), error=float(error), aicc=float(aicc), bic=float(bic),
        converged=bool(converged),
    )


def _prepare(X, dX, library, feature_names, target_names, *, batched=False):
    library = _check_library(library)
    if batched:
        X = _as_data(X, "X", (2, 3), "(n_samples, n_features) or (n_draws, n_samples, "
                     "n_features)")
        dX = _as_data(dX, "dX", (3,), "(n_draws, n_samples, n_targets)")
        if X.ndim == 3 and X.shape[0] != dX.shape[0]:
            raise ValueError(f"X and dX must have the same number of draws, got "
                             f"{X.shape[0]} and {dX.shape[0]}")
    else:
        X = _as_data(X, "X", (2,), "(n_samples, n_features)")
        dX = _as_data(dX, "dX", (2,), "(n_samples, n_targets)")
    _check_samples(X, "X", dX, "dX")
    names = _names(library, X.shape[-1], dX.shape[-1], feature_names, target_names)
    return library, X, dX, _theta(library, X), names


def sindy(X: ArrayLike, dX: ArrayLike, library: AbstractLibrary | None = None, *,
          threshold: float = 0.1, alpha: float = 0.05, max_iter: int = 20,
          unbias: bool = True, rcond: float | None = 1e-6,
          feature_names: Sequence[str] | None = None,
          target_names: Sequence[str] | None = None) -> SINDyResult:
    """Find a sparse model ``dX ~ library(X) @ coefficients.T`` by :func:`stlsq`.

    Parameters
    ----------
    X : array of shape ``(n_samples, n_features)``
        States.
    dX : array of shape ``(n_samples, n_targets)``
        Derivatives at those states, or a learned term evaluated there.
    library : AbstractLibrary, optional
        Candidate terms; default ``PolynomialLibrary(2)``.
    threshold, alpha, max_iter, unbias, rcond
        As in :func:`stlsq`.
    feature_names : sequence of str, optional
        Names of the columns of ``X``; default ``u1, u2, ...``.
    target_names : sequence of str, optional
        Names of the columns of ``dX``; default ``du1/dt, ...`` when ``dX`` has as many
        columns as ``X``, else ``y1, y2, ...``.

    Returns
    -------
    SINDyResult
        Warns (``RuntimeWarning``) if the active set had not settled after ``max_iter``.
    """
    library, X, dX, theta, names = _prepare(X, dX, library, feature_names, target_names)
    _check_scalar(threshold, "threshold")
    rcond = _check_options(alpha, max_iter, unbias, rcond)
    _check_design(theta, names[2])
    coef, converged, k, error, aicc, bic = (
        a[0, 0] for a in stlsq_grid(theta, dX[None], jnp.reshape(threshold, (1,)).astype(dX.dtype),
                                    alpha, max_iter, bool(unbias), rcond, False))
    if not bool(converged):
        warnings.warn(f"STLSQ did not converge after max_iter={max_iter} iterations",
                      RuntimeWarning, stacklevel=2)
    _warn_empty(coef, names[1], threshold)
    return _result(coef, library, names, threshold, alpha, error, aicc, bic, converged)


class SweepResult(NamedTuple):
    """Result of :func:`sweep`; unpacks as ``table, best = sweep(...)``.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per threshold: ``lambda, n_active, terms, error, aicc, bic, converged``.
    best : SINDyResult
        The fit with the smallest value of the chosen criterion (the smallest threshold
        among ties).
    """

    table: pd.DataFrame
    best: SINDyResult


def sweep(X: ArrayLike, dX: ArrayLike, library: AbstractLibrary | None = None,
          thresholds: ArrayLike = (0.01, 0.03, 0.1, 0.3, 1.0), *, alpha: float = 0.05,
          max_iter: int = 20, unbias: bool = True, rcond: float | None = 1e-6,
          criterion: str = "aicc",
          feature_names: Sequence[str] | None = None,
          target_names: Sequence[str] | None = None) -> SweepResult:
    r"""Fit :func:`sindy` for each threshold and select the best by AICc or BIC.

    With ``n = n_samples * n_targets`` data values, ``k`` active terms (non-zero
    coefficients over all targets) and ``RSS`` the residual sum of squares over all
    values:

    - ``error = RSS / n`` (mean squared residual),
    - ``AICc = n log(RSS/n) + 2k + 2k(k+1)/(n-k-1)`` (``inf`` when ``n - k - 1 <= 0``),
    - ``BIC = n log(RSS/n) + k log(n)``.

    These are the Gaussian-likelihood criteria with the noise variance profiled out
    (constants dropped), as in Mangan et al. (2017), *Model selection for dynamical
    systems via sparse regression and information criteria*. All thresholds are fitted
    in one vmapped computation.

    Parameters
    ----------
    X, dX, library, alpha, max_iter, unbias, rcond, feature_names, target_names
        As in :func:`sindy`.
    thresholds : 1-D array
        The thresholds ``lambda >= 0`` to try.
    criterion : {"aicc", "bic"}
        The criterion that selects ``best``.

    Returns
    -------
    SweepResult
        ``(table, best)``.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    library, X, dX, theta, names = _prepare(X, dX, library, feature_names, target_names)
    thresholds = _check_thresholds(thresholds).astype(dX.dtype)
    rcond = _check_options(alpha, max_iter, unbias, rcond)
    _check_design(theta, names[2])
    coef, converged, k, error, aicc, bic = (
        np.asarray(a[:, 0]) for a in stlsq_grid(theta, dX[None], thresholds, alpha,
                                                max_iter, bool(unbias), rcond, False))
    _, target_names_, terms = names
    table = pd.DataFrame({
        "lambda": np.asarray(thresholds),
        "n_active": k,
        "terms": [_active_terms_text(c != 0, target_names_, terms) for c in coef],
        "error": error,
        "aicc": aicc,
        "bic": bic,
        "converged": converged,
    })
    i = int(np.argmin(aicc if criterion == "aicc" else bic))
    _warn_empty(coef[i], target_names_, thresholds[i])
    best = _result(jnp.asarray(coef[i]), library, names, thresholds[i], alpha, error[i],
                   aicc[i], bic[i], converged[i])
    return SweepResult(table, best)


class BatchedSweep(eqx.Module):
    """Result of :func:`sweep_batched`: fits for every threshold and every draw.

    Attributes
    ----------
    thresholds : array of shape ``(n_thresholds,)``
        The thresholds ``lambda``.
    coefficients : array of shape ``(n_thresholds, n_draws, n_targets, n_terms)``
        The coefficients of every fit.
    n_active : array of shape ``(n_thresholds, n_draws)``
        Number of non-zero coefficients of every fit.
    error : array of shape ``(n_thresholds, n_draws)``
        Mean squared residual of every fit.
    aicc : array of shape ``(n_thresholds, n_draws)``
        AICc of every fit (formula in :func:`sweep`).
    bic : array of shape ``(n_thresholds, n_draws)``
        BIC of every fit.
    converged : array of shape ``(n_thresholds, n_draws)``
        Whether the active set settled within ``max_iter``.
    feature_names : tuple of str
        Names of the state components.
    target_names : tuple of str
        Names of the targets.
    term_names : tuple of str
        Names of the library terms.
    """

    thresholds: Float[Array, " n_thresholds"]
    coefficients: Float[Array, "n_thresholds n_draws n_targets n_terms"]
    n_active: Float[Array, "n_thresholds n_draws"]
    error: Float[Array, "n_thresholds n_draws"]
    aicc: Float[Array, "n_thresholds n_draws"]
    bic: Float[Array, "n_thresholds n_draws"]
    converged: Bool[Array, "n_thresholds n_draws"]
    feature_names: tuple[str, ...] = eqx.field(static=True)
    target_names: tuple[str, ...] = eqx.field(static=True)
    term_names: tuple[str, ...] = eqx.field(static=True)

    def inclusion(self, index: int) -> pd.DataFrame:
        """Fraction of draws in which each term is active, at threshold number ``index``:
        one row per target, one column per term."""
        n = len(self.thresholds)
        if not isinstance(index, (int, np.integer)) or not -n <= index < n:
            raise ValueError(f"index must be an integer in [0, {n}) (a threshold's position "
                             f"in thresholds), got {index!r}")
        active = np.asarray(self.coefficients)[index] != 0
        return pd.DataFrame(active.mean(axis=0),
                            index=pd.Index(self.target_names, name="target"),
                            columns=list(self.term_names))

    def summary(self, precision: int = 3) -> pd.DataFrame:
        """One row per threshold, summarising the draws.

        Columns: ``lambda``; ``n_active``, ``dominant_terms`` (the most common active set
        over the draws) and ``pct_draws`` (percentage of draws selecting exactly that
        set); ``equations`` (the dominant set with the coefficients averaged over the
        draws that select it); ``error``, ``aicc`` and ``bic`` (means over all draws).
        """
        _check_precision(precision)
        coef = np.asarray(self.coefficients)
        n_thresholds, n_draws = coef.shape[:2]
        rows = []
        for i in range(n_thresholds):
            active = (coef[i] != 0).reshape(n_draws, -1)
            sets, inverse, counts = np.unique(active, axis=0, return_inverse=True,
                                              return_counts=True)
            j = int(np.argmax(counts))
            dominant = sets[j].reshape(coef.shape[2:])
            mean_coef = coef[i][inverse.ravel() == j].mean(axis=0)
            rows.append({
                "lambda": float(self.thresholds[i]),
                "n_active": int(dominant.sum()),
                "dominant_terms": _active_terms_text(dominant, self.target_names,
                                                     self.term_names),
                "pct_draws": 100.0 * counts[j] / n_draws,
                "equations": "; ".join(
                    _equation(t, row, self.term_names, precision)
                    for t, row in zip(self.target_names, mean_coef, strict=True)),
                "error": float(np.mean(self.error[i])),
                "aicc": float(np.mean(self.aicc[i])),
                "bic": float(np.mean(self.bic[i])),
            })
        return pd.DataFrame(rows)


def sweep_batched(X: ArrayLike, dX: ArrayLike, library: AbstractLibrary | None = None,
                  thresholds: ArrayLike = (0.01, 0.03, 0.1, 0.3, 1.0), *,
                  alpha: float = 0.05, max_iter: int = 20, unbias: bool = True,
                  rcond: float | None = 1e-6,
                  feature_names: Sequence[str] | None = None,
                  target_names: Sequence[str] | None = None) -> BatchedSweep:
    """:func:`sweep` over many draws at once, e.g. a learned term at each posterior draw.

    Every (threshold, draw) pair is fitted in one compiled, vmapped computation;
    :meth:`BatchedSweep.summary` reports, for each threshold, the dominant active set,
    the percentage of draws selecting it, and mean error, AICc and BIC.

    Parameters
    ----------
    X : array of shape ``(n_samples, n_features)`` or ``(n_draws, n_samples, n_features)``
        States, shared by all draws or one set per draw.
    dX : array of shape ``(n_draws, n_samples, n_targets)``
        Targets of each draw.
    library, thresholds, alpha, max_iter, unbias, rcond, feature_names, target_names
        As in :func:`sweep`.

    Returns
    -------
    BatchedSweep
    """
    library, X, dX, theta, names = _prepare(X, dX, library, feature_names, target_names,
                                            batched=True)
    thresholds = _check_thresholds(thresholds).astype(dX.dtype)
    rcond = _check_options(alpha, max_iter, unbias, rcond)
    _check_design(_first_draw(theta), names[2])
    coef, converged, k, error, aicc, bic = stlsq_grid(theta, dX, thresholds, alpha, max_iter,
                                                      bool(unbias), rcond, theta.ndim == 3)
    feature_names_, target_names_, terms = names
    return BatchedSweep(thresholds=thresholds, coefficients=coef, n_active=k, error=error,
                        aicc=aicc, bic=bic, converged=converged, feature_names=feature_names_,
                        target_names=target_names_, term_names=terms)

