"""Experiments (data), simulation and deterministic training of a CRNN.

Training (Ji & Deng 2021): AdamW on the mean absolute (or squared) error of the
concentrations, each species divided by its largest measured value so that species of
different magnitude weigh alike; all experiments (or a minibatch of them) in every step,
each solved from its own initial concentrations, vectorised with ``vmap``. The Adam loop
itself is :func:`bayes_ude.ude.fit` (chunked ``lax.scan``, progress bar, skipped steps
when a solve fails).
"""

from __future__ import annotations

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, ArrayLike, Float

from .. import solvers
from ..ude import FAILED_LOSS, FitResult
from ..ude import fit as _ude_fit
from ._model import CRNN, vector_field

LOSSES = ("mae", "mse")


class Experiments(eqx.Module):
    """Concentration time courses of several experiments on a shared time grid.

    Parameters
    ----------
    ts : ``(T,)`` strictly increasing times.
    ys : ``(B, T, n_species)`` measured concentrations (or ``(T, n_species)``: one
        experiment); non-negative and finite.
    u0 : ``(B, n_species)`` initial concentrations at ``ts[0]`` (the experimenter's set
        values); default the first measurement ``ys[:, 0]``.
    temperature : ``(B,)`` temperature of each experiment (kelvin; for Arrhenius
        CRNNs), or ``None``.
    n_species : if given, the number of species the data must have (the model's).

    Attributes
    ----------
    scale : ``(n_species,)`` the largest measured value of each species (1 for a species
        never observed above zero): residuals are divided by it.
    """

    ts: Float[Array, " T"]
    ys: Float[Array, "B T n_species"]
    u0: Float[Array, "B n_species"]
    temperature: Float[Array, " B"] | None
    scale: Float[Array, " n_species"]

    def __init__(self, ts: ArrayLike, ys: ArrayLike, u0: ArrayLike | None = None,
                 temperature: ArrayLike | None = None, *, n_species: int | None = None):
        ts = np.asarray(ts, dtype=float)
        if ts.ndim != 1 or ts.shape[0] < 2:
            raise ValueError(f"ts must be a 1-D array of at least 2 times, got shape {ts.shape}")
        if not np.all(np.isfinite(ts)) or np.any(np.diff(ts) <= 0):
            raise ValueError("ts must be finite and strictly increasing")
        ys = np.asarray(ys, dtype=float)
        if ys.ndim == 2:
            ys = ys[None]
        if ys.ndim != 3 or ys.shape[1] != ts.shape[0]:
            raise ValueError(f"ys must have shape (B, T, n_species) or (T, n_species) with "
                             f"T = len(ts) = {ts.shape[0]}, got {np.shape(ys)}")
        n = ys.shape[2]
        if n_species is not None and n != n_species:
            raise ValueError(f"ys has {n} species (last axis) but the model has "
                             f"n_species={n_species}")
        if not np.all(np.isfinite(ys)):
            raise ValueError("ys contains NaN or inf; remove or impute them")
        if np.any(ys < 0):
            b, t, s = (int(i[0]) for i in np.nonzero(ys < 0))
            raise ValueError(f"ys contains negative concentrations (first: experiment {b}, "
                             f"time index {t}, species {s}: {ys[b, t, s]}); concentrations "
                             f"must be >= 0 (clip measurement noise at zero)")
        if u0 is None:
            u0 = ys[:, 0]
        u0 = np.asarray(u0, dtype=float)
        if u0.ndim == 1 and ys.shape[0] == 1:
            u0 = u0[None]
        if u0.shape != (ys.shape[0], n):
            raise ValueError(f"u0 must have shape (B, n_species) = {(ys.shape[0], n)}, got "
                             f"{u0.shape}")
        if not np.all(np.isfinite(u0)) or np.any(u0 < 0):
            raise ValueError("u0 must hold finite, non-negative initial concentrations")
        if temperature is not None:
            temperature = np.asarray(temperature, dtype=float)
            if temperature.shape != (ys.shape[0],):
                raise ValueError(f"temperature must have shape (B,) = ({ys.shape[0]},), one "
                                 f"per experiment, got {temperature.shape}")
            if not np.all(temperature > 0):
                raise ValueError("temperature must be positive (kelvin)")
        scale = np.abs(ys).reshape(-1, n).max(axis=0)
        self.ts = jnp.asarray(ts)
        self.ys = jnp.asarray(ys)
        self.u0 = jnp.asarray(u0)
        self.temperature = None if temperature is None else jnp.asarray(temperature)
        self.scale = jnp.asarray(np.where(scale > 0, scale, 1.0))

    @property
    def n_experiments(self) -> int:
        return int(self.ys.shape[0])

    def subset(self, index: ArrayLike) -> Experiments:
        """The experiments at ``index`` (keeping this data set's ``scale``)."""
        if not isinstance(index, jax.core.Tracer):  # JAX would clamp one out of range
            idx = np.asarray(index)
            n = self.n_experiments
            if idx.dtype.kind not in "iub" or (idx.dtype.kind != "b" and idx.size and (
                    idx.min() < -n or idx.max() >= n)):
                raise ValueError(f"index must hold experiment indices in [0, {n}), got "
                                 f"{idx.tolist()}")
        index = jnp.asarray(index)
        return eqx.tree_at(
            lambda d: (d.ys, d.u0, d.temperature), self,
            (self.ys[index], self.u0[index],
             None if self.temperature is None else self.temperature[index]),
            is_leaf=lambda x: x is None)


