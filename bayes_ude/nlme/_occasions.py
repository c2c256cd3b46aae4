"""Inter-occasion variability (IOV): parameters that change at occasion boundaries, with
the compartment amounts carried over.

A subject's ``OCC`` column (any column name; values need not be 1, 2, ...) splits its
records into occasions. Each occasion ``k`` has its own random effects ``kappa_k ~
N(0, Pi)``, independent between occasions and of the between-subject ``eta``: the
individual parameters of occasion ``k`` are ``individual(theta, eta + kappa_k, cov)``.
Kappas are numbered per subject by the rank of the ``OCC`` value among the subject's
values (the smallest is occasion 1), so a subject that returns to an ``OCC`` value
returns to its random effect.

Predictions are exact for the closed-form models: time is cut at every point where the
subject's covariates (``OCC`` among them) change; in each piece the doses given in it, and
the amounts present at its start (as boluses into their compartments), are superposed with
that occasion's parameters, every compartment's amount through the propagator ``expm(K t)
= sum_k P_k exp(-lam_k t)`` of the model's :meth:`~ClosedFormModel.rate_matrix`
(Sylvester's formula, from the exponents the closed form already has); the amounts at the
piece's end start the next one. What is still to enter at a boundary -- the rest of an
infusion, or a dose still in its lag time -- enters in the next piece. Conventions
(NONMEM's differ only between the last record of an occasion and the first of the next,
usually a washout):

* an occasion's parameters hold from the time of its first record (records of the earlier
  occasion at that same time, such as a trough listed after the dose, do not hold it back);
  two records at one time make a piece of no length, which changes nothing;
* a dose takes its bioavailability and lag time from the occasion of its record;
* an observation is the amount at its time over the volume of its own occasion (one at
  the very time a new occasion starts sees the amounts just before it, as an observation
  at a dose time sees the state before the dose);
* a reset (EVID 3/4, or a steady-state dose) in a piece ends what was carried into it;
  steady-state doses are at steady state under their own occasion's parameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "count_occasions",
    "occasion_rank",
    "occasions_per_subject",
    "predict_by_occasion",
    "propagator",
]


def propagator(rate_matrix, lam):
    """``P`` of shape ``(n, n, K)`` with ``expm(rate_matrix * t) = sum_k P[..., k] *
    exp(-lam[k] * t)``, for ``-lam`` the (distinct) eigenvalues of ``rate_matrix``:
    Sylvester's formula ``P_k = prod_{j != k} (K + lam_j I) / (lam_j - lam_k)``."""
    n = rate_matrix.shape[0]
    eye = jnp.eye(n, dtype=rate_matrix.dtype)
    parts = []
    for k in range(n):
        m = eye
        for j in range(n):
            if j != k:
                m = m @ (rate_matrix + lam[j] * eye) / (lam[j] - lam[k])
        parts.append(m)
    return jnp.stack(parts, axis=-1)


def _first_records(values, mask):
    """Whether each (unmasked) record is the first with its value."""
    n = values.shape[0]
    earlier = jnp.tril(jnp.ones((n, n), bool), -1)
    repeat = jnp.any((values[:, None] == values[None, :]) & mask[None, :] & earlier, axis=1)
    return mask & ~repeat


def occasion_rank(values, mask, x):
    """For each entry of ``x``, the number of distinct ``values[mask]`` below it: the
    0-based occasion index of an ``OCC`` value among one subject's values."""
    first = _first_records(values, mask)
    return jnp.sum(first[None, :] & (values[None, :] < x[:, None]), axis=1)


