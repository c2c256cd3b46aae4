"""MAP fitting: Adam (optax) then L-BFGS, with minibatches, early stopping and a progress
bar; curricula (growing time windows, prediction-error gain annealing) on top."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import PyTree
from tqdm.auto import tqdm

from ._losses import (
    FAILED_LOSS,
    MultipleShooting,
    PredictionError,
    SingleShooting,
    loss_params,
)
from ._model import UDE

# Adam steps run in chunks of this many inside one jitted lax.scan: one dispatch and one
# progress-bar update per chunk instead of per step.
_CHUNK = 25


@dataclass
class FitResult:
    """Result of :func:`fit`.

    Attributes
    ----------
    params : the fitted parameters (same structure as the input).
    history : loss after every Adam step, then after every L-BFGS iteration.
    adam_steps, lbfgs_steps : iterations run in each phase.
    stopped_early : True when early stopping ended the Adam phase.
    seconds : wall time, including compilation.
    stages : for curricula, one ``(label, start index in history)`` per stage.
    params_loss : the loss of ``params`` (what :attr:`final_loss` reports; ``None`` where
        not recorded, then the history's last usable entry).
    """

    params: PyTree
    history: np.ndarray
    adam_steps: int
    lbfgs_steps: int
    stopped_early: bool
    seconds: float
    stages: list = field(default_factory=list)
    params_loss: float | None = None

    @property
    def final_loss(self) -> float:
        """The loss of the returned parameters: :attr:`params_loss`, or the history's last
        entry, or, where that is a failed solve (:func:`fit` then returns the last
        parameters that solved), the last entry that is not."""
        if self.params_loss is not None:
            return self.params_loss
        if not len(self.history):
            return float("nan")
        failed = _failed(self.history)
        if failed[-1] and not failed.all():
            return float(self.history[~failed][-1])
        return float(self.history[-1])


def _check_positive_int(name, value, allow_zero=True):
    low = 0 if allow_zero else 1
    if not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def fit(
    loss,
    params: PyTree,
    *,
    steps: int = 1000,
    optimizer: optax.GradientTransformation | None = None,
    learning_rate: float = 1e-2,
    lbfgs_steps: int = 0,
    batch_size: int | None = None,
    patience: int | None = None,
    min_delta: float = 0.0,
    key=None,
    l2: float = 0.0,
    penalty: Callable | None = None,
    progress: bool = True,
    desc: str = "fit",
) -> FitResult:
    """Minimise ``loss(params)`` with Adam, then refine with L-BFGS.

    Parameters
    ----------
    loss : a loss from :mod:`bayes_ude.ude` (or any ``loss(params[, batch]) -> scalar``).
    params : initial parameters: any pytree / equinox module (non-float leaves, Python
        floats included, are kept fixed: pass ``jnp.asarray(1.0)`` for a trainable
        scalar; a :class:`UDE` converts the floats of its ``theta``). For
        :class:`MultipleShooting` pass ``loss.init(model)``.
    steps : Adam steps (0 to skip).
    optimizer : an optax optimiser; default ``optax.adam(learning_rate)``. Steps whose
        loss is not finite or at least :data:`FAILED_LOSS` (a solve that failed), or whose
        gradient is not finite, are skipped. When the last loss is such a failure, the
        parameters returned are the last whose loss was not, and a warning says so (and
        when every loss failed: the parameters are then those given).
    lbfgs_steps : L-BFGS iterations afterwards (full batch; zoom line search).
    batch_size : trajectories per Adam step (sampled without replacement each step);
        default all. Needs a loss that accepts ``loss(params, batch)``.
    patience : stop Adam when the best loss has not improved by more than ``min_delta``
        for this many steps (checked every 25 steps); default never.
    key : PRNG key for minibatches (default ``jax.random.key(0)``).
    l2 : weight of an L2 penalty ``l2 * sum(w^2)`` on the fitted parameters (a Gaussian
        prior, i.e. MAP; smooths networks); for :class:`MultipleShooting` on the model
        only, not the nodes; for a :class:`UDE` on its network only, not on ``theta``
        (which it pulled towards 0: ``l2=1e-2`` fitted a rate of 2 as 1.06, the network
        making up the rest). The history holds the penalised loss.
    penalty : ``penalty(params) -> scalar`` added to the loss, e.g. :class:`StateBounds`
        (states that must stay non-negative over the prediction horizon); for
        :class:`MultipleShooting` it gets the model (``params["model"]``). Not subject
        to minibatching. The history holds the penalised loss.
    progress : show a progress bar (tqdm).

    Returns
    -------
    FitResult
    """
    _check_positive_int("steps", steps)
    _check_positive_int("lbfgs_steps", lbfgs_steps)
    if steps == 0 and lbfgs_steps == 0:
        raise ValueError("nothing to do: steps and lbfgs_steps are both 0")
    n_traj = getattr(loss, "n_trajectories", None)
    if batch_size is not None:
        _check_positive_int("batch_size", batch_size, allow_zero=False)
        if n_traj is None:
            raise ValueError("batch_size needs a loss with trajectories (loss(params, batch))")
        if batch_size > n_traj:
            raise ValueError(f"batch_size={batch_size} exceeds the {n_traj} trajectories")
    if patience is not None:
        _check_positive_int("patience", patience, allow_zero=False)
    if not l2 >= 0:
        raise ValueError(f"l2 must be >= 0, got {l2!r}")
    if optimizer is None and not (np.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"learning_rate must be a finite positive number, got "
                         f"{learning_rate!r} (0 leaves the parameters where they are, a "
                         f"negative one climbs the loss)")
    if penalty is not None and not callable(penalty):
        raise TypeError(f"penalty must be callable as penalty(params), got {penalty!r}")
    if l2 or penalty is not None:
        loss = _Penalised(loss, float(l2), penalty)
    start = time.perf_counter()
    key = jax.random.key(0) if key is None else key
    arrays, static = eqx.partition(params, eqx.is_inexact_array)
    if not jax.tree.leaves(arrays):
        raise ValueError("params has no floating-point parameters to fit")
    history: list[np.ndarray] = []
    adam_done, lbfgs_done, stopped = 0, 0, False
    bar = tqdm(total=steps + lbfgs_steps, desc=desc, disable=not progress, leave=False)
    try:
        if steps:
            opt = (_default_adam(learning_rate) if optimizer is None
                   else optax.apply_if_finite(optimizer, 10_000))
            arrays, params_loss, adam_done, stopped = _adam(
                loss, arrays, static, opt, steps, batch_size, n_traj, key, patience,
                min_delta, history, bar)
        if lbfgs_steps:
            arrays, params_loss, lbfgs_done = _lbfgs(loss, arrays, static, lbfgs_steps,
                                                     history, bar)
    finally:
        bar.close()
    hist = np.concatenate(history) if history else np.zeros(0)
    _warn_if_failed(hist, desc, params_loss)
    return FitResult(params=eqx.combine(arrays, static), history=hist, adam_steps=adam_done,
                     lbfgs_steps=lbfgs_done, stopped_early=stopped,
                     seconds=time.perf_counter() - start, params_loss=params_loss)


def _warn_if_failed(history: np.ndarray, desc: str, params_loss: float) -> None:
    """Say when no loss was usable (every solve failed, or NaN: the parameters are those
    given) or when the last one was not (the parameters are then the last that solved,
    whose loss is ``params_loss``)."""
    if not history.size or not _failed(history[-1]):
        return
    what = (f"the loss was a failed solve (>= FAILED_LOSS = {FAILED_LOSS:g}) or not finite "
            f"at every step of {desc!r}, so the parameters are unchanged"
            if _failed(params_loss) else
            f"the last loss of {desc!r} is a failed solve (>= FAILED_LOSS = "
            f"{FAILED_LOSS:g}) or not finite; the parameters returned are the last whose "
            f"loss was not ({params_loss:.4g})")
    warnings.warn(f"{what}: check the initial parameters and u0 (a solve that fails there "
                  "fails for every nearby step), the solver and max_steps", RuntimeWarning,
                  stacklevel=3)


class _Penalised(eqx.Module):
    """``loss + l2 * sum(w^2) + penalty(model)``: the prior and any penalty act on the model,
    not on multiple shooting's nodes (states, not weights)."""

    loss: eqx.Module
    l2: float = 0.0
    penalty: Callable | None = None

    @property
    def n_trajectories(self):
        return getattr(self.loss, "n_trajectories", None)

    def __call__(self, params, batch=None):
        value = self.loss(params) if batch is None else self.loss(params, batch)
        model = params["model"] if isinstance(self.loss, MultipleShooting) else params
        if self.l2:
            weights = model.network if isinstance(model, UDE) else model
            arrays = jax.tree.leaves(eqx.filter(weights, eqx.is_inexact_array))
            value = value + self.l2 * sum(jnp.sum(x**2) for x in arrays)
        if self.penalty is not None:
            value = value + self.penalty(model)
        return value


_ADAM_CACHE: dict = {}


def _default_adam(learning_rate: float):
    """One optimiser object per learning rate, so that repeated fits (curricula) reuse
    the compiled step."""
    if learning_rate not in _ADAM_CACHE:
        _ADAM_CACHE[learning_rate] = optax.apply_if_finite(optax.adam(learning_rate), 10_000)
    return _ADAM_CACHE[learning_rate]


def _value(loss, arrays, static, batch=None):
    p = eqx.combine(arrays, static)
    return loss(p) if batch is None else loss(p, batch)


def _failed(value):
    """A loss that is not finite, or at least :data:`FAILED_LOSS` (a failed solve): traced
    in the Adam step, and on the history (numpy, no JAX dispatch) after it."""
    xp = jnp if isinstance(value, jax.Array) else np
    return ~xp.isfinite(value) | (value >= FAILED_LOSS)


@eqx.filter_jit
def _adam_chunk(loss, arrays, static, state, good, keys, opt, batch_size, n_traj):
    """``len(keys)`` Adam steps in one scan; ``good`` follows the last parameters whose
    loss was usable (not a failed solve)."""
    def one(carry, k):
        a, s, good = carry
        batch = None if batch_size is None else jax.random.choice(
            k, n_traj, (batch_size,), replace=False)
        loss_value, grad = jax.value_and_grad(_value, argnums=1)(loss, a, static, batch)
        # A failed solve's loss (FAILED_LOSS) has a zero gradient, which the optimiser
        # would apply (momentum carrying the parameters further into the failing region):
        # made NaN, the step is skipped by apply_if_finite, moments untouched.
        failed = _failed(loss_value)
        grad = jax.tree.map(lambda g: jnp.where(failed, jnp.nan, g), grad)
        good = jax.tree.map(lambda x, y: jnp.where(failed, x, y), good, a)
        updates, s = opt.update(grad, s, a)
        return (optax.apply_updates(a, updates), s, good), loss_value

    (arrays, state, good), losses = jax.lax.scan(one, (arrays, state, good), keys)
    return arrays, state, good, losses


def _adam(loss, arrays, static, opt, steps, batch_size, n_traj, key, patience, min_delta,
          history, bar):
    state, good = opt.init(arrays), arrays
    best, since_best, done = np.inf, 0, 0
    while done < steps:
        n = min(_CHUNK, steps - done)
        key, sub = jax.random.split(key)
        arrays, state, good, losses = _adam_chunk(loss, arrays, static, state, good,
                                                  jax.random.split(sub, n), opt, batch_size,
                                                  n_traj)
        losses = np.asarray(losses)
        history.append(losses)
        done += n
        bar.update(n)
        bar.set_postfix(loss=f"{losses[-1]:.4g}")
        if patience is not None:
            chunk_best = float(np.min(losses))
            if chunk_best < best - min_delta:
                best, since_best = chunk_best, 0
            else:
                since_best += n
                if since_best >= patience:
                    return *_last_solved(loss, arrays, static, good, history), done, True
    return *_last_solved(loss, arrays, static, good, history), done, False


def _last_solved(loss, arrays, static, good, history):
    """The parameters reached, or, when their loss is a failed solve (the steps from
    there were skipped: they stay failed), the last ones whose loss was not.

    The steps record the loss before each step; the loss of the parameters reached is
    evaluated here, and the history shifted to the loss after each step. (Without it, a
    last step into a failing region returned those parameters with the loss before it as
    ``final_loss``, and no warning.)"""
    final = float(_loss_value(loss, arrays, static))
    losses = np.append(np.concatenate(history), final)  # the start, ..., the end
    history[:] = [losses[1:]]
    failed = _failed(losses)
    if failed[-1] and not failed.all():
        return good, float(losses[~failed][-1])
    return arrays, final


_LBFGS = optax.lbfgs()


@eqx.filter_jit
def _lbfgs_step(loss, arrays, static, state):
    def value(a):
        return _value(loss, a, static)

    loss_value, grad = optax.value_and_grad_from_state(value)(arrays, state=state)
    updates, state = _LBFGS.update(grad, state, arrays, value=loss_value, grad=grad,
                                   value_fn=value)
    return optax.apply_updates(arrays, updates), state, loss_value


@eqx.filter_jit
def _loss_value(loss, arrays, static):
    return _value(loss, arrays, static)


def _lbfgs(loss, arrays, static, steps, history, bar):
    state = _LBFGS.init(arrays)
    losses: list[float] = []
    done = 0
    good = None  # the last parameters whose loss was usable (not a failed solve), and it
    for _ in range(steps):
        new, state, loss_value = _lbfgs_step(loss, arrays, static, state)
        if not all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(new)):
            break
        if not _failed(float(loss_value)):
            good = arrays, float(loss_value)
        arrays = new
        losses.append(float(loss_value))
        done += 1
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4g}")
        # Converged: six iterations without any change in the loss.
        if len(losses) > 5 and abs(losses[-6] - losses[-1]) <= 1e-12 * max(1.0, abs(losses[-1])):
            break
    # losses[i] is the loss *before* iteration i: shift by one and end with the final loss.
    final = float(_loss_value(loss, arrays, static))
    history.append(np.asarray(losses[1:] + [final]))
    bar.update(steps - done)
    if _failed(final) and good is not None:
        return *good, done  # what the warning of fit then names: the last that solved
    return arrays, final, done