def check_model_data(model: CRNN, data: Experiments) -> None:
    """Raise ``ValueError`` if ``data`` does not fit ``model`` (species, temperature)."""
    if not isinstance(model, CRNN):
        raise TypeError(f"model must be a crnn.CRNN, got {type(model).__name__}")
    if data.ys.shape[2] != model.n_species:
        raise ValueError(f"ys has {data.ys.shape[2]} species (last axis) but the model has "
                         f"n_species={model.n_species}")
    if model.arrhenius and data.temperature is None:
        raise ValueError("an Arrhenius CRNN needs the temperature of every experiment")
    if not model.arrhenius and data.temperature is not None:
        warnings.warn("the experiments have temperatures but the CRNN has no Arrhenius "
                      "kinetics: the temperatures are not used, and one rate constant per "
                      "reaction is fitted to all of them (build it with arrhenius=True, or "
                      "CRNN.from_mechanism(..., activation_energy=...))", UserWarning,
                      stacklevel=3)


#: How each experiment is solved unless told otherwise (the ``options`` of every function
#: here): Tsit5 at ``rtol=1e-6``, ``atol=1e-8``, since a trained CRNN of data like Ji &
#: Deng's is not stiff (rates within two orders of magnitude); pass
#: ``DEFAULT_SOLVE.replace(solver=solvers.Rodas5P())`` (or ``solvers.Auto()``) for stiff
#: mechanisms. ``max_steps=4096`` (below :func:`bayes_ude.solvers.solve`'s 10 000) bounds a
#: solve that a bad weight made stiff: it fails (and the training step is skipped, the
#: sample rejected) instead of running for ever.
DEFAULT_SOLVE = solvers.SolveOptions(solver=solvers.Tsit5(), rtol=1e-6, atol=1e-8,
                                     max_steps=4096)


def simulate_one(model: CRNN, ts, u0, temperature=None,
                 options: solvers.SolveOptions = DEFAULT_SOLVE) -> solvers.Solution:
    """One experiment: solve ``dc/dt = model(t, c, temperature)`` from ``u0`` at ``ts``."""
    return options.solve(vector_field, u0, ts, (model, temperature))