def _occasion_from(times, values, mask):
    """The occasion value in force from each record's time on: its own, unless a record at
    the same time (up to it) opens an occasion (is the first with its value), whose value
    then holds (a trough of occasion 1 listed after the dose that opens occasion 2 does
    not hold occasion 2 back)."""
    n = values.shape[0]
    idx = jnp.arange(n)
    opens = _first_records(values, mask)
    same = ((times[None, :] == times[:, None]) & (idx[None, :] <= idx[:, None])
            & opens[None, :])
    j = jnp.max(jnp.where(same, idx[None, :], -1), axis=1)
    return jnp.where(j >= 0, values[jnp.maximum(j, 0)], values)


def count_occasions(population, column: str) -> int:
    """The largest number of distinct ``column`` values of one subject (at least 1), with
    a clear error when the data have no such column or a value is not finite."""
    names = population.covariate_names
    if column not in names:
        raise ValueError(f"inter-occasion variability needs an occasion column {column!r}; "
                         f"the data have none (their covariate columns: {list(names)})")
    c = names.index(column)
    values = np.asarray(population.cov_value)[..., c]
    mask = np.asarray(population.cov_mask, bool)
    bad = mask & ~np.isfinite(values)
    if bad.any():
        s = int(np.nonzero(bad.any(axis=1))[0][0])
        raise ValueError(f"column {column} (the occasion) must be a number on every record; "
                         f"subject {population.ids[s]} has a missing or non-finite one")
    return max([1, *occasions_per_subject(population, column).tolist()])


def occasions_per_subject(population, column: str) -> np.ndarray:
    """Each subject's number of distinct ``column`` values (its occasions)."""
    c = population.covariate_names.index(column)
    values = np.asarray(population.cov_value)[..., c]
    mask = np.asarray(population.cov_mask, bool)
    return np.asarray([np.unique(values[s][mask[s]]).size for s in range(values.shape[0])])


def _remaining(arrival, amt, rate, mask, ss, h):
    """What of each input (arrival time, amount, rate) has not entered by time ``h``:
    ``(start, amount)`` of the rest (an infusion's remainder from ``h`` on, a bolus still
    to arrive); steady-state doses leave nothing."""
    is_inf = rate > 0
    r = jnp.where(is_inf, rate, 1.0)
    end = arrival + jnp.where(is_inf, amt / r, 0.0)
    start = jnp.maximum(arrival, h)
    rest = jnp.where(is_inf, r * jnp.maximum(end - start, 0.0),
                     jnp.where(arrival >= h, amt, 0.0))
    return start, jnp.where(mask & ~ss, rest, 0.0)


