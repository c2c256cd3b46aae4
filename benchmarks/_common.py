"""Shared timing helpers for the benchmarks (not part of the package).

Timings on a shared 2-core machine are noisy (factor-2 swings between runs), so ours and
the peer are timed *interleaved*, round by round, and the best round of each is reported.
"""

from __future__ import annotations

import time

import jax


def compile_time(fn, *args) -> float:
    """Seconds for the first call (tracing + compilation + one run)."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def warm_up_diffrax() -> None:
    """Compile one small, unrelated diffrax solve and its gradient. The first program a
    process compiles pays JAX's and diffrax's one-time costs (~1 s on the 2-core machine),
    which would otherwise land on whichever of ours and the peer is compiled first: in
    benchmarks/ude.py ours, compiled first, took 4.1 s against 2.6 s; compiled second,
    2.6 s against the peer's 3.6 s. Call this before timing either."""
    import diffrax as dfx
    import jax.numpy as jnp

    def loss(k):
        sol = dfx.diffeqsolve(dfx.ODETerm(lambda t, u, k: -k * u), dfx.Tsit5(), 0.0, 1.0,
                              None, jnp.ones(3), args=k,
                              saveat=dfx.SaveAt(ts=jnp.linspace(0, 1, 5)),
                              stepsize_controller=dfx.PIDController(rtol=1e-6, atol=1e-8))
        return jnp.sum(sol.ys)

    jax.block_until_ready(jax.jit(jax.value_and_grad(loss))(1.0))


def _one_round(fn, args, number):
    start = time.perf_counter()
    for _ in range(number):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / number


def compare(fns, *args, rounds: int = 40, number: int | list[int] = 5) -> list[float]:
    """Best seconds per call of each (already compiled) function, timed interleaved.
    ``number``: calls per round, one for all or one per function (a function 100x faster
    than its peer needs more calls a round to be timed above the clock's noise)."""
    numbers = [number] * len(fns) if isinstance(number, int) else list(number)
    for fn in fns:
        jax.block_until_ready(fn(*args))
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            best[i] = min(best[i], _one_round(fn, args, numbers[i]))
    return best


def paired_ratio(ours, peer, *args, seconds: float = 10.0, number: int = 10,
                 seed: int = 0) -> tuple[float, float, float]:
    """The run-time ratio ours / peer as the median over rounds of back-to-back pairs
    (order alternating), with a bootstrap 95 % interval: ``(median, low, high)``. The
    machine's speed drifts by 10-30 % between seconds, but two timings taken back to back
    share it, so their ratio is steady. Benchmarks/ude.py, 400 pairs: 1.051
    (1.047-1.055), and 1.052 (1.048-1.055) in a second process, where the best rounds
    of :func:`compare` moved between 0.98x and 1.07x. Runs pairs for ``seconds``
    (at least 30 pairs)."""
    import numpy as np

    for fn in (ours, peer):
        jax.block_until_ready(fn(*args))
    ratios: list[float] = []
    start = time.perf_counter()
    while len(ratios) < 30 or time.perf_counter() - start < seconds:
        if len(ratios) % 2:
            a = _one_round(ours, args, number)
            b = _one_round(peer, args, number)
        else:
            b = _one_round(peer, args, number)
            a = _one_round(ours, args, number)
        ratios.append(a / b)
    r = np.asarray(ratios)
    boot = np.median(np.random.default_rng(seed).choice(r, (2000, r.size)), axis=1)
    return float(np.median(r)), float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))


def report_paired(name: str, ratio: tuple[float, float, float], peer_name: str) -> None:
    """One line for :func:`paired_ratio`'s result."""
    mid, low, high = ratio
    print(f"{name:<28}paired ratio {mid:.3f}x (95 % interval {low:.3f}-{high:.3f})  "
          f"peer: {peer_name}")


def like_for_like(loss, ours, hand_closed, hand_args, *args, number: int = 10) -> None:
    """Print :func:`paired_ratio` twice, like for like: ``loss``'s value and gradient with
    the loss module closed over (XLA sees its data as constants) against ``hand_closed``,
    which closes over its data too; and ``ours`` (the module passed to ``eqx.filter_jit``,
    its data as arguments) against ``hand_args``, which passes its data as arguments."""
    import equinox as eqx

    value_and_grad = eqx.filter_value_and_grad(loss)
    ours_closed = eqx.filter_jit(lambda m: value_and_grad(m))
    print("paired, like for like:")
    report_paired("  data closed over",
                  paired_ratio(ours_closed, hand_closed, *args, number=number),
                  "hand-written diffrax")
    report_paired("  data as arguments", paired_ratio(ours, hand_args, *args, number=number),
                  "hand-written diffrax")


def time_py(fn, *args, repeat: int = 10, number: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn(*args)
        best = min(best, (time.perf_counter() - start) / number)
    return best


def report(name: str, ours: float, peer: float, peer_name: str) -> None:
    """One line: name, ours, peer, ratio ours / peer (< 1 means we are faster) and, when we
    are faster, the speed-up peer / ours."""
    speedup = f" ({peer / ours:.1f}x faster)" if ours < peer else ""
    print(f"{name:<28}{ours * 1e6:>12.1f} us{peer * 1e6:>12.1f} us{ours / peer:>8.3f}x"
          f"{speedup}  peer: {peer_name}")


def report_compile(name: str, ours: float, peer: float, peer_name: str) -> None:
    """One line like :func:`report` for compile times (seconds of the first call)."""
    print(f"{name:<28}{ours:>12.2f} s {peer:>12.2f} s {ours / peer:>8.3f}x  peer: {peer_name}"
          " (compile)")