def simulate(model: CRNN, ts: ArrayLike, u0: ArrayLike, temperature: ArrayLike | None = None,
             *, options: solvers.SolveOptions = DEFAULT_SOLVE) -> solvers.Solution:
    """Solve a batch of experiments (``vmap``): ``u0`` of shape ``(B, n_species)`` (or
    ``(n_species,)``), ``temperature`` ``(B,)`` or ``None``. Returns a batched
    :class:`bayes_ude.solvers.Solution` (``ys`` of shape ``(B, T, n_species)``)."""
    u0 = jnp.asarray(u0, dtype=jnp.result_type(float))
    if u0.ndim not in (1, 2) or u0.shape[-1] != model.n_species:
        raise ValueError(f"u0 must have shape (B, n_species) with n_species={model.n_species}, "
                         f"got {u0.shape}")
    if u0.ndim == 1:
        if temperature is not None and np.ndim(temperature) != 0:
            raise ValueError(f"one experiment (u0 of shape (n_species,)) takes one "
                             f"temperature, got shape {np.shape(temperature)}")
        sol = simulate_one(model, ts, u0, temperature, options)
    else:
        temp_axis = None if temperature is None else 0
        sol = jax.vmap(lambda u, T: simulate_one(model, ts, u, T, options),
                       in_axes=(0, temp_axis))(u0, temperature)
    _warn_if_negative(sol.ys, model)
    return sol


#: How far below zero, relative to the largest concentration of the result, a simulated
#: concentration may go before :func:`simulate` warns (round-off and the solver's error
#: stay far below it).
NEGATIVE_TOL = 1e-3


def _warn_if_negative(ys, model: CRNN) -> None:
    """Warn when a concrete result has concentrations clearly below zero: the clip of
    the rate law keeps consuming an exhausted reactant (see the module notes of
    ``crnn._model``)."""
    if isinstance(ys, jax.core.Tracer):
        return
    values = np.asarray(ys)
    finite = values[np.isfinite(values)]
    if not finite.size:
        return
    lowest = float(finite.min())
    if lowest < -NEGATIVE_TOL * max(float(np.abs(finite).max()), model.conc_min):
        species = model.species[int(np.nanargmin(values.reshape(-1, values.shape[-1]))
                                    % values.shape[-1])]
        warnings.warn(
            f"the simulated concentrations go negative ({species} down to {lowest:.3g}): a "
            f"reactant that is used up keeps being consumed at k * conc_min ** order "
            f"(conc_min = {model.conc_min:g}), which a fractional order or a fast reaction "
            f"makes visible; the species that use it up are overestimated by as much. A "
            f"smaller conc_min (with a stiff solver for weak orders) reduces it",
            UserWarning, stacklevel=3)


class TrajectoryLoss(eqx.Module):
    """``loss(model, batch=None)``: mean absolute (``"mae"``) or squared (``"mse"``)
    error of the concentrations divided by each species' scale, over the experiments in
    ``batch`` (indices; default all), plus ``l1 * sum |nu|`` (a sparsity penalty, see
    :func:`fit`). A failed solve gives ``FAILED_LOSS``."""

    data: Experiments
    kind: str = eqx.field(static=True)
    options: solvers.SolveOptions
    l1: float = 0.0

    @property
    def n_trajectories(self) -> int:
        return self.data.n_experiments

    def __call__(self, model: CRNN, batch=None):
        data = self.data if batch is None else self.data.subset(batch)
        sol = simulate(model, data.ts, data.u0, data.temperature, options=self.options)
        ok = sol.success[:, None, None]
        value = _penalised_error(jnp.where(ok, sol.ys, 0.0), data, self.kind, self.l1, model)
        return jnp.where(jnp.all(ok), value, FAILED_LOSS)


def _penalised_error(pred, data: Experiments, kind: str, l1: float, model: CRNN):
    """Mean absolute or squared scaled error of ``pred`` plus ``l1 * sum |nu|``."""
    if kind not in LOSSES:
        raise ValueError(f"kind must be one of {LOSSES}, got {kind!r}")
    resid = (pred - data.ys) / data.scale
    value = jnp.mean(jnp.abs(resid)) if kind == "mae" else jnp.mean(resid**2)
    return value + l1 * jnp.sum(jnp.abs(model.nu))


def _decay_mask(arrays):
    """Weight decay on the stoichiometry (and free orders) only: decaying ``ln k``
    would pull every rate constant towards 1."""
    mask = jax.tree.map(lambda _: False, arrays)
    mask = eqx.tree_at(lambda m: m.stoichiometry, mask, True)
    if arrays.free_orders is not None:
        mask = eqx.tree_at(lambda m: m.free_orders, mask, True)
    return mask


