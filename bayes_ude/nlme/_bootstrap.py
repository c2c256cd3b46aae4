"""The nonparametric bootstrap of a maximum-likelihood fit: subjects resampled, fits batched.

Each replicate draws ``N`` subjects with replacement from the ``N`` of the data (their
positions, ``Population.take`` keeps the padded widths, so every replicate has the same
array shapes) and is fitted by the same BFGS as :func:`bayes_ude.nlme.fit`
(:func:`._optimise.run_chunk`, the objective :func:`._likelihood.population_objective`).
Replicates are not a Python loop of fits: a group of them is one ``vmap`` of the compiled
BFGS chunk over the replicates' subject indices (a batched ``while_loop``: members that
converged are carried unchanged), split over the devices (``shard_map`` through
:func:`bayes_ude._batching.batch_map`); the host only counts converged replicates between
chunks for the progress bar. Every group has the same size (the last padded), so one
program serves them all.

A replicate succeeds when its fit converged (the criterion of :func:`fit`) and its
objective and estimates are finite; percentile intervals and standard errors are over the
successful replicates.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence

import equinox as eqx
import jax
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .. import _sigint
from .._batching import batch_map, resolve_devices
from .._compile import ITERATIVE, ONE_OFF, filter_jit
from ._estimate import setup_problem
from ._likelihood import LOG_2PI
from ._model import PopulationModel
from ._optimise import Problem, bfgs_init, run_chunk
from ._tables import observed, same_observations

__all__ = ["BootstrapResult", "bootstrap"]

#: Replicates per compiled group on a CPU. A batched loop runs as long as its slowest
#: member (every line search and inner Newton loop of a group waits for the longest), so
#: on a CPU small groups are fastest: 200 replicates of a 20-subject linear model took
#: 0.5 s in groups of 2, 1.0 s in groups of 8 and 6.0 s in one group; 16 Theophylline
#: FOCEI replicates 2.1 s in groups of 1 or 2, 4.8 s in groups of 4 (2-core CPU).
CPU_GROUP = 2
#: Subjects (replicates x subjects) per device in one group on a GPU/TPU, whose members
#: run in parallel (the objective of 1,000 and of 10,000 subjects took the same time on
#: an H200): groups of ``GPU_SUBJECTS // N`` replicates per device.
GPU_SUBJECTS = 10_000
_ML = ("fo", "foce", "focei", "laplace")


@filter_jit(quick_below=ITERATIVE)
def _replicate_chunk(problem: Problem, states, index, n_iter, tol, devices):
    """Up to ``n_iter[b]`` BFGS iterations of each replicate ``b`` (its subjects at
    ``index[b]``), replicates over ``devices``."""
    def one(item, shared):
        state, idx, n = item
        prob, tol = shared
        pop = jax.tree.map(lambda a: a[idx], prob.population)
        return run_chunk(eqx.tree_at(lambda p: p.population, prob, pop), state, n, tol)

    return batch_map(one, (states, index, n_iter), (problem, tol), block=None,
                     devices=devices, copy_args=False)


@filter_jit(quick_below=ONE_OFF)
def _natural(problem: Problem, xs):
    def one(x):
        u = problem.full(x)
        return problem.model.natural(u), problem.model.penalty(problem.model.unpack(u)[0])

    return jax.vmap(one)(xs)


def _run_group(problem, index, x0, eta0, *, max_iter, tol, chunk, devices, bar, real):
    """Fit the replicates of one group; returns ``(x, ofv, grad, iterations, done)``."""
    b = index.shape[0]
    one = jax.tree.map(np.asarray, bfgs_init(x0, eta0[:1]))
    states = jax.tree.map(lambda a: np.repeat(a[None], b, axis=0), one)
    states = states._replace(eta=eta0[index])
    done = np.zeros(b, bool)
    stopped = np.zeros(b, bool)  # the optimiser's own stop (converged, stalled, no descent)
    iters = np.zeros(b, np.int64)
    while not done.all():
        active = ~done
        n_iter = np.where(active, np.minimum(chunk, max_iter - iters), 0).astype(np.int64)
        states = _replicate_chunk(problem, states, index, n_iter, np.asarray(tol, float),
                                  devices)
        iters += np.asarray(states.iteration)
        stopped |= active & np.asarray(states.done)
        newly = active & (stopped | (iters >= max_iter))
        done |= newly
        bar.update(int(newly[:real].sum()))
        _sigint.raise_pending()
    return (np.asarray(states.x), np.asarray(states.value), np.asarray(states.grad), iters,
            stopped)


@dataclasses.dataclass
class BootstrapResult:
    """The result of :func:`bootstrap`.

    Attributes
    ----------
    method : the likelihood approximation.
    replicates : one row per replicate: the natural-scale estimates (columns named as
        :meth:`PopulationModel.parameter_names`), ``ofv``, ``minus2ll``, ``iterations``,
        ``converged`` and ``success`` (converged, finite objective and estimates).
    parameters : the parameter columns of ``replicates``.
    indices : ``(n, N)`` the subjects (0-based positions) of each replicate.
    original : the estimates of the fit the replicates started from (``start``), or None.
    level : the default level of the percentile intervals (0.95).
    seconds, interrupted : wall time; whether Ctrl-C cut the bootstrap short (then
        ``replicates`` holds the groups that finished).
    """

    method: str
    replicates: pd.DataFrame
    parameters: list[str]
    indices: np.ndarray
    original: pd.Series | None = None
    level: float = 0.95
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def success(self) -> np.ndarray:
        return self.replicates["success"].to_numpy(bool)

    @property
    def success_rate(self) -> float:
        """The fraction of replicates that succeeded."""
        return float(self.success.mean()) if len(self.replicates) else float("nan")

    @property
    def estimates(self) -> pd.DataFrame:
        """The successful replicates' estimates (replicate x parameter)."""
        return self.replicates.loc[self.success, self.parameters]

    @property
    def se(self) -> pd.Series:
        """Bootstrap standard errors: the SD (ddof 1) of the successful replicates."""
        return self.estimates.std(ddof=1)

    def ci(self, level: float | None = None) -> pd.DataFrame:
        """Per parameter: ``original`` (if known), the bootstrap ``median`` and ``se``, and
        the percentile interval ``p2.5``, ``p97.5`` (for ``level`` 0.95)."""
        level = self.level if level is None else level
        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got {level}")
        lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
        est = self.estimates
        table = pd.DataFrame(index=pd.Index(self.parameters, name="parameter"))
        if self.original is not None:
            table["original"] = self.original.reindex(self.parameters)
        table["median"] = est.median()
        table["se"] = est.std(ddof=1)
        table[f"p{100 * lo:g}"] = est.quantile(lo)
        table[f"p{100 * hi:g}"] = est.quantile(hi)
        return table

    def summary(self) -> dict:
        """JSON-ready: counts, success rate, the interval table, timing."""
        return {"method": self.method, "n": len(self.replicates),
                "n_success": int(self.success.sum()), "success_rate": self.success_rate,
                "level": self.level, "seconds": self.seconds, "interrupted": self.interrupted,
                "parameters": {k: {c: float(v) for c, v in row.items()}
                               for k, row in self.ci().iterrows()}}

    def __repr__(self) -> str:
        with pd.option_context("display.float_format", "{:.4g}".format, "display.width", 120):
            return (f"Bootstrap ({self.method.upper()}): {len(self.replicates)} replicates, "
                    f"{self.success_rate:.0%} successful, {self.seconds:.1f} s"
                    f"{' (interrupted)' if self.interrupted else ''}\n{self.ci()}")


