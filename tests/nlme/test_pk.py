"""Structural PK models against independent references: scipy's ODE solver at tight
tolerances, explicit superposition, and the package's own ODE path (closed form and ODE
must agree to 1e-8)."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from scipy.integrate import solve_ivp

from bayes_ude import nlme, solvers


def _table(doses, times, cmt_obs=2):
    """A one-subject NONMEM table: ``doses`` = [(time, amt, cmt, rate, ss, ii)]."""
    rows = [dict(ID=1, TIME=t, DV=".", AMT=a, EVID=1, CMT=c, RATE=r, SS=ss, II=ii)
            for t, a, c, r, ss, ii in doses]
    rows += [dict(ID=1, TIME=t, DV=1.0, AMT=".", EVID=0, CMT=cmt_obs, RATE=0, SS=0, II=0)
             for t in times]
    df = pd.DataFrame(rows).sort_values("TIME", kind="stable")
    return nlme.read_nonmem(df)


def _scipy(rhs, n, doses, times, f=1.0, tlag=0.0, dosing=0):
    """Amounts at ``times`` by scipy's Radau at rtol 1e-12, restarting at each dose
    (bolus: a jump; infusion: a rate switched on and off)."""
    events = sorted({0.0, *[t + (tlag if c - 1 == dosing else 0.0) for t, _, c, r, _, _ in
                            doses], *[t + (tlag if c - 1 == dosing else 0.0) + a * f / r
                                      for t, a, c, r, _, _ in doses if r > 0]})
    events = [e for e in events if e < times[-1]] + [times[-1]]
    u = np.zeros(n)
    out = {}
    for lo, hi in zip(events[:-1], events[1:], strict=True):
        rate = np.zeros(n)
        for t, a, c, r, _, _ in doses:
            lag = tlag if c - 1 == dosing else 0.0
            fa = f if c - 1 == dosing else 1.0
            if r == 0 and np.isclose(t + lag, lo):
                u[c - 1] += fa * a
            if r > 0 and t + lag <= lo < t + lag + fa * a / r - 1e-12:
                rate[c - 1] += r
        inside = [t for t in times if lo <= t <= hi]
        sol = solve_ivp(lambda t, y: rhs(y) + rate, (lo, hi), u, method="Radau", rtol=1e-12,
                        atol=1e-14, t_eval=inside, dense_output=True)
        for t in inside:
            if t not in out:  # a time at a dose sees the state before it
                out[t] = sol.sol(t)
        u = sol.sol(hi).copy()
    return np.array([out[t] for t in times])


def _subject(pop):
    return jax.tree.map(lambda x: x[0], pop)


TIMES = np.array([0.0, 0.25, 0.5, 1.0, 2.0, 3.5, 5.0, 8.0, 12.0, 12.5, 16.0, 24.0, 30.0])


def test_one_compartment_oral_two_doses_lag_bioavailability_vs_scipy():
    ka, cl, v, f, tlag = 1.3, 2.1, 30.0, 0.8, 0.4
    doses = [(0.0, 320.0, 1, 0.0, 0, 0.0), (12.0, 160.0, 1, 0.0, 0, 0.0)]
    pop = _table(doses, TIMES)
    conc = nlme.OneCompartmentOral().predict(dict(ka=ka, cl=cl, v=v, f=f, tlag=tlag),
                                              _subject(pop))
    k = cl / v
    ref = _scipy(lambda a: np.array([-ka * a[0], ka * a[0] - k * a[1]]), 2, doses, TIMES,
                 f=f, tlag=tlag)[:, 1] / v
    np.testing.assert_allclose(np.asarray(conc), ref, rtol=1e-8, atol=1e-12)


def test_two_compartment_models_vs_scipy():
    p = dict(ka=0.9, cl=3.0, v=20.0, q=1.5, vp=45.0)
    k, k12, k21 = p["cl"] / p["v"], p["q"] / p["v"], p["q"] / p["vp"]
    # oral: depot, central, peripheral; a dose into the central compartment too
    doses = [(0.0, 500.0, 1, 0.0, 0, 0.0), (6.0, 100.0, 2, 0.0, 0, 0.0)]
    conc = nlme.TwoCompartmentOral().predict(p, _subject(_table(doses, TIMES)))
    ref = _scipy(lambda a: np.array([-p["ka"] * a[0],
                                     p["ka"] * a[0] - (k + k12) * a[1] + k21 * a[2],
                                     k12 * a[1] - k21 * a[2]]), 3, doses, TIMES)[:, 1] / p["v"]
    np.testing.assert_allclose(np.asarray(conc), ref, rtol=1e-8, atol=1e-12)
    # IV: a 2-hour infusion and a bolus
    doses = [(0.0, 400.0, 1, 200.0, 0, 0.0), (8.0, 100.0, 1, 0.0, 0, 0.0)]
    conc = nlme.TwoCompartmentIV().predict(p, _subject(_table(doses, TIMES, cmt_obs=1)))
    ref = _scipy(lambda a: np.array([-(k + k12) * a[0] + k21 * a[1], k12 * a[0] - k21 * a[1]]),
                 2, doses, TIMES)[:, 0] / p["v"]
    np.testing.assert_allclose(np.asarray(conc), ref, rtol=1e-8, atol=1e-12)


def test_one_compartment_iv_infusion_closed_form():
    cl, v, rate, dur = 2.0, 10.0, 50.0, 3.0
    pop = _table([(1.0, rate * dur, 1, rate, 0, 0.0)], TIMES, cmt_obs=1)
    conc = np.asarray(nlme.OneCompartmentIV().predict(dict(cl=cl, v=v), _subject(pop)))
    k = cl / v
    tau = TIMES - 1.0
    during = rate / cl * (1 - np.exp(-k * np.clip(tau, 0, None)))
    after = rate / cl * (1 - np.exp(-k * dur)) * np.exp(-k * (tau - dur))
    ref = np.where(tau <= 0, 0.0, np.where(tau < dur, during, after))
    np.testing.assert_allclose(conc, ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("rate", [0.0, 100.0, 10.0])
def test_steady_state_dose_equals_many_explicit_doses(rate):
    """SS=1 (every 12 h) against 200 explicit earlier doses (the slowest exponential has
    decayed by e^-40 over them): the geometric series. Oral with a lag time; infusions of
    2 h and of 20 h (longer than II: they overlap). At the SS dose's own time, and before
    the lagged dose arrives, an observation sees the steady state's trough."""
    p = dict(ka=1.1, cl=2.0, v=25.0, q=1.0, vp=30.0)
    if rate == 0:
        model, p = nlme.TwoCompartmentOral(), p | {"tlag": 0.3}
    else:
        model = nlme.TwoCompartmentIV()
    cmt = 1
    obs = np.array([0.0, 0.2, 0.5, 1.0, 3.0, 6.0, 11.9, 14.0, 20.0, 25.0])
    ss = _table([(0.0, 200.0, cmt, rate, 1, 12.0)], obs, cmt_obs=2)
    many = _table([(-12.0 * n, 200.0, cmt, rate, 0, 0.0) for n in range(200, -1, -1)], obs,
                  cmt_obs=2)
    explicit = np.asarray(model.predict(p, _subject(many)))
    assert explicit[0] > 0.1  # the trough
    np.testing.assert_allclose(np.asarray(model.predict(p, _subject(ss))), explicit,
                               rtol=1e-9)