def fit_growing_windows(
    params: PyTree,
    ts,
    ys,
    *,
    windows: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
    steps: int = 300,
    lbfgs_steps: int = 0,
    final_lbfgs_steps: int = 200,
    penalty: Callable | None = None,
    progress: bool = True,
    **loss_kwargs,
) -> FitResult:
    """Curriculum from a short horizon to the full one: fit single shooting on the first
    ``windows[i]`` fraction of the time span in turn, each stage starting where the last
    ended, then L-BFGS on the full span.

    Early on, a short window keeps the solution near the data, so the parameters cannot
    wander into the local minima of long-horizon shooting (phase slips of oscillations,
    blow-ups). ``loss_kwargs`` go to :class:`SingleShooting`; ``penalty`` (see :func:`fit`)
    is added at every stage.
    """
    windows = [float(w) for w in windows]
    if not windows or any(not 0 < w <= 1 for w in windows) or windows != sorted(windows):
        raise ValueError(f"windows must be increasing fractions in (0, 1], got {windows!r}")
    ts = np.asarray(ts, float)
    span = ts[-1] - ts[0]
    stages = []
    for i, w in enumerate(windows):
        n_points = max(2, int(np.searchsorted(ts, ts[0] + w * span + 1e-12 * span, "right")))
        loss = SingleShooting(ts[:n_points], np.asarray(ys)[..., :n_points, :], **loss_kwargs)
        last = i == len(windows) - 1
        stages.append((f"window {w:.2f} ({n_points} points)", loss,
                       final_lbfgs_steps if last else lbfgs_steps))
    return _run_stages(stages, params, steps, progress, penalty)


