"""Doses and known discontinuities, turned into a fixed-size table of events.

A solve with events is a sequence of segments ``[e_{k-1}, e_k]``; each segment is an
ordinary adaptive solve (so the solver steps exactly to each event time and restarts
there), and at each event the state jumps (bolus doses) and the piecewise-constant input
rates change (infusions start or stop). The table has a static number of rows, so it
batches under ``jax.vmap`` (pad a subject with fewer doses with zero amounts).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int


def _as_1d(x, name: str, dtype) -> Array:
    x = jnp.asarray(x, dtype=dtype)
    if x.ndim == 0:
        x = x[None]
    if x.ndim != 1:
        raise ValueError(f"{name} must be a scalar or a 1-D array, got shape {x.shape}")
    return x


class Bolus(eqx.Module):
    """Bolus doses: at ``times[i]``, ``amounts[i]`` is added to state ``compartment[i]``.

    All three broadcast to a common length. ``amounts`` is differentiable (e.g. a
    bioavailability factor times the dose); the times are constants of the solve.
    """

    times: Float[Array, " n"]
    amounts: Float[Array, " n"]
    compartment: Int[Array, " n"]

    def __init__(self, times: ArrayLike, amounts: ArrayLike, compartment: ArrayLike = 0):
        t = _as_1d(times, "Bolus.times", float)
        a = _as_1d(amounts, "Bolus.amounts", float)
        c = _as_1d(compartment, "Bolus.compartment", jnp.int32)
        try:
            n = np.broadcast_shapes(t.shape, a.shape, c.shape)
        except ValueError:
            raise ValueError(
                "Bolus.times, Bolus.amounts and Bolus.compartment must have the same length "
                f"(or length 1), got {t.shape[0]}, {a.shape[0]} and {c.shape[0]}"
            ) from None
        self.times = jnp.broadcast_to(t, n)
        self.amounts = jnp.broadcast_to(a, n)
        self.compartment = jnp.broadcast_to(c, n)


class Infusion(eqx.Module):
    """Zero-order infusions: ``rate[i]`` (amount per unit time) into state
    ``compartment[i]`` over ``[start[i], start[i] + duration[i]]``."""

    start: Float[Array, " n"]
    duration: Float[Array, " n"]
    rate: Float[Array, " n"]
    compartment: Int[Array, " n"]

    def __init__(
        self, start: ArrayLike, duration: ArrayLike, rate: ArrayLike, compartment: ArrayLike = 0
    ):
        s = _as_1d(start, "Infusion.start", float)
        d = _as_1d(duration, "Infusion.duration", float)
        r = _as_1d(rate, "Infusion.rate", float)
        c = _as_1d(compartment, "Infusion.compartment", jnp.int32)
        try:
            n = np.broadcast_shapes(s.shape, d.shape, r.shape, c.shape)
        except ValueError:
            raise ValueError(
                "Infusion.start, duration, rate and compartment must have the same length "
                "(or length 1)"
            ) from None
        self.start = jnp.broadcast_to(s, n)
        self.duration = jnp.broadcast_to(d, n)
        self.rate = jnp.broadcast_to(r, n)
        self.compartment = jnp.broadcast_to(c, n)


def _concrete(x) -> np.ndarray | None:
    """The value of ``x`` if it is known now (not a tracer), else ``None``."""
    if isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x)


def validate_doses(doses, n_state: int | None, t0, t_end) -> None:
    """Check dose values where they are concrete; raise ``ValueError`` naming the field."""
    for i, dose in enumerate(doses):
        where = f"doses[{i}]"
        if isinstance(dose, Bolus):
            fields = {"times": dose.times, "amounts": dose.amounts}
            times = _concrete(dose.times)
        elif isinstance(dose, Infusion):
            fields = {"start": dose.start, "duration": dose.duration, "rate": dose.rate}
            times = _concrete(dose.start)
            dur = _concrete(dose.duration)
            if dur is not None and np.any(dur <= 0):
                raise ValueError(f"{where} (Infusion).duration must be > 0, got {dur}")
            rate = _concrete(dose.rate)
            if rate is not None and np.any(rate < 0):
                raise ValueError(f"{where} (Infusion).rate must be >= 0, got {rate}")
        else:
            raise TypeError(
                f"{where} must be a solvers.Bolus or solvers.Infusion, got {type(dose).__name__}"
            )
        if n_state is None:
            raise ValueError("doses require a 1-D state u0 (compartments index into it)")
        for name, val in fields.items():
            v = _concrete(val)
            if v is not None and not np.all(np.isfinite(v)):
                raise ValueError(f"{where}.{name} must be finite, got {v}")
        comp = _concrete(dose.compartment)
        if comp is not None and (np.any(comp < 0) or np.any(comp >= n_state)):
            raise ValueError(
                f"{where}.compartment must index the state (0 <= c < {n_state}), got {comp}"
            )
        t0c = _concrete(t0)
        if times is not None and t0c is not None and np.any(times < t0c):
            raise ValueError(
                f"{where} has dose times before the start of the solve t0={float(t0c)}: "
                f"{times[times < t0c]}"
            )


class EventTable(eqx.Module):
    """Events sorted by time, plus one final row at ``t_end``.

    ``ends[k]`` is the end of segment k; ``rates[k]`` the input rate during segment k;
    ``jumps[k]`` the state jump applied after segment k.
    """

    ends: Float[Array, " K1"]
    rates: Float[Array, "K1 n"]
    jumps: Float[Array, "K1 n"]


def count_events(tstops, doses) -> int:
    k = 0 if tstops is None else int(np.shape(tstops)[0])
    for dose in doses:
        k += dose.times.shape[0] if isinstance(dose, Bolus) else 2 * dose.start.shape[0]
    return k


def event_times(tstops, doses, dtype) -> Array:
    """The (unsorted) times of all events; constants of the solve."""
    parts = [] if tstops is None else [jnp.asarray(tstops, dtype)]
    for dose in doses:
        if isinstance(dose, Bolus):
            parts.append(dose.times.astype(dtype))
        else:
            parts.append(dose.start.astype(dtype))
            parts.append((dose.start + dose.duration).astype(dtype))
    return jnp.concatenate(parts)


def build_table(times, mags, comps, kinds, n_tstops: int, n: int, t_end, dtype) -> EventTable:
    """Sort the events and scatter dose magnitudes into jump and rate vectors.

    ``mags`` holds the dose magnitudes (bolus amounts, infusion rates), one array per
    dose, separate from the constant times and compartments so that derivatives can be
    taken with respect to them.
    """
    jumps = [jnp.zeros((n_tstops, n), dtype)]
    drates = [jnp.zeros((n_tstops, n), dtype)]
    for kind, comp, mag in zip(kinds, comps, mags, strict=True):
        onehot = jax.nn.one_hot(comp, n, dtype=dtype)
        if kind == "bolus":
            jumps.append(mag[:, None] * onehot)
            drates.append(jnp.zeros_like(onehot))
        else:
            zero = jnp.zeros_like(onehot)
            jumps += [zero, zero]
            drates += [mag[:, None] * onehot, -mag[:, None] * onehot]
    jumps = jnp.concatenate(jumps)
    drates = jnp.concatenate(drates)
    order = jnp.argsort(times, stable=True)
    ends = jnp.minimum(times[order], t_end)
    jumps, drates = jumps[order], drates[order]
    # Rate during segment k is the sum of the rate changes of events before it.
    rates = jnp.concatenate([jnp.zeros((1, n), dtype), jnp.cumsum(drates, axis=0)])
    ends = jnp.concatenate([ends, jnp.asarray(t_end, dtype)[None]])
    jumps = jnp.concatenate([jumps, jnp.zeros((1, n), dtype)])
    return EventTable(ends=ends, rates=rates, jumps=jumps)