def test_steady_state_constant_infusion_is_rate_over_clearance():
    """AMT 0, RATE 10, SS 1, II 0: a constant infusion at steady state, C = RATE / CL from
    the record on (2-compartment: the peripheral compartment is at equilibrium)."""
    p = dict(cl=2.0, v=25.0, q=1.0, vp=30.0)
    obs = np.array([0.0, 1.0, 30.0])
    pop = _table([(0.0, 0.0, 1, 10.0, 1, 0.0)], obs, cmt_obs=1)
    conc = np.asarray(nlme.TwoCompartmentIV().predict(p, _subject(pop)))
    np.testing.assert_allclose(conc, 10.0 / p["cl"], rtol=1e-12)


def test_ode_model_refuses_steady_state_and_resets():
    """An ODE model solves forward from the first record: it cannot stand for an SS dose's
    predecessors or forget doses at a reset, and used to leave both out without a word
    (SS=1 every 12 h gave the single dose's curve)."""
    ode = nlme.ODEModel(lambda t, a, p: -p["cl"] / p["v"] * a, 1, lambda a, p: a[0] / p["v"])
    ss = _table([(0.0, 100.0, 1, 0.0, 1, 12.0)], [1.0, 5.0], cmt_obs=1)
    with pytest.raises(ValueError, match=r"ODEModel supports bolus doses and infusions only.*"
                                         r"steady-state doses \(SS = 1\)"):
        ode.check_population(ss)
    reset = nlme.read_nonmem(pd.DataFrame([
        dict(ID=1, TIME=0.0, DV=".", AMT=100.0, EVID=1),
        dict(ID=1, TIME=10.0, DV=".", AMT=50.0, EVID=4),
        dict(ID=1, TIME=13.0, DV=1.0, AMT=".", EVID=0)]))
    with pytest.raises(ValueError, match=r"resets \(EVID 3/4\)"):
        ode.check_population(reset)
    ode.check_population(_table([(0.0, 100.0, 1, 50.0, 0, 0.0)], [1.0, 5.0], cmt_obs=1))