def _run_stages(stages, params, steps, progress, penalty=None) -> FitResult:
    """Fit ``(label, loss, lbfgs_steps)`` stages in turn, each from where the last ended."""
    start = time.perf_counter()
    histories, marks, n_total = [], [], 0
    for label, loss, lbfgs_steps in stages:
        result = fit(loss, params, steps=steps, lbfgs_steps=lbfgs_steps, penalty=penalty,
                     progress=progress, desc=label)
        params = result.params
        marks.append((label, n_total))
        histories.append(result.history)
        n_total += len(result.history)
    return FitResult(params=params, history=np.concatenate(histories),
                     adam_steps=steps * len(stages), lbfgs_steps=result.lbfgs_steps,
                     stopped_early=False, seconds=time.perf_counter() - start, stages=marks,
                     params_loss=result.params_loss)


def fit_pem(
    params: PyTree,
    ts,
    ys,
    *,
    gains: Sequence[float] = (4.0, 2.0, 1.0, 0.5, 0.25, 0.0),
    steps: int = 300,
    final_lbfgs_steps: int = 200,
    penalty: Callable | None = None,
    progress: bool = True,
    **loss_kwargs,
) -> FitResult:
    """Prediction-error method with the observer gain annealed to 0: fit
    :class:`PredictionError` at each gain in turn (no recompilation between gains), the last
    stage (gain 0: plain single shooting) followed by L-BFGS. ``penalty`` (see :func:`fit`)
    is added at every stage."""
    gains = [float(g) for g in gains]
    if not gains or any(g < 0 for g in gains):
        raise ValueError(f"gains must be non-negative, got {gains!r}")
    if gains[-1] != 0.0:
        gains.append(0.0)
    loss = PredictionError(ts, ys, gains[0], **loss_kwargs)
    stages = [(f"gain {g:g}", loss.with_gain(g), final_lbfgs_steps if i == len(gains) - 1 else 0)
              for i, g in enumerate(gains)]
    return _run_stages(stages, params, steps, progress, penalty)


__all__ = ["FitResult", "fit", "fit_growing_windows", "fit_pem", "loss_params"]
