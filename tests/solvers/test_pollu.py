"""POLLU (20 species, 25 reactions, t in [0, 60]) against scipy's Radau at rtol 1e-12."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from bayes_ude import solvers
from tests.solvers import pollu

TS = np.linspace(0.0, 60.0, 13)

# y1..y4 at t = 60 from the Bari test set's reference solution (RADAU5 in quadruple
# precision): a check that the problem is transcribed right.
PUBLISHED_Y60 = np.array([0.5646255480022769e-01, 0.1342484130422339,
                          0.4139734331099427e-08, 0.5523140207484359e-02])


@pytest.fixture(scope="module")
def reference():
    sol = solve_ivp(lambda t, y: pollu.rhs(t, y, pollu.RATES), (0.0, 60.0), pollu.Y0,
                    t_eval=TS, method="Radau", rtol=1e-12, atol=1e-16)
    np.testing.assert_allclose(sol.y[:4, -1], PUBLISHED_Y60, rtol=1e-8)
    return sol.y.T


@pytest.mark.parametrize("solver", [solvers.Rodas5P(), solvers.Auto()], ids=["Rodas5P", "Auto"])
def test_pollu_matches_radau(solver, reference):
    sol = solvers.solve(lambda t, y, k: pollu.rhs(t, y, k, jnp), jnp.asarray(pollu.Y0),
                        jnp.asarray(TS), jnp.asarray(pollu.RATES), solver=solver,
                        rtol=1e-8, atol=1e-12)
    assert bool(sol.success)
    # Each species relative to its own scale (they span 1e-9 .. 0.3).
    scale = np.max(np.abs(reference), axis=0)
    err = np.max(np.abs(np.asarray(sol.ys) - reference), axis=0) / scale
    assert np.all(err <= 1e-6), err
    assert int(sol.num_steps) < 300