def test_reset_forgets_earlier_doses():
    p = dict(ka=1.0, cl=2.0, v=20.0)
    df = pd.DataFrame([
        dict(ID=1, TIME=0.0, DV=".", AMT=100.0, EVID=1, CMT=1),
        dict(ID=1, TIME=2.0, DV=1.0, AMT=".", EVID=0, CMT=2),
        dict(ID=1, TIME=10.0, DV=".", AMT=50.0, EVID=4, CMT=1),
        dict(ID=1, TIME=13.0, DV=1.0, AMT=".", EVID=0, CMT=2),
    ])
    only_second = pd.DataFrame([
        dict(ID=1, TIME=10.0, DV=".", AMT=50.0, EVID=1, CMT=1),
        dict(ID=1, TIME=13.0, DV=1.0, AMT=".", EVID=0, CMT=2),
    ])
    both = np.asarray(nlme.OneCompartmentOral().predict(p, _subject(nlme.read_nonmem(df))))
    ref = np.asarray(nlme.OneCompartmentOral().predict(p, _subject(
        nlme.read_nonmem(only_second))))
    assert both[1] == pytest.approx(ref[0], rel=1e-12)
    assert both[0] > 0


def test_ode_model_matches_closed_form_for_a_population():
    """The ODE path (doses as events, vmapped over subjects) against the closed form."""
    rows = []
    rng = np.random.default_rng(0)
    for i in range(1, 5):
        rows.append(dict(ID=i, TIME=0.0, DV=".", AMT=100.0 * i, EVID=1, CMT=1, RATE=0, DVID=1))
        rows.append(dict(ID=i, TIME=0.0, DV=0.0, AMT=".", EVID=0, CMT=2, RATE=0, DVID=1))
        for t in np.sort(rng.uniform(0.1, 24, 5 + i)):
            rows.append(dict(ID=i, TIME=t, DV=1.0, AMT=".", EVID=0, CMT=2, RATE=0, DVID=1))
        rows.append(dict(ID=i, TIME=24.0, DV=".", AMT=60.0, EVID=1, CMT=2, RATE=30.0, DVID=1))
        rows.append(dict(ID=i, TIME=30.0, DV=1.0, AMT=".", EVID=0, CMT=2, RATE=0, DVID=1))
    pop = nlme.read_nonmem(pd.DataFrame(rows))
    params = dict(ka=jnp.array([0.7, 1.0, 1.5, 2.0]), cl=jnp.array([1.0, 2.0, 3.0, 4.0]),
                  v=jnp.array([10.0, 20.0, 15.0, 30.0]), q=jnp.full(4, 2.0),
                  vp=jnp.full(4, 40.0))

    def field(t, a, p):
        k, k12, k21 = p["cl"] / p["v"], p["q"] / p["v"], p["q"] / p["vp"]
        return jnp.stack([-p["ka"] * a[0], p["ka"] * a[0] - (k + k12) * a[1] + k21 * a[2],
                          k12 * a[1] - k21 * a[2]])

    ode = nlme.ODEModel(field, 3, observe=lambda a, p: a[1] / p["v"], solver=solvers.Tsit5(),
                        rtol=1e-12, atol=1e-12)
    closed = nlme.TwoCompartmentOral()
    a = jax.vmap(ode.predict)(params, pop)
    b = jax.vmap(closed.predict)(params, pop)
    mask = np.asarray(pop.obs_mask)
    np.testing.assert_allclose(np.asarray(a)[mask], np.asarray(b)[mask], rtol=1e-8,
                               atol=1e-10)


def test_ode_model_several_observation_types_at_one_time():
    """Two observation types at the same times (warfarin-style PK and PD)."""
    df = pd.DataFrame([
        dict(ID=1, TIME=0.0, DV=".", AMT=10.0, EVID=1, CMT=1, DVID=1),
        dict(ID=1, TIME=1.0, DV=1.0, AMT=".", EVID=0, CMT=1, DVID=1),
        dict(ID=1, TIME=1.0, DV=1.0, AMT=".", EVID=0, CMT=1, DVID=2),
        dict(ID=1, TIME=3.0, DV=1.0, AMT=".", EVID=0, CMT=1, DVID=2),
        dict(ID=1, TIME=3.0, DV=1.0, AMT=".", EVID=0, CMT=1, DVID=1),
    ])
    pop = nlme.read_nonmem(df)
    ode = nlme.ODEModel(lambda t, a, p: -p["k"] * a, 1,
                        observe={1: lambda a, p: a[0], 2: lambda a, p: 2.0 * a[0]},
                        rtol=1e-12, atol=1e-12)
    out = np.asarray(ode.predict({"k": 0.5}, _subject(pop)))
    ref = 10.0 * np.exp(-0.5 * np.array([1.0, 1.0, 3.0, 3.0])) * np.array([1, 2, 2, 1])
    np.testing.assert_allclose(out, ref, rtol=1e-9)


def test_close_rates_stay_finite():
    """ka equal to k makes the textbook formula 0/0; the model stays accurate."""
    pop = _table([(0.0, 100.0, 1, 0.0, 0, 0.0)], TIMES[1:])
    conc = np.asarray(nlme.OneCompartmentOral().predict(dict(ka=0.1, cl=2.0, v=20.0),
                                                        _subject(pop)))
    ref = 100.0 / 20.0 * 0.1 * TIMES[1:] * np.exp(-0.1 * TIMES[1:])  # the ka = k limit
    np.testing.assert_allclose(conc, ref, rtol=1e-5)
