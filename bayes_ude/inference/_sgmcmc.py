"""Stochastic-gradient MCMC in BlackJAX's style: pure ``init``/``step`` kernels with
NamedTuple states, minibatch gradient estimators, step-size schedules, and a runner that
vectorises chains and returns ArviZ InferenceData.

Convention (BlackJAX's): with stochastic gradient ``g`` of the log posterior and step
size ``eps``, Langevin steps are ``theta + eps * g + sqrt(2 * eps) * xi``, ``xi ~ N(0, I)``.

pSGLD (Li, Chen, Carlson & Carin 2016, "Preconditioned stochastic gradient Langevin
dynamics for deep neural networks") preconditions with RMSprop:

* ``V <- alpha * V + (1 - alpha) * g * g`` -- a running average over *all* steps, kept
  in the state (one published implementation resets it every step, which makes ``G``
  ``1 / |g|``: a sign-gradient method, not RMSprop);
* ``G = 1 / (lambda + sqrt(V))``;
* ``theta <- theta + eps * G * g + sqrt(2 * eps * G) * xi`` -- the noise's standard
  deviation is ``sqrt(2 eps G)`` (another published implementation uses ``eps``
  instead of ``sqrt(eps)``, which is far too little noise for small steps: an
  optimiser, not a sampler). The ``Gamma`` correction term (derivatives of ``G``) is
  dropped, as in the paper's experiments; it vanishes as ``alpha -> 1``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from blackjax.sgmcmc.gradients import logdensity_estimator as _blackjax_logdensity_estimator
from jaxtyping import PyTree
from tqdm.auto import tqdm

from .. import _precision
from .._batching import batch_map, resolve_devices
from ._arviz import to_inference_data
from ._chunks import run_chunks
from ._interrupt import interrupt_guard
from ._priors import _site_name


class SGLDState(NamedTuple):
    position: PyTree


class PSGLDState(NamedTuple):
    position: PyTree
    square_avg: PyTree  # V: running average of squared stochastic gradients


class SGMCMCKernel(NamedTuple):
    """``init(position) -> state`` and ``step(key, state, minibatch, step_size,
    temperature=1.0) -> state``; ``data_size``: the ``N`` its gradient estimate scales
    the minibatch to (from :func:`grad_estimator`; ``None`` if unknown), which
    :func:`run_sgmcmc` checks against the data."""

    init: Callable
    step: Callable
    data_size: int | None = None


def grad_estimator(logprior_fn: Callable, loglikelihood_fn: Callable, data_size: int, *,
                   devices=None):
    """Unbiased minibatch estimate of the gradient of the log posterior:
    ``grad logprior(theta) + (N / n) * sum_i grad loglikelihood(theta, x_i)`` over a
    minibatch of ``n`` of the ``N`` data items (``loglikelihood_fn(theta, x)`` takes one
    item: a trajectory, a subject, a time window). BlackJAX's estimator, with one
    addition: where the estimate of the log posterior is not finite (a failed solve,
    ``-inf`` from :func:`bayes_ude.solvers.log_density_penalty`), the gradient is NaN, so
    that :func:`run_sgmcmc` rejects the step and counts it (a penalty with a finite
    gradient would otherwise move the chain as if nothing had happened).

    ``devices`` (``None``: BlackJAX's estimator, one ``vmap`` on the default device; else
    as in :func:`bayes_ude._batching.resolve_devices`): the minibatch's items are split
    evenly over the devices, their terms gathered and summed in one order, so the
    estimate is the same on 2 or 4 devices; on a CPU the items run in blocks in a loop
    and the gradient is summed in a fixed order (``batch_map``'s ``isolate``, as NUTS
    over a population does), so that 1 device given this way runs exactly what several
    do (without it, one device's draws drifted 3e-9 to 2e-8 from several devices' in 200
    steps)."""
    if not isinstance(data_size, (int, np.integer)) or data_size < 1:
        raise ValueError(f"data_size must be a positive integer, got {data_size!r}")
    if devices is None:
        estimate = _blackjax_logdensity_estimator(logprior_fn, loglikelihood_fn,
                                                  int(data_size))
    else:
        devices = tuple(resolve_devices(devices))
        isolate = devices[0].platform == "cpu"

        def estimate(position, minibatch):
            terms = batch_map(lambda item, p: loglikelihood_fn(p, item), minibatch, position,
                              block="auto" if isolate else None, isolate=isolate,
                              devices=devices)
            n = terms.shape[0]
            return logprior_fn(position) + data_size / n * jnp.sum(terms)

    def grad_fn(position, minibatch):
        value, grad = jax.value_and_grad(estimate)(position, minibatch)
        return jax.tree.map(lambda g: jnp.where(jnp.isfinite(value), g, jnp.nan), grad)

    grad_fn.data_size = int(data_size)
    return grad_fn


def sample_indices(key, n_items: int, size: int) -> jax.Array:
    """``size`` distinct indices drawn uniformly from ``range(n_items)`` (a uniformly random
    subset, in no particular order), in O(size^2) work that does not depend on
    ``n_items``: Floyd's algorithm (Bentley & Floyd 1987). ``jax.random.choice(...,
    replace=False)`` permutes all ``n_items`` instead, which made an SGLD step over 100 of
    10,000 subjects cost more than one over 100 of 1,000."""
    if not 0 <= size <= n_items:
        raise ValueError(f"size={size} must be between 0 and n_items={n_items}")
    keys = jax.random.split(key, size)

    def body(i, chosen):
        # j runs over n_items - size ... n_items - 1; t uniform in 0 ... j
        j = n_items - size + i
        t = jax.random.randint(keys[i], (), 0, j + 1)
        taken = jnp.any((chosen == t) & (jnp.arange(size) < i))
        return chosen.at[i].set(jnp.where(taken, j, t))

    return jax.lax.fori_loop(0, size, body, jnp.full(size, -1, dtype=int))


def _normal_like(key, tree):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape, x.dtype)
                                        for k, x in zip(keys, leaves, strict=True)])


def sgld(grad_fn: Callable) -> SGMCMCKernel:
    """Stochastic gradient Langevin dynamics (Welling & Teh 2011)."""

    def init(position):
        return SGLDState(position)

    def step(key, state, minibatch, step_size, temperature=1.0):
        g = grad_fn(state.position, minibatch)
        noise = _normal_like(key, state.position)
        scale = jnp.sqrt(2.0 * temperature * step_size)
        position = jax.tree.map(lambda x, gi, n: x + step_size * gi + scale * n,
                                state.position, g, noise)
        return SGLDState(position)

    return SGMCMCKernel(init, step, getattr(grad_fn, "data_size", None))


def psgld(grad_fn: Callable, alpha: float = 0.99, eps: float = 1e-5) -> SGMCMCKernel:
    """Preconditioned SGLD (RMSprop preconditioner; see the module notes).

    ``V`` starts at 0 and is built from the whole (N-scaled) posterior gradient, so a chain
    started at a mode with full-batch gradients sees ``g ~ 0``, ``G ~ 1 / eps``, and its
    first steps throw it far out (a conjugate Gaussian, 50 items, step 1e-3, started at
    the posterior mean: sd 64 times the posterior's). Minibatches, or ``run_sgmcmc``'s
    ``init_spread``, keep ``V`` off 0 (started 1e-4 away: sd ratio 1.4).

    Parameters
    ----------
    alpha : decay of the running average of squared gradients (0 < alpha < 1).
    eps : the ``lambda`` of the paper, keeping ``G`` bounded.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps!r}")

    def init(position):
        return PSGLDState(position, jax.tree.map(jnp.zeros_like, position))

    def step(key, state, minibatch, step_size, temperature=1.0):
        g = grad_fn(state.position, minibatch)
        v = jax.tree.map(lambda v_, gi: alpha * v_ + (1 - alpha) * gi * gi, state.square_avg, g)
        noise = _normal_like(key, state.position)

        def update(x, gi, vi, n):
            precond = 1.0 / (eps + jnp.sqrt(vi))
            return (x + step_size * precond * gi
                    + jnp.sqrt(2.0 * temperature * step_size * precond) * n)

        position = jax.tree.map(update, state.position, g, v, noise)
        return PSGLDState(position, v)

    return SGMCMCKernel(init, step, getattr(grad_fn, "data_size", None))