def bootstrap(model: PopulationModel, population, method: str = "focei", n: int = 200,
              key: jax.Array | None = None, *, start=None,
              fixed: Sequence[str] | Mapping[str, float] | None = None,
              init: Mapping[str, float] | None = None, max_iter: int = 500,
              tol: float = 1e-6, level: float = 0.95, group: int | None = None,
              chunk: int = 100, progress: bool = True, devices=None) -> BootstrapResult:
    """Nonparametric bootstrap: ``n`` replicates of the data, each ``N`` subjects drawn
    with replacement from the ``N`` there, each refitted by maximum likelihood.

    Parameters
    ----------
    model, population, method : as for :func:`bayes_ude.nlme.fit` (``fo``, ``foce``,
        ``focei``, ``laplace``).
    n : number of replicates.
    key : JAX random key of the resampling (default ``jax.random.key(0)``).
    start : a :class:`FitResult` of these data: every replicate starts at its estimates
        (and its subjects' EBEs), with its fixed parameters held; recommended (fewer
        iterations). Default: the model's initial values, with ``init``.
    fixed, init, max_iter, tol : as for :func:`fit`. ``fixed`` defaults to ``start``'s
        fixed parameters (none without ``start``); ``fixed=()`` frees them.
    chunk : BFGS iterations per compiled call (between calls the host counts the
        replicates that finished). Each call starts BFGS's curvature again from a scaled
        identity (:func:`._optimise.run_chunk`), so long chunks converge in fewer
        iterations: 16 Theophylline FOCEI replicates took 64 iterations on average in
        chunks of 25, 37 in chunks of 100 (0.5 s against 1.8 s).
    level : default level of the percentile intervals (:meth:`BootstrapResult.ci`).
    group : replicates fitted together, one ``vmap`` (default: :data:`CPU_GROUP` on a
        CPU; on GPUs/TPUs ``GPU_SUBJECTS // N`` per device).
    progress : a progress bar over the replicates.
    devices : the replicates of a group are split over them (see :func:`fit`); each
        replicate's subjects stay on one device.

    Returns
    -------
    BootstrapResult. Ctrl-C keeps the groups that finished (``interrupted=True``); before
    the first one finishes it is re-raised.
    """
    if method not in _ML:
        raise ValueError(f"bootstrap: method must be one of {_ML}, got {method!r}")
    if n < 2:
        raise ValueError(f"bootstrap: n must be >= 2, got {n}")
    start_time = time.perf_counter()
    key = jax.random.key(0) if key is None else key
    devs = tuple(resolve_devices(devices))
    n_subjects = population.n_subjects
    model = model.specialised(population)
    eta0 = np.zeros((n_subjects, model.n_eta))
    u0 = None
    if start is not None:
        if not same_observations(observed(start.population), observed(population)):
            raise ValueError(
                "bootstrap: start is a fit of other data (its subjects differ from "
                "population's); its estimates would be shown as the original ones and its "
                "EBEs used as this data's starting values: pass a fit of population")
        u0, eta0 = np.asarray(start.u, float), np.asarray(start.eta.to_numpy(), float)
        fixed = start.fixed if fixed is None else fixed
    fixed = () if fixed is None else fixed
    problem, names, _ = setup_problem(model, population, method, fixed=fixed, init=init,
                                      u0=u0, devices=devs[:1])
    # a replicate's subjects are drawn while running: the objective keeps the padded
    # widths (size groups are made for the data's own subjects)
    problem = dataclasses.replace(problem, buckets=None)
    x0 = np.asarray(problem.u_fixed)[np.asarray(problem.free, int)]
    index = np.asarray(jax.random.randint(key, (n, n_subjects), 0, n_subjects))
    if group is None:
        group = CPU_GROUP if devs[0].platform == "cpu" else \
            len(devs) * max(1, GPU_SUBJECTS // n_subjects)
    group = max(1, min(int(group), n))
    parts, interrupted = [], False
    bar = tqdm(total=n, desc=f"bootstrap {method.upper()}", disable=not progress,
               leave=False)
    try:
        with _sigint.counted_sigint():
            for g in range(0, n, group):
                idx = index[g:g + group]
                real = idx.shape[0]
                idx = np.concatenate([idx, np.repeat(idx[-1:], group - real, axis=0)])
                out = _run_group(problem, idx, x0, eta0, max_iter=max_iter, tol=tol,
                                 chunk=chunk, devices=devs, bar=bar, real=real)
                parts.append(tuple(a[:real] for a in out))
    except KeyboardInterrupt:
        _sigint.handled()
        if not parts:
            raise
        interrupted = True
    finally:
        bar.close()
    x, ofv, grad, iters, stopped = (np.concatenate(a) for a in zip(*parts, strict=True))
    natural, penalty = (np.asarray(a) for a in _natural(problem, x))
    largest = np.max(np.abs(grad), axis=1) if grad.shape[1] else np.zeros(len(x))
    converged = np.isfinite(ofv) & ((largest < tol) | (stopped & (largest < 1e3 * tol)))
    table = pd.DataFrame(natural, columns=names)
    table["ofv"] = ofv
    n_obs = np.asarray(population.obs_mask).sum(axis=1)[index[:len(x)]].sum(axis=1)
    table["minus2ll"] = ofv - penalty + n_obs * LOG_2PI
    table["iterations"] = iters
    table["converged"] = converged
    table["success"] = converged & np.all(np.isfinite(natural), axis=1)
    return BootstrapResult(method, table, list(names), index[:len(table)],
                           None if start is None else start.estimates.copy(), level,
                           time.perf_counter() - start_time, interrupted)
