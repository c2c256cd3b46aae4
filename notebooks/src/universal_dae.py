# %% [markdown]
# # A universal DAE: Robertson kinetics with a conservation law kept exactly
#
# Robertson's stiff kinetics, written as a DAE with the mass matrix $M = \mathrm{diag}(1, 1, 0)$:
#
# $$y_1' = -0.04\,y_1 + 10^4\,y_2 y_3,\qquad y_2' = 0.04\,y_1 - 3\cdot10^7\,y_2^2 - 10^4\,y_2 y_3,
# \qquad 0 = y_1 + y_2 + y_3 - 1.$$
#
# We forget the $k_3 y_2 y_3$ terms and let a network fill them in, while the conservation law
# stays an algebraic row: the Rosenbrock solver keeps it to round-off whatever the network
# does. Then: held-out initial conditions, the constraint, and SINDy on the network term.
#
# Set `BAYES_UDE_NOTEBOOK_TINY=1` to run with tiny iteration counts (as the test suite does).

# %%
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from scipy.integrate import solve_ivp

from bayes_ude import discovery, nn, pde, ude

jax.config.update("jax_enable_x64", True)
TINY = os.environ.get("BAYES_UDE_NOTEBOOK_TINY") == "1"
K1, K2, K3 = 0.04, 3e7, 1e4
MASS = np.diag([1.0, 1.0, 0.0])

# %% [markdown]
# ## Data: three initial conditions, 40 log-spaced times in [1e-5, 1e5]
#
# The dynamics span ten decades of time, and $y_2$ never exceeds $4\cdot10^{-5}$: the data are
# log-spaced, and the loss scales each species by its largest value (`pde.MassMatrixShooting`'s
# default), so that $y_2$ weighs as much as $y_1$.

# %%
ts = np.geomspace(1e-5, 1e5, 40)


def radau(u0):
    def rhs(t, y):
        return [-K1 * y[0] + K3 * y[1] * y[2], K1 * y[0] - K2 * y[1] ** 2 - K3 * y[1] * y[2],
                K2 * y[1] ** 2]

    return solve_ivp(rhs, (0.0, ts[-1]), u0, t_eval=ts, method="Radau", rtol=1e-12,
                     atol=1e-16).y.T


train_u0 = np.array([[1.0, 0.0, 0.0], [0.6, 0.0, 0.4], [0.3, 0.0, 0.7]])
test_u0 = np.array([[0.8, 0.0, 0.2], [0.45, 0.0, 0.55]])
ys = np.stack([radau(u) for u in train_u0])
ys_test = np.stack([radau(u) for u in test_u0])

fig, axes = plt.subplots(1, 3, figsize=(11, 3))
for b in range(len(train_u0)):
    for s in range(3):
        axes[s].semilogx(ts, ys[b, :, s], "o", ms=3, color=f"C{b}")
for s, ax in enumerate(axes):
    ax.set(xlabel="t", title=f"y{s + 1}")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## The model
#
# The network sees $(y_1, 10^4 y_2, y_3)$ (all of order one) and its term is multiplied by
# $y_{2s} = 10^4 y_2$: a kinetic term in $y_2'$ must vanish when $y_2$ is absent. This is the
# one piece of structure we give it, and it is needed: with an unstructured network, any output
# with $\mathrm{NN}_2 < -0.04\,y_1$ at $y_2 = 0$ pushes $y_2$ below zero, where
# $-3\cdot10^7 y_2^2$ runs away in finite time — the first Adam step did exactly that and every
# later solve failed. The network's last layer starts at zero, so training starts from the
# model without the $k_3$ terms.

# %%
Y2_SCALE = 1e4