def predict_by_occasion(model, params, subject, column: str, reset_time=None):
    """Concentrations at ``subject.obs_time`` of a closed-form ``model`` whose individual
    parameters ``params`` (a mapping of arrays with a leading occasion axis) change with
    the occasion in covariate ``column`` (see the module docstring)."""
    c = subject.covariate_names.index(column)
    seg_time, seg_mask = subject.cov_time, subject.cov_mask
    seg_value = subject.cov_value[:, c]
    n_occ = jax.tree.leaves(params)[0].shape[0]
    seg_occ = jnp.minimum(occasion_rank(seg_value, seg_mask,
                                        _occasion_from(seg_time, seg_value, seg_mask)),
                          n_occ - 1)
    obs_occ = jnp.minimum(occasion_rank(seg_value, seg_mask, subject.obs_cov[:, c]), n_occ - 1)
    # a dose's bioavailability and lag time are those of its own record's occasion (records
    # at one time may belong to two occasions)
    dose_occ = jnp.minimum(occasion_rank(seg_value, seg_mask, subject.dose_cov[:, c]),
                           n_occ - 1)
    dose_f = params["f"][dose_occ] if "f" in params else 1.0
    dose_lag = params["tlag"][dose_occ] if "tlag" in params else 0.0
    n_seg, nd = seg_time.shape[0], subject.dose_time.shape[0]
    first = jnp.arange(n_seg) == 0
    lo = jnp.where(first, -jnp.inf, seg_time)
    nxt = jnp.concatenate([seg_mask[1:], jnp.zeros(1, bool)])
    hi = jnp.where(nxt, jnp.concatenate([seg_time[1:], seg_time[-1:]]), jnp.inf)
    central = model.central_compartment - 1
    n = model.n_compartments
    dose_time, dose_cmt = subject.dose_time, subject.dose_cmt
    no_ss = jnp.zeros(nd, bool)

    def cat(a, b):
        return jnp.concatenate([a, b])

    # what is still to enter at a boundary: only infusions and lag times leave anything
    pending = model.infusions or "tlag" in params

    def step(carry, seg):
        state, pend_time, pend_amt, acc = carry
        lo_j, hi_j, occ, valid, first_j = seg
        p = jax.tree.map(lambda a: a[occ], params)
        lam, _ = model.exponents(p)
        P = propagator(model.rate_matrix(p), lam)  # (n, n, K)
        into = dose_cmt == model.dosing_compartment
        member = subject.dose_mask & (dose_time >= lo_j) & (dose_time < hi_j)
        amt = subject.dose_amt * jnp.where(into, dose_f, 1.0)
        arrival = dose_time + jnp.where(into, dose_lag, 0.0)
        # the doses of this piece (their F and lag applied) and what earlier ones still owe
        inputs = (arrival, amt, dose_time, subject.dose_rate, subject.dose_ss,
                  subject.dose_ii, member)
        cmt = dose_cmt
        if pending:
            inputs = tuple(cat(a, b) for a, b in zip(
                inputs, (pend_time, pend_amt, pend_time, subject.dose_rate, no_ss,
                         subject.dose_ii, pend_amt > 0), strict=True))
            cmt = cat(dose_cmt, dose_cmt)
        # the amounts present at the start, as boluses into their compartments then (their
        # record time just before it, so that a reset at the start ends them)
        start = jnp.where(first_j, 0.0, lo_j)
        inputs = tuple(cat(a, b) for a, b in zip(inputs, (
            jnp.full(n, start), state, jnp.full(n, jnp.nextafter(start, -jnp.inf)),
            jnp.zeros(n), jnp.zeros(n, bool), jnp.zeros(n), jnp.full(n, ~first_j)),
            strict=True))
        cmt = cat(cmt, jnp.arange(1, n + 1))
        h = jnp.where(jnp.isfinite(hi_j), hi_j, 0.0)
        times = cat(subject.obs_time, h[None])  # the observations and the boundary
        terms = model.unit_terms(lam, times, *inputs, reset_time)
        index = jnp.clip(cmt - 1, 0, n - 1)
        amounts = jnp.einsum("tdk,odk->ot", terms, P[:, index])  # (n, n_t)
        obs_in = valid & (subject.obs_time <= hi_j) & (first_j | (subject.obs_time > lo_j))
        acc = jnp.where(obs_in, amounts[central, :-1], acc)
        if pending:
            start, rest = _remaining(inputs[0], inputs[1], inputs[3], inputs[6], inputs[4], h)
            pend_amt = rest[:nd] + rest[nd:2 * nd]
            pend_time = jnp.where(rest[:nd] > 0, start[:nd], start[nd:2 * nd])
        new = (amounts[:, -1], pend_time, pend_amt, acc)
        # a piece of zero length (two records at one time, a covariate changing at each)
        # changes nothing: its boluses of the carried amounts would count 0 at their own
        # arrival time, and the state would be lost
        keep = valid & (hi_j > lo_j)
        return jax.tree.map(lambda a, b: jnp.where(keep, a, b), new, carry), None

    init = (jnp.zeros(n), jnp.zeros(nd), jnp.zeros(nd), jnp.zeros_like(subject.obs_time))
    (_, _, _, amount), _ = jax.lax.scan(step, init, (lo, hi, seg_occ, seg_mask, first))
    volume = jax.vmap(lambda k: model.central_volume(jax.tree.map(lambda a: a[k], params)))(
        obs_occ)
    return amount / volume
