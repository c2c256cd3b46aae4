# %% [markdown]
# # Shadowing: derivatives of long-time averages of a chaotic system
#
# Lorenz 63 (σ = 10, β = 8/3): the long-time average ⟨z⟩ depends smoothly on ρ
# (d⟨z⟩/dρ ≈ 1.01 at ρ = 28), but the derivative of one trajectory's average -- what
# forward, reverse or adjoint sensitivities compute -- grows like e^{λT} with the leading
# Lyapunov exponent λ ≈ 0.9. `solvers.shadowing` (LSS and NILSS) differentiates along the
# shadow trajectory instead. See docs/shadowing.md.
#
# `BAYES_UDE_NOTEBOOK_TINY=1` runs a tiny version (as the test suite does).

# %%
import os
import warnings

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from bayes_ude import solvers

jax.config.update("jax_enable_x64", True)
TINY = os.environ.get("BAYES_UDE_NOTEBOOK_TINY") == "1"
WINDOW = 20.0 if TINY else 100.0  # averaging window (time units)
U0 = jnp.array([1.0, 1.0, 28.0])


def lorenz(t, u, p):
    x, y, z = u
    return jnp.stack([10.0 * (y - x), x * (p["rho"] - z) - y, x * y - 8.0 / 3.0 * z])


def mean_z(u, p):
    return u[2]


if TINY:  # a window of 20 time units is under 20 Lyapunov times: that warning is expected
    warnings.filterwarnings("ignore", message="shadowing: the window")

# %% [markdown]
# ## One derivative, two methods

# %%
for method in ("lss", "nilss"):
    res = solvers.shadowing(lorenz, U0, {"rho": jnp.asarray(28.0)}, mean_z, (0.0, WINDOW),
                            method=method, spinup=20.0)
    print(f"{method:>5}: d<z>/d rho = {float(res.gradient['rho']):.4f}, <z> = "
          f"{float(res.average):.3f}, Lyapunov exponents {np.round(res.lyapunov, 3)}")

# %% [markdown]
# ## d⟨z⟩/dρ over ρ ∈ [25, 35], and what ordinary sensitivities give
#
# The ordinary derivative is reverse-mode (`jax.grad`) through the same RK4 window. The
# finite-difference points are central differences (ρ ± 1) of ensemble averages.

# %%
rhos = np.linspace(25.0, 35.0, 3 if TINY else 11)


@jax.jit
def nilss(rho):
    return solvers.shadowing_gradient(lorenz, U0, {"rho": rho}, mean_z, (0.0, WINDOW),
                                      spinup=20.0)["rho"]


def rk4(u, rho, dt=0.01):
    f = lambda v: lorenz(0.0, v, {"rho": rho})  # noqa: E731
    k1 = f(u)
    k2 = f(u + 0.5 * dt * k1)
    k3 = f(u + 0.5 * dt * k2)
    k4 = f(u + dt * k3)
    return u + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)


def window_mean(rho, u0=U0, window=WINDOW, spinup=20.0, dt=0.01):
    u = jax.lax.fori_loop(0, int(spinup / dt), lambda _, v: rk4(v, rho), u0)
    zs = jax.lax.scan(lambda v, _: (rk4(v, rho), v[2]), u, None, length=int(window / dt))[1]
    return jnp.mean(zs)


ordinary = jax.jit(jax.grad(window_mean))
starts = U0 + jax.random.normal(jax.random.key(0), (8 if TINY else 64, 3))
ensemble = jax.jit(jax.vmap(window_mean, (None, 0)))

shadow = np.array([float(nilss(jnp.asarray(r))) for r in rhos])
plain = np.array([float(ordinary(jnp.asarray(r))) for r in rhos])
fd = np.array([float(jnp.mean(ensemble(r + 1.0, starts) - ensemble(r - 1.0, starts))) / 2
               for r in rhos])

fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(rhos, shadow, "o-", label="NILSS (shadowing)")
ax.plot(rhos, fd, "s", mfc="none", label="finite differences of ensemble averages")
ax.plot(rhos, np.abs(plain), "x:", label="|ordinary reverse-mode sensitivity|")
ax.set_yscale("log")
ax.set_xlabel("ρ")
ax.set_ylabel("d⟨z⟩/dρ")
ax.set_title(f"Lorenz 63, window T = {WINDOW:g}")
ax.legend()
fig.tight_layout()
print(np.c_[rhos, shadow, fd, plain].round(3))

# %% [markdown]
# ## Fitting ρ to an observed long-time mean
#
# The data: the long-time means of z and z²/30 at ρ = 28. Gauss-Newton steps with the
# shadowing Jacobian, from ρ = 24.

# %%
stats = lambda u, p: jnp.stack([u[2], u[2] ** 2 / 30.0])  # noqa: E731
observed = solvers.shadowing(lorenz, U0, {"rho": jnp.asarray(28.0)}, stats,
                             (0.0, 2 * WINDOW), spinup=20.0).average


@jax.jit
def gauss_newton(rho):
    res = solvers.shadowing(lorenz, U0, {"rho": rho}, stats, (0.0, WINDOW), spinup=20.0,
                            key=jax.random.key(1))
    jac = res.gradient["rho"]
    return rho - jnp.dot(jac, res.average - observed) / jnp.dot(jac, jac)


rho = jnp.asarray(24.0)
for it in range(4):
    rho = gauss_newton(rho)
    print(f"step {it + 1}: rho = {float(rho):.3f}")