def sghmc(grad_fn: Callable, num_integration_steps: int = 10, alpha: float = 0.01,
          beta: float = 0.0) -> SGMCMCKernel:
    """Stochastic gradient HMC (Chen, Fox & Guestrin 2014, Alg. 2, in BlackJAX's
    parameterisation: friction ``alpha``, gradient-noise estimate ``beta``).

    Each step draws a momentum ``p ~ N(0, T)`` (``T`` the temperature), then takes
    ``num_integration_steps`` of ``x <- x + eps p``; ``p <- (1 - alpha eps) p + eps
    grad(x) + sqrt(eps T (2 alpha - eps T beta)) n``, the gradient at the *new*
    position as in Chen et al. BlackJAX's kernel took it at the old one (a non-symplectic
    Euler step) and drew ``p ~ N(0, 1)`` whatever the temperature: on a conjugate Gaussian
    its posterior sd came out 1.40 times the true one, and unchanged at ``T = 4``
    (expected 2)."""
    if (not isinstance(num_integration_steps, (int, np.integer))
            or isinstance(num_integration_steps, bool) or num_integration_steps < 1):
        raise ValueError(f"num_integration_steps must be an integer >= 1, got "
                         f"{num_integration_steps!r}")
    if not 0 <= alpha < np.inf:
        raise ValueError(f"alpha (friction) must be a finite number >= 0, got {alpha!r}")

    def init(position):
        return SGLDState(position)

    def step(key, state, minibatch, step_size, temperature=1.0):
        k_momentum, k_steps = jax.random.split(key)
        momentum = jax.tree.map(lambda n: jnp.sqrt(temperature) * n,
                                _normal_like(k_momentum, state.position))
        noise_sd = jnp.sqrt(step_size * temperature * (2 * alpha - step_size * temperature
                                                       * beta))

        def leap(carry, k):
            x, p = carry
            x = jax.tree.map(lambda xi, pi: xi + step_size * pi, x, p)
            g = grad_fn(x, minibatch)
            n = _normal_like(k, x)
            p = jax.tree.map(lambda pi, gi, ni: (1.0 - alpha * step_size) * pi
                             + step_size * gi + noise_sd * ni, p, g, n)
            return (x, p), None

        (x, p), _ = jax.lax.scan(leap, (state.position, momentum),
                                 jax.random.split(k_steps, num_integration_steps))
        # a non-finite gradient at the last position (a failed solve there) shows in the
        # momentum only: the move is rejected as run_sgmcmc rejects any non-finite one
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(pi)) for pi in jax.tree.leaves(p)]))
        return SGLDState(jax.tree.map(lambda xi: jnp.where(finite, xi, jnp.nan), x))

    return SGMCMCKernel(init, step, getattr(grad_fn, "data_size", None))


