"""NUTS on any NumPyro model, with NumPyro's or BlackJAX's sampler, results in ArviZ.

Chains are an array axis of one compiled program: on CPU they run one after the other
inside it (``lax.map``), elsewhere vectorised (``vmap``); with several devices the chains
are split evenly over them. On CPU, ``lax.map`` is much the faster: lynx-hare, BlackJAX,
4 chains x (1000 + 1000), 32 s against 75 s with ``vmap`` (a vectorised NUTS step takes as
many leapfrog steps, and each vectorised solve as many solver steps, as the slowest chain
needs, and conditionals evaluate both branches). Sampling runs in chunks of ``chunk_size`` draws:
one progress bar update per chunk, and Ctrl-C between chunks keeps every draw taken so far
(the result is marked ``attrs["partial"] = True``).
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import optax
from jax.flatten_util import ravel_pytree
from numpyro import distributions as dist
from numpyro.distributions.distribution import Unit
from numpyro.distributions.transforms import biject_to
from numpyro.infer import NUTS, Predictive, log_likelihood
from numpyro.infer import init_to_median, init_to_sample, init_to_uniform, init_to_value
from numpyro.infer import util as infer_util
from tqdm.auto import tqdm

from .._compile import compiler_options
from ._arviz import add_to_inference_data, to_inference_data
from ._chunks import run_chunks
from ._interrupt import interrupt_guard
from ._metric import (auto_dense_mass, diagonal_after_short_window, is_latent,
                      latent_sites, short_windows)

BACKENDS = ("numpyro", "blackjax")
_INITS = {"uniform": init_to_uniform, "median": init_to_median,
          "prior": init_to_sample}


#: ``init="map"``: candidates drawn per chain (half uniform, half from the prior), how
#: many of the best of them each chain climbs from (L-BFGS, at most ``MAP_MAX_ITER``
#: iterations), and how far (nats of log density) below the best mode of all chains a
#: chain's mode may lie before the chain is moved to a better one.
MAP_CANDIDATES = 16
MAP_CLIMBS = 4
MAP_MAX_ITER = 300
MAP_TOLERANCE = 10.0

#: Warmup checks. After warmup the mass matrix has whitened the posterior (scale ~1 in
#: every direction) and a healthy step size is of order 0.1-1 (lynx-hare: 0.1-0.3). A
#: trajectory has at most ``2**max_tree_depth - 1`` leapfrog steps (1023 by default), so
#: with a step size below ``STEP_SIZE_FLOOR`` (1e-5) a draw moves at most ~0.01 posterior
#: standard deviations: the chain is frozen (the lynx-hare model with a fixed initial
#: state, started uniformly, ends warmup at 1e-7 to 1e-10). A chain whose trees reach
#: ``max_tree_depth`` in more than ``SATURATION_SHARE`` of the second half of warmup (the
#: first half may legitimately saturate while the chain travels to the typical set and the
#: metric is still the identity) makes truncated trajectories: a random walk.
STEP_SIZE_FLOOR = 1e-5
SATURATION_SHARE = 0.5


def _init_strategy(init):
    if init == "map":
        return init_to_uniform()  # the candidates of the optimisation (_map_starts)
    if callable(init):
        return init
    if isinstance(init, dict):
        return init_to_value(values=init)
    if init not in _INITS:
        raise ValueError(f"init must be one of {sorted([*_INITS, 'map'])}, a dict of values or an "
                         f"init strategy, got {init!r}")
    return _INITS[init]()


def _checked_init(init: dict, shapes: dict) -> dict:
    """``init``'s values at their sites' shapes (a number fills a whole site). A value of
    another shape became the site's shape: ``{"mu": 0.5}`` for three ``mu`` sampled one
    ``mu`` with its prior counted three times, with no error."""
    unknown = sorted(set(init) - set(shapes))
    if unknown:
        raise ValueError(f"init names {unknown}, not latent sites of the model (its latent "
                         f"sites: {sorted(shapes)})")
    out = {}
    for name, value in init.items():
        shape = tuple(shapes[name])
        value = jnp.asarray(value)
        try:
            fits = np.broadcast_shapes(value.shape, shape) == shape
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(f"init[{name!r}] has shape {value.shape}; the site {name!r} has "
                             f"shape {shape} (one start for every chain: a value of that "
                             "shape, or a number for all of it)")
        out[name] = jnp.broadcast_to(value, shape)
    return out


def run_nuts(
    model: Callable,
    *model_args,
    backend: str = "numpyro",
    num_warmup: int = 1000,
    num_samples: int = 1000,
    num_chains: int = 4,
    key=None,
    target_accept: float = 0.8,
    max_tree_depth: int = 10,
    dense_mass: bool | str = False,
    inverse_mass_matrix=None,
    init="map",
    chunk_size: int = 100,
    progress: bool = True,
    posterior_predictive: bool = True,
    dims: dict | None = None,
    coords: dict | None = None,
    keep_failed_states: bool = False,
    spread_chains: bool = True,
    **model_kwargs,
):
    """Sample ``model(*model_args, **model_kwargs)`` with NUTS; return InferenceData.

    Failed solves: a solve that fails inside the model (:func:`reject_failed_solve`)
    gives log density ``-inf``; NUTS treats that as a divergence and rejects the state,
    so the run never crashes. With the BlackJAX backend, ``sample_stats["solver_failed"]``
    marks each draw whose trajectory was stopped by a failed solve (``attrs`` has the
    totals, ``num_failed_solves`` and ``num_failed_solves_warmup``). NumPyro's NUTS does
    not keep the state at which a trajectory diverged, so with the NumPyro backend failed
    solves show only among the divergences (``sample_stats["diverging"]``).

    Parameters
    ----------
    model : a NumPyro model; observed sites (``obs=``) become ``observed_data``, their
        pointwise log densities ``log_likelihood`` (so ``az.loo`` works), their
        simulated replicates ``posterior_predictive``. Factors (``numpyro.factor``, e.g.
        the ``solve_failed`` site of :func:`reject_failed_solve`) count in the log
        density but are none of these.
    backend : ``"numpyro"`` (NumPyro's NUTS with its adaptation) or ``"blackjax"``
        (BlackJAX's NUTS with Stan's window adaptation, on the same model through
        ``numpyro.infer.util.initialize_model``).
    num_warmup, num_samples, num_chains : per chain.
    key : PRNG key (default ``jax.random.key(0)``).
    target_accept, max_tree_depth : NUTS settings.
    dense_mass : adapt a dense mass matrix (the warmup's covariance estimate) instead of a
        diagonal one: for posteriors whose parameters are strongly correlated (networks
        coupled to physical parameters), at O(d^2) memory and O(d^2) work per leapfrog
        step. ``"auto"``: dense when the model has at most ``DENSE_MAX_DIM`` (100)
        unconstrained dimensions and ``num_warmup`` is at least ``DENSE_WARMUP_PER_DIM``
        (10) times that, diagonal otherwise; ``attrs["dense_mass"]`` records the choice.
        With either, a warmup window too short to estimate a dense metric
        (``DENSE_WINDOW_PER_DIM``) sets the diagonal of its estimate (constants and
        reasons in :mod:`bayes_ude.inference._metric`).
    inverse_mass_matrix : a fixed dense inverse mass matrix (``d x d``, over the flat
        unconstrained parameter vector, sites in sorted name order), e.g.
        :func:`laplace_inverse_mass` at a mode: warmup then adapts only the step size
        (NumPyro backend). For posteriors too ill-conditioned for a metric estimated from
        the warmup's draws (networks inside ODE models: the diagonal metric's steps stay
        tiny and the chains crawl).
    init : initial values: ``"map"`` (the default), ``"uniform"`` (NumPyro's default,
        uniform in (-2, 2) on the unconstrained scale), ``"median"``, ``"prior"``, a dict
        of values (e.g. a MAP estimate), or a NumPyro init strategy. ``"map"``: each
        chain draws ``MAP_CANDIDATES`` (16) points, half uniform and half from the
        prior, and climbs from the ``MAP_CLIMBS`` (4) with the highest log density to
        modes of the posterior (L-BFGS on the unconstrained scale, at most
        ``MAP_MAX_ITER`` iterations), all chains and climbs in one compiled program, and
        keeps the highest mode it found; a chain whose mode is more than
        ``MAP_TOLERANCE`` (10) nats of log density below the best of all chains starts
        at one of the modes within it instead (such a mode holds a negligible share of
        the posterior, yet a chain started there may never leave it: on the lynx-hare
        posterior, L-BFGS from the best of 16 uniform draws ended 40 nats below the main
        mode for one chain in three; with half the candidates from the prior, whose
        ``beta`` and ``delta`` lie near the posterior's 0.03, below the uniform box's
        ``exp(-2) = 0.14``, one in eight). Warmup then starts at the modes, not in the
        tails.

        ``"map"`` is the default because the other starts can leave warmup stuck: the
        lynx-hare model with a fixed initial state, started uniformly (``beta`` and
        ``delta``, prior scale 0.05, up to 7.4), ended warmup with step sizes of 1e-7
        to 1e-10 and every tree at ``max_tree_depth``; started at the prior median, 12
        of 16 chains stayed in a mode of the wrong period, 38 nats below the main one.
        The search is one more compiled program: measured on 2 shared CPU cores, 1.7 s
        on a one-parameter toy model, 12 s on a one-parameter stiff ODE model (about as
        long as compiling its NUTS step).
    chunk_size : draws per compiled chunk (progress and Ctrl-C granularity). The
        progress bar shows the step size (range over chains) and the chunk's mean
        acceptance rate. At the end of warmup a warning names the chains whose step size
        fell below ``STEP_SIZE_FLOOR`` (1e-5) or whose trees reached ``max_tree_depth``
        in most of the second half of warmup (``SATURATION_SHARE``).
    posterior_predictive : also simulate the observed sites from the posterior predictive
        (each draw's parameters, new observation noise).
    dims, coords : ArviZ dimension names / coordinates for variables.
    keep_failed_states : BlackJAX backend only: also keep, for every draw whose
        trajectory stopped at a failed solve, the values of the variables at the state
        where the solve failed (``sample_stats["failed_at.<name>"]``, NaN for the other
        draws), e.g. to see which region of parameter space makes the solver fail.
    spread_chains : split the chains evenly over the local devices (the most that divide
        ``num_chains``; default). ``False``: every chain on the default device, for a
        model that spreads its own work over the devices (a population model whose
        subjects are split over them, :func:`bayes_ude.nlme.fit` with ``devices``).

    Returns
    -------
    arviz.InferenceData with ``posterior``, ``sample_stats`` (``diverging``,
    ``step_size``, ``tree_depth``, ``n_steps``, ``energy``, ``acceptance_rate``,
    ``lp``; BlackJAX: ``solver_failed``), ``log_likelihood``, ``observed_data`` and
    ``posterior_predictive``;
    ``attrs`` records the backend, timings and ``partial``.

    Ctrl-C: during warmup it stops the run (``KeyboardInterrupt``); during sampling it
    keeps the draws so far (``attrs["partial"] = 1``). Once sampling has draws, a Ctrl-C
    never loses them: the constrained draws are finished (the interrupt is deferred), the
    optional groups still to come (``log_likelihood``, ``posterior_predictive``) are
    skipped, and ``attrs["partial"] = 1`` with ``attrs["skipped"]`` naming them.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    for name, value, low in (("num_warmup", num_warmup, 1), ("num_samples", num_samples, 1),
                             ("num_chains", num_chains, 1), ("chunk_size", chunk_size, 1),
                             ("max_tree_depth", max_tree_depth, 1)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not 0 < target_accept < 1:
        raise ValueError(f"target_accept must be in (0, 1), got {target_accept!r}")
    if isinstance(dense_mass, np.bool_):
        dense_mass = bool(dense_mass)
    if not (isinstance(dense_mass, bool) or dense_mass == "auto"):
        raise ValueError(f"dense_mass must be True, False or 'auto', got {dense_mass!r}")
    if inverse_mass_matrix is not None:
        if backend != "numpyro":
            raise ValueError("inverse_mass_matrix (a fixed metric) needs backend='numpyro'")
        if dense_mass is True:
            raise ValueError("give either dense_mass (adapt a dense metric) or "
                             "inverse_mass_matrix (a fixed one), not both")
        dense_mass = False
        inverse_mass_matrix = np.asarray(inverse_mass_matrix, dtype=float)
        sites = latent_sites(model, model_args, model_kwargs)
        dim = int(sum(math.prod(shape) for shape in sites.values()))
        if inverse_mass_matrix.shape != (dim, dim) or not np.all(
                np.isfinite(inverse_mass_matrix)):
            raise ValueError(f"inverse_mass_matrix must be a finite {dim} x {dim} matrix "
                             f"(the model's unconstrained dimension), got shape "
                             f"{inverse_mass_matrix.shape}")
        # one dense block over every latent site, in sorted order (as NumPyro ravels a
        # block's sites and laplace_inverse_mass ravels its dict)
        inverse_mass_matrix = {tuple(sorted(sites)): jnp.asarray(inverse_mass_matrix)}
    if dense_mass == "auto":
        dense_mass = auto_dense_mass(model, model_args, model_kwargs, num_warmup)
    key = jax.random.key(0) if key is None else key
    run = _run_numpyro if backend == "numpyro" else _run_blackjax
    start = time.perf_counter()
    if keep_failed_states and backend != "blackjax":
        raise ValueError("keep_failed_states needs backend='blackjax' (NumPyro's NUTS does "
                         "not keep the state where a trajectory diverged)")
    if isinstance(init, dict):
        init = _checked_init(init, latent_sites(model, model_args, model_kwargs, True))
    init_strategy = _init_strategy(init)
    chain_devices = _chain_devices(num_chains) if spread_chains else 1
    with interrupt_guard() as guard:
        starts = None
        if isinstance(init, str) and init == "map":
            key, k_map = jax.random.split(key)
            starts = _map_starts(model, model_args, model_kwargs, k_map, num_chains)
        samples, stats, timing, partial = run(
            model, model_args, model_kwargs, key, num_warmup, num_samples, num_chains,
            target_accept, max_tree_depth, init_strategy, chunk_size, progress,
            keep_failed_states, starts, guard, chain_devices, dense_mass=bool(dense_mass),
            **({} if inverse_mass_matrix is None
               else {"inverse_mass_matrix": inverse_mass_matrix}))
        # from here on a Ctrl-C is deferred (the guard), or skips an optional step
        return _assemble(model, model_args, model_kwargs, samples, stats, key,
                         posterior_predictive, dims, coords,
                         {"backend": backend, "partial": int(partial),
                          "dense_mass": int(bool(dense_mass)), **timing}, guard,
                         start)


def _tree_depth(n_steps):
    return np.floor(np.log2(np.maximum(np.asarray(n_steps), 1))).astype(int) + 1


def _over_chains(fn, xs):
    """``fn`` over the leading (chain) axis. On CPU the chains run one after the other
    inside one program (``lax.map``): at least as fast as ``vmap`` there (each chain takes
    its own number of leapfrog and solver steps rather than the most of all chains, and
    conditionals keep their single branch; NumPyro on Theophylline: the same time per
    draw, BlackJAX on lynx-hare: 32 s against 75 s), and a third of the program, so
    compilation takes about half as long. Elsewhere (GPU) the chains are vectorised."""
    if jax.default_backend() == "cpu":
        return jax.lax.map(fn, xs)
    return jax.vmap(fn)(xs)


def _chain_devices(num_chains: int) -> int:
    """How many local devices the chains are spread over: the most that divide
    ``num_chains`` evenly (1: all chains on the default device)."""
    return math.gcd(jax.local_device_count(), num_chains)


def _spread(fn, n_dev: int):
    """``fn`` (all inputs and outputs with a leading chain axis) with the chains split
    evenly over the local devices (GPUs), each device running its block of chains on its
    own (``shard_map``, no communication); ``fn`` itself when there is one device. (On a
    CPU, JAX shows one device unless ``XLA_FLAGS=--xla_force_host_platform_device_count=N``
    or ``jax_num_cpu_devices`` says otherwise; measured on the lynx-hare model, two CPU
    devices ran the chains no faster than one.) ``n_dev``: how many devices
    (:func:`_chain_devices`)."""
    if n_dev == 1:
        return fn
    from jax.sharding import Mesh, PartitionSpec

    mesh = Mesh(np.array(jax.local_devices()[:n_dev]), ("chain",))
    spec = PartitionSpec("chain")
    return jax.shard_map(fn, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False)


def _per_chain(fn, n_dev: int):
    """``fn(*args)`` of one chain as a function of the same arguments with a leading chain
    axis: :func:`_over_chains`, split over ``n_dev`` devices by :func:`_spread`."""
    return _spread(lambda *xs: _over_chains(lambda a: fn(*a), xs), n_dev)


def _draw_initial(model, args, kwargs, init_strategy, key):
    """Initial unconstrained values from ``init_strategy``: one trace of the model, no
    gradient and no search loop (the first try of NumPyro's
    ``find_valid_initial_params``; the caller checks the initial state and falls back
    to NumPyro's search when it is not finite)."""
    seeded = numpyro.handlers.substitute(numpyro.handlers.seed(model, key),
                                         substitute_fn=init_strategy)
    trace = numpyro.handlers.trace(seeded).get_trace(*args, **kwargs)
    sites = {k: v for k, v in trace.items() if is_latent(v)}
    return infer_util.transform_fn({k: biject_to(v["fn"].support) for k, v in sites.items()},
                                   {k: v["value"] for k, v in sites.items()}, invert=True)


def _map_starts(model, args, kwargs, key, num_chains, n_candidates=None, max_iter=None,
                n_climbs=None, tolerance=None):
    """Per chain (leading axis): ``n_candidates`` draws (the first half, rounded up,
    uniform, the others from the prior), L-BFGS from the best
    ``n_climbs`` of them to modes of the posterior on the unconstrained scale, and the
    highest mode found. A chain whose mode lies more than ``tolerance`` nats of log
    density below the best mode of all chains starts at one of the modes within the
    tolerance instead (see ``run_nuts``'s ``init``). A step to a non-finite value is never
    kept: each climb's result is the best finite point it saw."""
    n_candidates = MAP_CANDIDATES if n_candidates is None else n_candidates
    max_iter = MAP_MAX_ITER if max_iter is None else max_iter
    n_climbs = min(MAP_CLIMBS if n_climbs is None else n_climbs, n_candidates)
    tolerance = MAP_TOLERANCE if tolerance is None else tolerance

    def potential(z):
        return infer_util.potential_energy(model, args, kwargs, z)

    def climb(x0, f, opt):
        # The line search stores the value and gradient at the point it accepts, and the
        # next iteration starts from them: the log density and its gradient are evaluated
        # (and compiled) only there and once before the loop, which keeps this program
        # about as small as it can be (it is compiled for every run with init="map").
        def cond(c):
            _, _, best_x, best_f, g, _, i = c
            return (i < max_iter) & (jnp.max(jnp.abs(g)) > 1e-6) & jnp.isfinite(best_f)

        def body(c):
            x, state, best_x, best_f, grad, value, i = c
            grad = jnp.where(jnp.isfinite(grad), grad, 0.0)
            updates, state = opt.update(grad, state, x, value=value, grad=grad, value_fn=f)
            x_new = optax.apply_updates(x, updates)
            f_new = optax.tree.get(state, "value")
            g_new = optax.tree.get(state, "grad")
            better = jnp.isfinite(f_new) & (f_new <= best_f)
            best_x = jnp.where(better, x_new, best_x)
            # stop once the iterate leaves the finite region (keep the best point)
            g_new = jnp.where(jnp.isfinite(f_new), g_new, 0.0)
            return (x_new, state, best_x, jnp.where(better, f_new, best_f), g_new, f_new,
                    i + 1)

        value, grad = jax.value_and_grad(f)(x0)
        out = jax.lax.while_loop(cond, body, (x0, opt.init(x0), x0, value, grad, value, 0))
        return out[2], out[3]

    n_uniform = (n_candidates + 1) // 2

    def chain(keys):
        def draw(strategy, ks):
            return jax.vmap(lambda k: _draw_initial(model, args, kwargs, strategy, k))(ks)

        cands = draw(init_to_uniform(), keys[:n_uniform])
        if n_candidates > n_uniform:
            cands = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), cands,
                                 draw(init_to_sample(), keys[n_uniform:]))
        energy = jax.vmap(potential)(cands)
        energy = jnp.where(jnp.isfinite(energy), energy, jnp.inf)
        flat = jax.vmap(lambda c: ravel_pytree(c)[0])(cands)
        unravel = ravel_pytree(jax.tree.map(lambda v: v[0], cands))[1]

        def f(x):
            value = potential(unravel(x))
            return jnp.where(jnp.isfinite(value), value, jnp.inf)

        starts = flat[jnp.argsort(energy)[:n_climbs]]
        # one after the other (lax.map): a vmapped line search would evaluate both
        # branches of each of its conditionals and compile to a far larger program
        xs, fs = jax.lax.map(lambda x0: climb(x0, f, optax.lbfgs()), starts)
        best = jnp.argmin(fs)
        return unravel(xs[best]), fs[best]

    keys = jax.random.split(key, num_chains * n_candidates).reshape(
        (num_chains, n_candidates) + key.shape)
    modes, energy = jax.jit(lambda ks: _over_chains(chain, ks),
                            compiler_options=compiler_options())(keys)
    energy = np.asarray(energy)
    good = energy <= np.min(energy) + tolerance
    if good.all():
        return modes
    source = np.arange(num_chains)
    bad = np.flatnonzero(~good)
    source[bad] = np.flatnonzero(good)[np.arange(len(bad)) % good.sum()]
    return jax.tree.map(lambda v: np.asarray(v)[source], modes)


def _finite_start(state) -> bool:
    grads = jax.tree.leaves(state.z_grad)
    return bool(np.all(np.isfinite(np.asarray(state.potential_energy)))
                and all(np.all(np.isfinite(np.asarray(g))) for g in grads))


# ---------------------------------------------------------------------------- NumPyro


def _run_numpyro(model, args, kwargs, key, num_warmup, num_samples, num_chains,
                 target_accept, max_tree_depth, init_strategy, chunk_size, progress,
                 keep_failed_states, starts, guard, chain_devices, dense_mass=False,
                 inverse_mass_matrix=None):
    """NumPyro's NUTS kernel (its own adaptation) stepped by our own chunked scan, so that
    warmup and sampling both report progress, compile once, and can be interrupted."""
    del keep_failed_states  # BlackJAX only (run_nuts has checked)
    metric = {"dense_mass": dense_mass}
    if inverse_mass_matrix is not None:  # {block of sites: matrix}, kept fixed
        metric = {"dense_mass": list(inverse_mass_matrix), "adapt_mass_matrix": False,
                  "inverse_mass_matrix": inverse_mass_matrix}
    kernel = NUTS(model, target_accept_prob=target_accept, max_tree_depth=max_tree_depth,
                  init_strategy=init_strategy, **metric)
    opts = compiler_options()
    keys = jax.random.split(key, num_chains)

    def init_drawn(k, start=None):
        k_draw, k_init = jax.random.split(k)
        if start is None:
            start = _draw_initial(model, args, kwargs, init_strategy, k_draw)
        return kernel.init(k_init, num_warmup, start, args, kwargs)

    # compiled as one program (run eagerly, initialisation would compile each primitive
    # on its own); from values drawn once rather than through NumPyro's search loop,
    # which doubles the program; the search only where a chain starts at a non-finite
    # log density or gradient
    inits = (keys,) if starts is None else (keys, starts)
    state = jax.jit(_per_chain(init_drawn, chain_devices), compiler_options=opts)(*inits)
    if not _finite_start(state):
        state = jax.jit(_per_chain(lambda k: kernel.init(k, num_warmup, None, args, kwargs),
                                   chain_devices), compiler_options=opts)(keys)
        if not _finite_start(state):
            # NumPyro's own check of the start is skipped under jit: without this the
            # chains stay frozen at it, every transition divergent
            raise RuntimeError(
                "NUTS could not start: the log density or its gradient is not finite at "
                "the initial values of every chain. Check init (values inside each "
                "prior's support) and the data (NaN or inf in an observed site)")
    short = short_windows(num_warmup, state.z) if dense_mass else None

    def one(s, _):
        new = kernel.sample(s, args, kwargs)
        if short is not None:
            new = diagonal_after_short_window(s, new, short)
        return new, (new.z, new.potential_energy, new.diverging, new.num_steps, new.energy,
                     new.accept_prob, new.adapt_state.step_size)

    @functools.partial(jax.jit, static_argnums=1, compiler_options=opts)
    def advance(state, n):
        # outputs (chain, draw, ...); one program for warmup and sampling
        return _per_chain(lambda s: jax.lax.scan(one, s, None, length=n), chain_devices)(state)

    bar = tqdm(total=num_warmup + num_samples, desc="NUTS (numpyro): warmup",
               disable=not progress, leave=False)
    t0 = time.perf_counter()
    current = [state]
    saturated = np.zeros(num_chains)  # warmup transitions at max_tree_depth, 2nd half

    def step(done, n, keep):
        current[0], out = advance(current[0], n)
        out = jax.device_get(out)
        n_steps, accept, step_size = out[3], out[5], out[6]
        _progress(bar, step_size[:, -1], accept)
        if keep:
            return out
        second_half = np.arange(done, done + n) >= num_warmup // 2
        saturated[:] += np.sum((_tree_depth(n_steps) >= max_tree_depth) & second_half,
                               axis=1)
        return None

    try:
        run_chunks(num_warmup, chunk_size, lambda d, n: step(d, n, False), bar)
        jax.block_until_ready(current[0])
        t_warm = time.perf_counter() - t0
        _check_warmup(np.asarray(current[0].adapt_state.step_size),
                      saturated / (num_warmup - num_warmup // 2), max_tree_depth)
        bar.set_description("NUTS (numpyro)")
        pieces, done, partial = run_chunks(num_samples, chunk_size,
                                           lambda d, n: step(d, n, True), bar, guard=guard)
    finally:
        bar.close()
    # the draws exist: a Ctrl-C from here on is deferred (guard), so they are finished
    out = jax.tree.map(lambda *xs: np.concatenate(xs, axis=1), *pieces)
    z, potential, divergent, n_steps, energy, accept, step_size = out
    postprocess = kernel.postprocess_fn(args, kwargs)
    constrained = jax.jit(jax.vmap(jax.vmap(postprocess)), compiler_options=opts)(z)
    samples = {k: np.asarray(v) for k, v in constrained.items()}
    stats = {"diverging": np.asarray(divergent, bool), "n_steps": np.asarray(n_steps),
             "tree_depth": _tree_depth(n_steps), "energy": np.asarray(energy),
             "acceptance_rate": np.asarray(accept), "lp": -np.asarray(potential),
             "step_size": np.asarray(step_size)}
    timing = {"seconds_warmup": t_warm, "seconds_sampling": time.perf_counter() - t0}
    return samples, stats, timing, partial


# ---------------------------------------------------------------------------- BlackJAX


def _run_blackjax(model, args, kwargs, key, num_warmup, num_samples, num_chains,
                  target_accept, max_tree_depth, init_strategy, chunk_size, progress,
                  keep_failed_states, starts, guard, chain_devices, dense_mass=False):
    k_init, k_warm, k_sample = jax.random.split(key, 3)
    init_params, potential_gen, postprocess_gen, _ = infer_util.initialize_model(
        jax.random.split(k_init, num_chains), model, init_strategy=init_strategy,
        dynamic_args=True, model_args=args, model_kwargs=kwargs)
    start_positions = init_params.z if starts is None else starts
    potential = potential_gen(*args, **kwargs)
    postprocess = postprocess_gen(*args, **kwargs)

    def logdensity(position):
        return -potential(position)

    warmup = blackjax.window_adaptation(blackjax.nuts, logdensity,
                                        target_acceptance_rate=target_accept,
                                        is_mass_matrix_diagonal=not dense_mass,
                                        max_num_doublings=max_tree_depth)

    @functools.partial(jax.jit, compiler_options=compiler_options())
    def adapt(keys, positions):
        def one(k, p):
            (state, params), info = warmup.run(k, p, num_warmup)
            failed, _ = jax.vmap(_stopped_at_failure)(info.info)
            second_half = info.info.num_trajectory_expansions[num_warmup // 2:]
            checks = (jnp.mean(second_half >= max_tree_depth),
                      jnp.mean(info.info.acceptance_rate[num_warmup // 2:]))
            return state, params, failed.sum(), checks

        return _per_chain(one, chain_devices)(keys, positions)

    @functools.partial(jax.jit, static_argnums=3, compiler_options=compiler_options())
    def sample_chunk(keys, states, params, n):
        def chain(k, state, p):
            step = blackjax.nuts(logdensity, step_size=p["step_size"],
                                 inverse_mass_matrix=p["inverse_mass_matrix"],
                                 max_num_doublings=max_tree_depth).step

            def one(s, kk):
                s, info = step(kk, s)
                failed, stop = _stopped_at_failure(info)
                return s, (s.position, s.logdensity, info.is_divergent,
                           info.num_integration_steps, info.energy, info.acceptance_rate,
                           info.num_trajectory_expansions, failed,
                           stop if keep_failed_states else None)

            return jax.lax.scan(one, state, jax.random.split(k, n))

        return _per_chain(chain, chain_devices)(keys, states, params)

    bar = tqdm(total=num_samples, desc="NUTS (blackjax): warmup", disable=not progress,
               leave=False)
    t0 = time.perf_counter()
    try:
        states, params, warmup_failed, (saturated, warm_accept) = adapt(
            jax.random.split(k_warm, num_chains), start_positions)
        jax.block_until_ready(states)
        t_warm = time.perf_counter() - t0
        chain_step_size = np.asarray(params["step_size"])
        _check_warmup(chain_step_size, np.asarray(saturated), max_tree_depth)
        _progress(bar, chain_step_size, np.asarray(warm_accept))
        bar.set_description("NUTS (blackjax)")
        current = [states, k_sample]

        def step(done, n):
            current[1], sub = jax.random.split(current[1])
            current[0], out = sample_chunk(jax.random.split(sub, num_chains), current[0],
                                           params, n)
            out = jax.device_get(out)
            _progress(bar, chain_step_size, out[5])
            return out

        pieces, done, partial = run_chunks(num_samples, chunk_size, step, bar, guard=guard)
    finally:
        bar.close()
    # the draws exist: a Ctrl-C from here on is deferred (guard), so they are finished
    out = jax.tree.map(lambda *xs: np.concatenate(xs, axis=1), *pieces)
    positions, lp, divergent, n_steps, energy, accept, depth, failed, stops = out
    constrained = jax.jit(jax.vmap(jax.vmap(postprocess)),
                          compiler_options=compiler_options())(positions)
    samples = {k: np.asarray(v) for k, v in constrained.items()}
    extra = {}
    if keep_failed_states:
        # Where each trajectory hit a failed solve, in the model's (constrained) space;
        # NaN for draws whose trajectory did not.
        at = jax.vmap(jax.vmap(postprocess))(stops)
        for k, v in at.items():
            if k not in stops:  # deterministic sites
                continue
            mask = np.asarray(failed).reshape(failed.shape + (1,) * (np.ndim(v) - 2))
            extra[f"failed_at.{k}"] = np.where(mask, np.asarray(v), np.nan)
    step_size = np.broadcast_to(np.asarray(params["step_size"])[:, None], lp.shape)
    stats = {"diverging": np.asarray(divergent, bool), "n_steps": np.asarray(n_steps),
             "tree_depth": np.asarray(depth), "energy": np.asarray(energy),
             "acceptance_rate": np.asarray(accept), "lp": np.asarray(lp),
             "step_size": np.array(step_size), "solver_failed": np.asarray(failed, bool),
             **extra}
    timing = {"seconds_warmup": t_warm, "seconds_sampling": time.perf_counter() - t0,
              "num_failed_solves_warmup": int(np.sum(warmup_failed))}
    return samples, stats, timing, partial


def _progress(bar, step_size, accept) -> None:
    """Progress-bar postfix: the step size (range over chains) and the mean acceptance
    rate of the last chunk."""
    lo, hi = float(np.min(step_size)), float(np.max(step_size))
    size = f"{lo:.2g}" if np.isclose(lo, hi, rtol=0.05) else f"{lo:.2g}-{hi:.2g}"
    bar.set_postfix_str(f"step size {size}, acceptance {float(np.mean(accept)):.2f}",
                        refresh=False)


def _check_warmup(step_size, saturated, max_tree_depth) -> None:
    """Warn about the chains whose warmup ended with a collapsed step size (per chain,
    below ``STEP_SIZE_FLOOR``) or mostly saturated trees (``saturated``: per chain, the
    share of the second half of warmup at ``max_tree_depth``); see the notes at
    ``STEP_SIZE_FLOOR``."""
    step_size, saturated = np.atleast_1d(step_size), np.atleast_1d(saturated)
    tiny = np.flatnonzero(~(step_size >= STEP_SIZE_FLOOR))  # NaN counts as collapsed
    if tiny.size:
        sizes = ", ".join(f"{step_size[c]:.2g}" for c in tiny)
        warnings.warn(
            f"NUTS warmup: the step size of chain(s) {tiny.tolist()} collapsed to {sizes} "
            f"(< {STEP_SIZE_FLOOR:g}): those chains barely move. They are stuck where the "
            f"log density is extremely curved (typically a start in the tails of an ODE "
            f"model): start them elsewhere (init='map', or a dict of values), or "
            f"reparameterise the model", stacklevel=4)
    full = np.flatnonzero(saturated > SATURATION_SHARE)
    if full.size:
        shares = ", ".join(f"{saturated[c]:.0%}" for c in full)
        warnings.warn(
            f"NUTS warmup: the trees of chain(s) {full.tolist()} reached max_tree_depth="
            f"{max_tree_depth} in {shares} of the second half of warmup: their trajectories "
            f"are cut short (a random walk). Check the step size, raise max_tree_depth, "
            f"or improve the metric (dense_mass, inverse_mass_matrix)", stacklevel=4)


def _stopped_at_failure(info):
    """Did this NUTS transition stop at a failed solve, and where?

    A failed solve gives log density ``-inf`` (:func:`reject_failed_solve`), which makes
    the transition divergent and stops it there. BlackJAX appends the divergent state to
    the trajectory before stopping, so it is the trajectory's leftmost or rightmost state:
    the one whose log density is not finite. (Any other non-finite log density, e.g. a
    value outside a distribution's support, is counted too; in a model whose only such
    source is ``reject_failed_solve`` the count is exactly the failed solves that
    stopped a trajectory.)
    """
    left, right = info.trajectory_leftmost_state, info.trajectory_rightmost_state
    right_bad = ~jnp.isfinite(right.logdensity)
    failed = info.is_divergent & (right_bad | ~jnp.isfinite(left.logdensity))
    stop = jax.tree.map(lambda a, b: jnp.where(right_bad, a, b), right.position,
                        left.position)
    return failed, stop


# ---------------------------------------------------------------------------- assembly


def _is_factor(site) -> bool:
    """A ``numpyro.factor`` site: an observed site whose distribution is ``Unit`` (under
    any wrappers: plates expand it, masks mask it). Not data: it has no log-likelihood
    and nothing to predict."""
    fn = site["fn"]
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return isinstance(fn, Unit)


def _observed_sites(model, args, kwargs, key):
    """The observed data ``{name: value}`` of the model's observed sites, factors
    excluded, and ``{name: kept}`` for the sites where a mask holds points out."""
    def observed(k):
        trace = numpyro.handlers.trace(numpyro.handlers.seed(model, k)).get_trace(
            *args, **kwargs)
        sites = {name: site for name, site in trace.items()
                 if site["type"] == "sample" and site["is_observed"] and not _is_factor(site)}
        masks = {name: _points_kept(site["fn"]) for name, site in sites.items()}
        return ({name: site["value"] for name, site in sites.items()},
                {name: m for name, m in masks.items() if m is not None})

    # compiled once rather than run eagerly primitive by primitive
    values, kept = jax.jit(observed, compiler_options=compiler_options())(key)
    kept = {k: np.asarray(m) for k, m in kept.items() if not np.all(m)}
    return {k: np.asarray(v) for k, v in values.items()}, kept


def _points_kept(fn):
    """The points of an observed site (its batch shape) that are data: ``False`` where a
    mask (``.mask(m)``, ``handlers.mask``) hides the whole point, whose log-likelihood is
    then 0 and not an observation; ``None`` when nothing is masked."""
    batch_shape, kept, reinterpreted = fn.batch_shape, None, 0
    while True:
        if isinstance(fn, dist.Independent):
            reinterpreted += fn.reinterpreted_batch_ndims
        if isinstance(fn, dist.MaskedDistribution):
            m = jnp.broadcast_to(jnp.asarray(fn._mask, bool), fn.batch_shape)
            if reinterpreted:  # a point is data if any of its event's entries is
                m = jnp.any(m, axis=tuple(range(-reinterpreted, 0)))
            kept = m if kept is None else kept & m
        if not hasattr(fn, "base_dist"):
            break
        fn = fn.base_dist
    return None if kept is None else jnp.broadcast_to(kept, batch_shape)


class _Unobserved(numpyro.primitives.Messenger):
    """Draw the named observed sites from their distributions instead of returning the
    observed values: the posterior predictive of a model called with its data.

    Predictive sampling needs it because a model cannot in general be called again with
    ``obs=None`` (its data are often also its design). It wraps the model itself, so its
    handler is entered last, inside any handlers around the model, and processes each site
    first: the value is cleared before an outer ``seed`` handler hands out keys (it gives
    one to a sample site only when it has no value). Masked sites (``.mask(m)``) are drawn
    in full from their base distribution; the mask still applies to their log density.
    """

    def __init__(self, fn, names):
        self.names = frozenset(names)
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] == "sample" and msg["is_observed"] and msg["name"] in self.names:
            # A distribution broadcast against its observations (a scalar mean for n
            # values) is expanded to their shape first: one draw per observation.
            fn, value = msg["fn"], msg["value"]
            n_event = len(fn.event_shape)
            obs_batch = jnp.shape(value)[:jnp.ndim(value) - n_event]
            batch = jnp.broadcast_shapes(fn.batch_shape, obs_batch)
            if batch != fn.batch_shape:
                msg["fn"] = fn.expand(batch)
            msg["value"] = None
            msg["is_observed"] = False


#: Share of divergent transitions above which the sample is said to be unreliable.
DIVERGENT_SHARE = 0.01


def _check_divergences(diverging: np.ndarray, stats) -> None:
    """Warn when more than :data:`DIVERGENT_SHARE` of the transitions diverged (Stan
    warns at any), the failed solves among them named: the draws then under-cover the
    regions the sampler could not enter."""
    share = float(np.mean(diverging)) if diverging.size else 0.0
    if share <= DIVERGENT_SHARE:
        return
    failed = int(np.sum(stats["solver_failed"])) if "solver_failed" in stats else None
    warnings.warn(
        f"NUTS: {int(np.sum(diverging))} of {diverging.size} transitions ({share:.0%}) "
        "diverged" + (f" ({failed} at a failed solve)" if failed else "") + ": the "
        "posterior is not reliably explored. Raise target_accept (e.g. 0.95), "
        "reparameterise (non-centred random effects), or check the model for regions "
        "where its log density is not finite", stacklevel=4)


def _assemble(model, args, kwargs, samples, stats, key, want_predictive, dims, coords, attrs,
              guard, start):
    """InferenceData from the draws. The observed data are required (a Ctrl-C is deferred
    by ``guard``); the log-likelihood and the posterior predictive are optional: a Ctrl-C
    skips them, and ``attrs`` says so (``partial``, ``skipped``)."""
    n_chains, n_draws = next(iter(samples.values())).shape[:2]
    flat = {k: jnp.reshape(v, (n_chains * n_draws, *v.shape[2:])) for k, v in samples.items()}
    observed, kept = _observed_sites(model, args, kwargs, key)
    names = list(observed)
    skipped = []

    def unflatten(group):
        return {k: np.reshape(v, (n_chains, n_draws, *v.shape[1:])) for k, v in group.items()}

    loglik = {}
    if observed:
        def pointwise(draws):
            values = log_likelihood(model, draws, *args, **kwargs)
            return {k: values[k] for k in names}

        loglik, done = guard.optional(lambda: unflatten(
            jax.jit(pointwise, compiler_options=compiler_options())(flat)))
        if not done:
            loglik = {}
            skipped.append("log_likelihood")
    predictive = None
    if want_predictive and observed:
        pred = Predictive(_Unobserved(model, names), posterior_samples=flat,
                          return_sites=names)
        predictive, done = guard.optional(lambda: unflatten(jax.jit(
            lambda k: pred(k, *args, **kwargs),
            compiler_options=compiler_options())(jax.random.fold_in(key, 1))))
        if not done:
            skipped.append("posterior_predictive")
    posterior = {k: v for k, v in samples.items() if k not in observed}
    attrs["num_divergent"] = int(np.sum(stats["diverging"]))
    _check_divergences(np.asarray(stats["diverging"]), stats)
    if "solver_failed" in stats:
        attrs["num_failed_solves"] = int(np.sum(stats["solver_failed"]))
    if not math.isfinite(float(np.sum(stats["lp"]))):
        attrs["non_finite_lp_draws"] = int(np.sum(~np.isfinite(stats["lp"])))
    guard.mark(attrs, skipped, stacklevel=3)
    attrs["seconds_total"] = time.perf_counter() - start
    # Points a mask holds out (held-out data) are not observations: their log-likelihood
    # (0) is left out, so that az.loo counts only the data (the site's points kept, along
    # a dimension "<site>_observed" whose coordinate is each point's flat index).
    held_out = {k: loglik.pop(k) for k in kept if k in loglik}
    idata = to_inference_data(posterior, sample_stats=stats, log_likelihood=loglik,
                              posterior_predictive=predictive, observed_data=observed,
                              dims=dims, coords=coords, attrs=attrs)
    if held_out:
        add_to_inference_data(
            idata, log_likelihood={k: np.reshape(v, (*v.shape[:2], -1))[..., kept[k].ravel()]
                                   for k, v in held_out.items()},
            dims={k: [f"{k}_observed"] for k in held_out},
            coords={f"{k}_observed": np.flatnonzero(kept[k].ravel()) for k in held_out})
    return idata