def fit(
    model: CRNN,
    data: Experiments,
    *,
    steps: int = 2000,
    learning_rate: float = 1e-2,
    weight_decay: float = 1e-4,
    max_grad_norm: float = 1.0,
    loss: str = "mae",
    l1: float = 0.0,
    batch_size: int | None = None,
    lbfgs_steps: int = 0,
    options: solvers.SolveOptions = DEFAULT_SOLVE,
    key: jax.Array | None = None,
    progress: bool = True,
) -> FitResult:
    """Train a CRNN on experiments with AdamW (then optionally L-BFGS).

    Parameters
    ----------
    model : the initial :class:`CRNN` (its ``mask`` stays fixed: refitting a pruned
        model keeps the pruned weights at zero).
    data : :class:`Experiments`.
    steps : AdamW steps.
    learning_rate : AdamW learning rate (1e-2: the weights are O(1) numbers, and
        ``max_grad_norm`` keeps the first steps safe), or an optax schedule.
    weight_decay : decoupled weight decay on the stoichiometric coefficients (and free
        orders), a mild push of unneeded coefficients towards zero before pruning.
    max_grad_norm : gradients are clipped to this global norm (a nearly stiff solve early
        in training gives occasional huge gradients).
    loss : ``"mae"`` (Ji & Deng's choice: robust to the few large residuals of an
        unfinished fit) or ``"mse"``.
    l1 : weight of the sparsity penalty ``l1 * sum |nu|`` added to the loss (a Laplace
        prior on the coefficients: it sets the sloppy ones, which the data hardly
        constrain, to nearly zero, so that pruning removes them; refit the pruned model
        with ``l1=0`` to undo the shrinkage of the others).
    batch_size : experiments per step (drawn without replacement); default all.
    lbfgs_steps : full-batch L-BFGS iterations after AdamW (on the same loss).
    options : the :class:`bayes_ude.solvers.SolveOptions` of the solves (default
        :data:`DEFAULT_SOLVE`).
    key : PRNG key for minibatches.

    Returns
    -------
    :class:`bayes_ude.ude.FitResult`; ``result.params`` is the trained CRNN.
    """
    check_model_data(model, data)
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if not l1 >= 0:
        raise ValueError(f"l1 must be >= 0, got {l1!r}")
    objective = TrajectoryLoss(data, loss, options, float(l1))
    optimizer = _optimizer(learning_rate, weight_decay, max_grad_norm)
    return _ude_fit(objective, model, steps=steps, optimizer=optimizer,
                    lbfgs_steps=lbfgs_steps, batch_size=batch_size, key=key,
                    progress=progress, desc="CRNN fit")


class CollocationLoss(eqx.Module):
    """``loss(model, batch=None)`` without any ODE solve (integral matching): the
    concentrations predicted by integrating the CRNN's vector field *along the smoothed
    data* with the trapezoidal rule,
    ``c(t_k) = c(t_0) + sum_{l<k} (t_{l+1} - t_l) (f(c_hat_l) + f(c_hat_{l+1})) / 2``,
    against the measurements, scaled and averaged as :class:`TrajectoryLoss`.

    Matching integrals instead of derivatives never differentiates noisy data (the
    derivatives of a smoothing spline are poorest exactly where the fast early reactions
    are), and the measurements themselves, not the smoothed curves, are the target.
    """

    data: Experiments
    c_hat: Float[Array, "B T n_species"]
    kind: str = eqx.field(static=True)
    l1: float = 0.0

    @property
    def n_trajectories(self) -> int:
        return self.data.n_experiments

    def __call__(self, model: CRNN, batch=None):
        data = self.data if batch is None else self.data.subset(batch)
        c_hat = self.c_hat if batch is None else self.c_hat[batch]
        temp_axis = None if data.temperature is None else 0
        field = jax.vmap(jax.vmap(lambda c, T: model(0.0, c, T), in_axes=(0, None)),
                         in_axes=(0, temp_axis))
        f = field(c_hat, data.temperature)
        dt = jnp.diff(data.ts)[None, :, None]
        increments = 0.5 * (f[:, 1:] + f[:, :-1]) * dt
        pred = data.u0[:, None] + jnp.concatenate(
            [jnp.zeros_like(increments[:, :1]), jnp.cumsum(increments, axis=1)], axis=1)
        return _penalised_error(pred, data, self.kind, self.l1, model)