def polynomial_schedule(a: float, b: float = 1.0, gamma: float = 0.55) -> Callable:
    """Step size ``a * (b + t) ** (-gamma)`` at step ``t`` (Welling & Teh; ``gamma`` in
    (0.5, 1] satisfies the Robbins-Monro conditions)."""
    if not a > 0 or not b > 0 or not 0 <= gamma <= 1:
        raise ValueError(f"need a > 0, b > 0 and 0 <= gamma <= 1; got {a!r}, {b!r}, {gamma!r}")

    def schedule(t):
        return a * (b + t) ** (-gamma)

    return schedule


def _position_dict(position, name: str = "theta") -> dict:
    leaves = jax.tree_util.tree_flatten_with_path(position)[0]
    if len(leaves) == 1 and not leaves[0][0]:
        return {name: leaves[0][1]}
    names = [_site_name(name, path).removeprefix(name + ".") or name for path, _ in leaves]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"the position's leaves give the posterior names {twice} more than "
                         "once (e.g. keys 'a.b' and 'a'/'b'): rename them, one would be lost")
    return {n: leaf for n, (_, leaf) in zip(names, leaves, strict=True)}


def run_sgmcmc(
    kernel: SGMCMCKernel,
    init_position: PyTree,
    data: PyTree,
    *,
    num_steps: int,
    batch_size: int,
    step_size: float | Callable = 1e-4,
    burn_in: int = 0,
    thin: int = 1,
    num_chains: int = 1,
    init_spread: float = 0.0,
    temperature: float = 1.0,
    key=None,
    chunk_size: int = 500,
    progress: bool = True,
    name: str = "theta",
):
    """Run an SG-MCMC kernel over minibatches of ``data``; return InferenceData.

    Failed solves: a step whose new position is not finite -- in particular every step
    whose minibatch log density was not finite, e.g. a failed solve, for which
    :func:`grad_estimator` returns a NaN gradient -- is rejected (the chain stays put)
    and counted, never raised.

    Parameters
    ----------
    kernel : from :func:`sgld`, :func:`psgld` or :func:`sghmc`.
    init_position : starting position (any pytree, e.g. a network or a dict).
    data : pytree of arrays with a leading axis of ``N`` items (trajectories, subjects,
        time windows); each step uses ``batch_size`` items drawn without replacement.
    num_steps : total steps per chain (including ``burn_in``).
    step_size : a number or a schedule ``t -> step size`` (see
        :func:`polynomial_schedule`).
    burn_in, thin : steps discarded at the start; keep every ``thin``-th step after.
    num_chains : chains, vectorised (``vmap``); each starts at ``init_position`` plus
        ``N(0, init_spread^2)`` noise.
    chunk_size : steps per compiled chunk (progress and Ctrl-C granularity; Ctrl-C keeps
        the draws so far and marks ``attrs["partial"]``).

    Returns
    -------
    arviz.InferenceData whose ``posterior`` holds the position's arrays (names from
    their place in the pytree) with ``(chain, draw)`` leading axes, and whose
    ``sample_stats["solver_failed"]`` counts the rejected steps of each chain since the
    previous kept draw (burn-in excluded; ``attrs["num_failed_steps"]`` is the total,
    burn-in included).
    """
    for label, value, low in (("num_steps", num_steps, 1), ("batch_size", batch_size, 1),
                              ("burn_in", burn_in, 0), ("thin", thin, 1),
                              ("num_chains", num_chains, 1), ("chunk_size", chunk_size, 1)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{label} must be an integer >= {low}, got {value!r}")
    if burn_in >= num_steps:
        raise ValueError(f"burn_in={burn_in} leaves no draws of num_steps={num_steps}")
    sizes = {x.shape[0] for x in jax.tree.leaves(data)}
    if len(sizes) != 1:
        raise ValueError(f"all arrays in data need the same leading size N, got {sorted(sizes)}")
    n_items = sizes.pop()
    if batch_size > n_items:
        raise ValueError(f"batch_size={batch_size} exceeds the N={n_items} data items")
    if kernel.data_size is not None and kernel.data_size != n_items:
        raise ValueError(f"the kernel's gradient estimate scales to data_size="
                         f"{kernel.data_size} items (grad_estimator) but data has N={n_items}: "
                         "the posterior would be tempered by the ratio")
    schedule = step_size if callable(step_size) else (lambda t: step_size)
    first = np.asarray(schedule(0))
    if first.shape != () or not 0 < float(first) < np.inf:
        raise ValueError(f"step_size must be a finite number > 0 (a schedule's value at step "
                         f"0 included), got {first!r}")
    if not 0 < temperature < np.inf:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    init_position = _precision.promote(init_position)  # a float32 start: float64
    _position_dict(init_position, name)  # names checked before the run, not after
    key = jax.random.key(0) if key is None else key
    k_init, k_run = jax.random.split(key)
    init_keys = jax.random.split(k_init, num_chains)
    positions = jax.vmap(lambda k: jax.tree.map(
        lambda x, n: x + init_spread * n, init_position, _normal_like(k, init_position)))(
        init_keys)
    states = jax.vmap(kernel.init)(positions)

    def one_step(carry, t):
        # ``states`` is where the chain is, ``previous`` the position it moved from.
        # Whether a position is usable is known only when the gradient there has been
        # computed, i.e. at the next step, so each step reports the position it starts
        # from: draw t is the position after t accepted-or-rejected moves.
        states, previous, key = carry
        key, k_batch, k_step = jax.random.split(key, 3)
        eps = schedule(t)

        def chain_step(k_b, k_s, state):
            # each chain its own minibatch: chains sharing one move together (their draws
            # were 0.95 correlated, and R-hat and ESS read them as independent)
            idx = sample_indices(k_b, n_items, batch_size)
            batch = jax.tree.map(lambda x: x[idx], data)
            return kernel.step(k_s, state, batch, eps, temperature)

        new = jax.vmap(chain_step)(jax.random.split(k_batch, num_chains),
                                   jax.random.split(k_step, num_chains), states)
        # A non-finite gradient (a failed solve at the current position; see
        # grad_estimator) or a step out of the finite numbers rejects the last move: the
        # chain goes back to the position it came from and moves again from there.
        failed = ~_all_finite(new.position)

        def pick(a, b):
            return jnp.where(failed.reshape(failed.shape + (1,) * (a.ndim - 1)), a, b)

        here = jax.tree.map(pick, previous, states)
        return ((jax.tree.map(pick, previous, new), here, key),
                (here.position, failed))

    @jax.jit
    def chunk(states, previous, key, ts):
        (states, previous, key), traj = jax.lax.scan(one_step, (states, previous, key), ts)
        return states, previous, key, traj

    bar = tqdm(total=num_steps, desc=f"SG-MCMC ({_kernel_name(kernel)})",
               disable=not progress, leave=False)
    start = time.perf_counter()
    current = [states, states, k_run]

    # Rejected steps (failed solves) per chain since the last kept draw, and in all.
    since_kept = [np.zeros(num_chains, int)]
    failed_total = [np.zeros(num_chains, int)]

    def advance(done, n):
        out = chunk(*current, jnp.arange(done, done + n))
        current[:] = out[:3]
        traj, failed = out[3]
        failed = np.asarray(failed)
        failed_total[0] += failed.sum(axis=0)
        steps = np.arange(done, done + n)
        keep = (steps >= burn_in) & ((steps - burn_in) % thin == 0)
        # Failed steps counted against the draw that closes their thinning interval
        # (burn-in steps are not counted against any draw).
        counted = np.where((steps >= burn_in)[:, None], failed, 0)
        cum = np.cumsum(counted, axis=0)
        per_draw, last = [], np.zeros(num_chains, int)
        for i in np.flatnonzero(keep):
            per_draw.append(since_kept[0] + cum[i] - last)
            since_kept[0], last = np.zeros(num_chains, int), cum[i]
        since_kept[0] = since_kept[0] + cum[-1] - last
        if not keep.any():
            return None
        return jax.tree.map(lambda x: np.asarray(x)[keep], traj), np.stack(per_draw)

    # once the draws exist, a Ctrl-C is deferred until they are InferenceData
    with interrupt_guard() as guard:
        try:
            kept, done, partial = run_chunks(num_steps, chunk_size, advance, bar,
                                             what="steps", guard=guard)
        finally:
            bar.close()
        draws = jax.tree.map(lambda *xs: np.swapaxes(np.concatenate(xs, axis=0), 0, 1),
                             *[k[0] for k in kept])
        n_failed = np.swapaxes(np.concatenate([k[1] for k in kept], axis=0), 0, 1)
        _warn_rejected(failed_total[0], done)
        posterior = {k: np.asarray(v) for k, v in _position_dict(draws, name).items()}
        return to_inference_data(posterior, sample_stats={"solver_failed": n_failed},
                                 attrs={"sampler": _kernel_name(kernel),
                                        "partial": int(partial), "num_steps": done,
                                        "burn_in": burn_in, "thin": thin,
                                        "batch_size": batch_size,
                                        "num_failed_steps": int(failed_total[0].sum()),
                                        "seconds": time.perf_counter() - start})


#: Above this share of rejected steps in a chain, run_sgmcmc warns: its draws are mostly
#: repeats of a few positions, not a sample.
REJECTED_SHARE_WARNING = 0.1


def _warn_rejected(failed: np.ndarray, steps: int) -> None:
    """Warn when a chain rejected more than :data:`REJECTED_SHARE_WARNING` of its steps."""
    share = failed / max(steps, 1)
    bad = np.flatnonzero(share > REJECTED_SHARE_WARNING)
    if bad.size:
        shown = ", ".join(f"chain {c}: {failed[c]} of {steps}" for c in bad[:4])
        warnings.warn(
            f"SG-MCMC rejected many steps ({shown}{', ...' if bad.size > 4 else ''}): the "
            "log density or its gradient was not finite there (failed solves, or a position "
            "outside a prior's support), and a rejected step repeats the last position, so "
            "these draws are not a sample; see sample_stats['solver_failed']",
            RuntimeWarning, stacklevel=3)


def _all_finite(tree):
    """Per chain (leading axis): are all entries of every leaf finite?"""
    leaves = [jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=1)
              for x in jax.tree.leaves(tree)]
    return jnp.stack(leaves).all(axis=0)


def posterior_pytree(idata, template: PyTree, name: str = "theta") -> PyTree:
    """The draws of :func:`run_sgmcmc` back in the structure of ``template`` (e.g. a
    network), every array with leading ``(chain, draw)`` axes; ``jax.vmap`` twice to
    evaluate each draw."""
    names = list(_position_dict(template, name))
    leaves, treedef = jax.tree.flatten(template)
    missing = [k for k in names if k not in idata.posterior]
    if missing or len(names) != len(leaves):
        raise ValueError(f"the posterior has no variables {missing} of the template; was it "
                         f"sampled from this structure with name={name!r}?")
    return jax.tree.unflatten(treedef, [jnp.asarray(idata.posterior[k].values) for k in names])


def _kernel_name(kernel) -> str:
    return getattr(kernel.step, "__qualname__", "kernel").split(".")[0]