class RobertsonUDAE(eqx.Module):
    net: nn.MLP

    def network_term(self, y):
        y2s = Y2_SCALE * y[1]
        return y2s * self.net(jnp.stack([y[0], y2s, y[2]]))

    def __call__(self, t, y, args=None):
        learned = self.network_term(y)
        return jnp.stack([-K1 * y[0] + learned[0],
                          K1 * y[0] - K2 * y[1] ** 2 + learned[1],
                          y[0] + y[1] + y[2] - 1.0])          # algebraic: kept exactly


model0 = RobertsonUDAE(nn.MLP(3, 2, (8, 8), "tanh", key=jax.random.key(0), init="zero_last"))
loss = pde.MassMatrixShooting(ts, ys, MASS, u0=train_u0, t0=0.0, rtol=1e-6, atol=1e-10)
print("species scales:", np.asarray(loss.scale), " initial loss:", float(loss(model0)))

# %% [markdown]
# ## Training
#
# Rodas5P (a Rosenbrock method: one Jacobian and LU per step, no Newton iterations) with
# reverse-mode gradients through its steps, Adam then L-BFGS.

# %%
result = ude.fit(loss, model0, steps=10 if TINY else 300, learning_rate=1e-2,
                 lbfgs_steps=0 if TINY else 100)
model = result.params
print(f"final loss {result.final_loss:.3g} ({result.seconds:.0f} s)")

# %% [markdown]
# ## Held-out initial conditions and the constraint

# %%
test_loss = pde.MassMatrixShooting(ts, ys_test, MASS, u0=test_u0, t0=0.0, rtol=1e-6,
                                   atol=1e-10)
pred, ok = test_loss.predict(model)
pred0 = np.asarray(test_loss.predict(model0)[0])
pred = np.asarray(pred)
relative = np.abs(pred - ys_test).max(axis=(0, 1)) / np.abs(ys_test).max(axis=(0, 1))
print("held-out trajectories solved:", bool(ok.all()))
print("largest error relative to each species' range:", np.round(relative, 4))
print(f"constraint |y1 + y2 + y3 - 1| along every trajectory: "
      f"{np.max(np.abs(pred.sum(-1) - 1.0)):.1e}")

fig, axes = plt.subplots(1, 3, figsize=(11, 3))
for b in range(len(test_u0)):
    for s in range(3):
        axes[s].semilogx(ts, ys_test[b, :, s], "o", ms=3, color=f"C{b}")
        axes[s].semilogx(ts, pred[b, :, s], "-", color=f"C{b}")
        axes[s].semilogx(ts, pred0[b, :, s], ":", color=f"C{b}")
for s, ax in enumerate(axes):
    ax.set(xlabel="t", title=f"y{s + 1}: held out (dots), UDAE (lines), no k3 (dotted)")
    ax.title.set_fontsize(8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## SINDy on the network term
#
# Features $(y_{2s}, y_3)$ — $y_1 = 1 - y_2 - y_3$ is redundant, and with it a quadratic
# library is collinear. The truth is $+1\cdot y_{2s} y_3$ in $y_1'$ and $-1\cdot y_{2s} y_3$ in
# $y_2'$ (that is, $\pm 10^4\, y_2 y_3$). The ridge strength is small (1e-3 rather than the
# default 0.05): the columns are small ($y_{2s} \le 0.4$), and a ridge of 0.05 shrinks their
# coefficients below the threshold.

# %%
states = ys.reshape(-1, 3)
term = np.asarray(jax.vmap(model.network_term)(jnp.asarray(states)))
features = np.stack([Y2_SCALE * states[:, 1], states[:, 2]], axis=1)
sindy_fit = discovery.sindy(features, term, discovery.PolynomialLibrary(2), threshold=0.1,
                           alpha=1e-3, feature_names=["y2s", "y3"], target_names=["NN1", "NN2"])
for equation in sindy_fit.equations():
    print(equation)
j = sindy_fit.term_names.index("y2s*y3")
print("k3 from SINDy:", np.asarray(sindy_fit.coefficients)[:, j] * Y2_SCALE, "(truth ±1e4)")