_OPTIMIZERS: dict = {}


def _optimizer(learning_rate, weight_decay, max_grad_norm):
    """AdamW with gradient clipping, weight decay on the stoichiometry only. One object
    per setting (constant learning rates), so that repeated fits -- train, prune, refit --
    reuse the compiled step instead of compiling it again."""
    settings = (learning_rate, weight_decay, max_grad_norm)
    if not callable(learning_rate) and settings in _OPTIMIZERS:
        return _OPTIMIZERS[settings]
    opt = _make_optimizer(learning_rate, weight_decay, max_grad_norm)
    if not callable(learning_rate):
        _OPTIMIZERS[settings] = opt
    return opt


def _make_optimizer(learning_rate, weight_decay, max_grad_norm):
    for name, value in (("learning_rate", learning_rate), ("max_grad_norm", max_grad_norm)):
        if not callable(value) and not value > 0:
            raise ValueError(f"{name} must be positive, got {value!r}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    return optax.chain(
        optax.clip_by_global_norm(max_grad_norm),
        optax.adamw(learning_rate, weight_decay=weight_decay, mask=_decay_mask))


def fit_collocation(
    model: CRNN,
    data: Experiments,
    *,
    steps: int = 3000,
    restarts: int = 8,
    restart_scale: float = 0.1,
    learning_rate: float = 2e-2,
    weight_decay: float = 1e-4,
    max_grad_norm: float = 1.0,
    loss: str = "mae",
    l1: float = 0.0,
    smoothing: str = "spline",
    key: jax.Array | None = None,
    progress: bool = True,
) -> FitResult:
    """Warm start without ODE solves: AdamW on :class:`CollocationLoss`, from several
    starting points at once; the restart with the lowest final collocation loss wins.

    Each time course is smoothed (:func:`bayes_ude.ude.smooth`: a cubic smoothing spline
    per species, its smoothness chosen by generalised cross-validation). A step then costs
    a few vector-field evaluations instead of a batch of solves, so thousands of steps for
    all restarts (``vmap``) take seconds. The result is close to the data, so
    :func:`fit` needs only a short polish, from weights that solve easily.

    Restarts matter: the loss has local minima where one candidate reaction does the
    work of two (e.g. ``1.4A -> 0.4B + 0.6C`` and ``0.8A -> 0.9C`` instead of
    ``2A -> B`` and ``A -> C``). On Ji & Deng's benchmark about half the restarts end
    there; their collocation loss is clearly higher (0.00094 against 0.00062 for the true
    mechanism, mean squared, 10 experiments), while their trajectory losses differ by only
    a few percent, so the collocation loss is the better judge.

    Parameters
    ----------
    model : the starting CRNN (restart 0 starts here).
    data : :class:`Experiments`.
    steps : AdamW steps per restart.
    restarts : number of starting points; restart ``r > 0`` starts with stoichiometric
        coefficients (and free orders) redrawn as ``restart_scale * N(0, 1)``.
    learning_rate, weight_decay, max_grad_norm, loss : as in :func:`fit`.
    l1 : sparsity penalty ``l1 * sum |nu|`` (see :func:`fit`).
    smoothing : ``"spline"`` or ``"kernel"`` (see :func:`bayes_ude.ude.smooth`).
    key : PRNG key of the restarts (default ``jax.random.key(0)``).

    Returns
    -------
    :class:`bayes_ude.ude.FitResult` of the best restart (``history``: its collocation
    loss after every step; ``stages``: ``(f"restart {r}", final collocation loss)`` of
    all).
    """
    import time

    from tqdm.auto import tqdm

    from ..ude import smooth

    check_model_data(model, data)
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate!r}")
    for name, value in (("steps", steps), ("restarts", restarts)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    # Cosine decay of the learning rate to 1 % of its start: the final losses of the
    # restarts are then those of converged weights, not of Adam's last jitter, and can be
    # compared.
    schedule = optax.cosine_decay_schedule(learning_rate, steps, alpha=0.01)
    optimizer = _optimizer(schedule, weight_decay, max_grad_norm)
    start = time.perf_counter()
    c_hat, _ = smooth(np.asarray(data.ts), np.asarray(data.ys), method=smoothing)
    # Smoothing can undershoot a species that starts at zero; concentrations are >= 0.
    if not l1 >= 0:
        raise ValueError(f"l1 must be >= 0, got {l1!r}")
    objective = CollocationLoss(data, jnp.asarray(np.maximum(c_hat, 0.0)), loss, float(l1))
    arrays, static = eqx.partition(model, eqx.is_inexact_array)
    key = jax.random.key(0) if key is None else key

    def initial(k, r):
        k_nu, k_order = jax.random.split(k)
        fresh = restart_scale * jax.random.normal(k_nu, arrays.stoichiometry.shape)
        a = eqx.tree_at(lambda m: m.stoichiometry, arrays,
                        jnp.where(r == 0, arrays.stoichiometry, fresh))
        if arrays.free_orders is not None:
            fresh = 0.5 + restart_scale * jax.random.normal(k_order, arrays.free_orders.shape)
            a = eqx.tree_at(lambda m: m.free_orders, a,
                            jnp.where(r == 0, arrays.free_orders, fresh))
        return a

    batch = jax.vmap(initial)(jax.random.split(key, restarts), jnp.arange(restarts))
    states = jax.vmap(optimizer.init)(batch)

    @eqx.filter_jit
    def chunk(batch, states, n_steps):
        def one(carry, _):
            a, s = carry
            value, grad = jax.value_and_grad(lambda x: objective(eqx.combine(x, static)))(a)
            updates, s = optimizer.update(grad, s, a)
            return (optax.apply_updates(a, updates), s), value

        def per_restart(a, s):
            (a, s), values = jax.lax.scan(one, (a, s), None, length=n_steps)
            return a, s, values

        return jax.vmap(per_restart)(batch, states)

    histories = []
    chunk_size = 500  # steps per compiled call: progress-bar granularity
    bar = tqdm(total=steps, desc="CRNN collocation", disable=not progress, leave=False)
    try:
        done = 0
        while done < steps:
            n = min(chunk_size, steps - done)
            batch, states, values = chunk(batch, states, n)
            histories.append(np.asarray(values))
            done += n
            bar.update(n)
    finally:
        bar.close()
    final = np.asarray(eqx.filter_jit(jax.vmap(
        lambda a: objective(eqx.combine(a, static))))(batch))
    final = np.where(np.isfinite(final), final, np.inf)
    models = [eqx.combine(jax.tree.map(lambda x, r=r: x[r], batch), static)
              for r in range(restarts)]
    best = int(np.argmin(final))
    result = FitResult(params=models[best], history=np.concatenate(histories, axis=1)[best],
                       adam_steps=steps, lbfgs_steps=0, stopped_early=False,
                       seconds=time.perf_counter() - start,
                       stages=[(f"restart {r}", float(v)) for r, v in enumerate(final)])
    result.restarts = models  # every restart's weights, for discover()
    return result


def validation_error(model: CRNN, data: Experiments, scale: ArrayLike | None = None,
                     options: solvers.SolveOptions = DEFAULT_SOLVE) -> dict[str, float]:
    """Errors of ``model`` on (held-out) experiments: ``{"mae": ..., "rmse": ...}`` of the
    concentrations divided by ``scale`` (default the data's own), and ``"relative"``: the
    root mean squared error over the root mean square of the data."""
    check_model_data(model, data)
    scale = data.scale if scale is None else jnp.asarray(scale)
    sol = simulate(model, data.ts, data.u0, data.temperature, options=options)
    resid = (sol.ys - data.ys) / scale
    return {"mae": float(jnp.mean(jnp.abs(resid))),
            "rmse": float(jnp.sqrt(jnp.mean(resid**2))),
            "relative": float(jnp.sqrt(jnp.mean((sol.ys - data.ys) ** 2))
                              / jnp.sqrt(jnp.mean(data.ys**2)))}
