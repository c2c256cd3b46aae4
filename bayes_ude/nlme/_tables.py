"""Tables after a fit: the NONMEM-style ``sdtab`` and the comparison of several fits.

:func:`sdtab` puts the diagnostics of :mod:`._diagnostics` (PRED, IPRED, residuals, CWRES,
NPDE) and each subject's random effects on one row per observation, in the data's order,
as NONMEM's ``$TABLE ... FILE=sdtab`` does for Xpose and similar tools.

:func:`compare_fits` tabulates OFV, ΔOFV, AIC and BIC of maximum-likelihood fits of the
same data (:class:`FitResult` objects or the ``--out`` folders of ``bayes-ude pk fit``,
read from their ``summary.json``), and the likelihood-ratio test of each pair of nested
models: ``-2LL(reduced) - -2LL(full)`` against a chi-square with as many degrees of freedom
as the full model has more estimated parameters. Its survival function is computed here
from the regularised incomplete gamma function (half-integer shape), standard library only.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from . import _diagnostics
from ._results import FitResult

__all__ = ["FitComparison", "chi2_sf", "compare_fits", "sdtab"]


def sdtab(fit, n_sim: int = 1000, key=None, devices=None,
          diagnostics: pd.DataFrame | None = None) -> pd.DataFrame:
    """NONMEM-style ``sdtab``: one row per observation, in the data's row order, with
    ``ID, TIME, DV``, ``CMT`` (when the data have a ``CMT`` column), ``DVID`` (when there
    are several observation types), ``CENS`` (when some observations are below the limit
    of quantification: 1 there, where ``DV`` is the limit and the residuals are NaN;
    without it such a row read as an observation at the limit),
    ``PRED, IPRED, RES, WRES, IWRES, CWRES``, ``NPDE``
    (``n_sim`` simulations per subject; 0 leaves it out) and one column per random effect
    (``ETA_KA`` for ``eta_ka``: the name upper-cased, ``ETA_`` put in front where it does
    not start so), each subject's estimate repeated on its rows.

    ``fit``: a :class:`FitResult` (the EBEs; the columns are those of
    :meth:`FitResult.diagnostics`) or a NUTS :class:`BayesianFitResult` (posterior medians
    of the random effects, and the residuals at them and at the posterior centre ``u``).
    An SG-MCMC result has no random effects: ``TypeError``. ``diagnostics``: the table of
    :func:`bayes_ude.nlme.diagnostics` of this fit if already computed (then ``n_sim``,
    ``key`` and ``devices`` are not used).
    """
    eta = fit.eta
    if eta is None:
        raise TypeError(f"sdtab needs each subject's random effects; a {fit.method!r} fit "
                        "has none (a maximum-likelihood or NUTS fit has them)")
    if diagnostics is not None:
        diag = diagnostics
    elif isinstance(fit, FitResult):
        diag = fit.diagnostics(n_sim, key, devices)
    else:
        diag = _diagnostics.diagnostics(fit, n_sim, key, devices)
    pop = fit.population
    columns = ["ID", "TIME", "DV"]
    if pop.cmt_given:
        columns.append("CMT")
    if len(fit.model.error_models) > 1 or np.any(diag["DVID"].to_numpy() != 1):
        columns.append("DVID")
    if "CENS" in diag and np.any(diag["CENS"].to_numpy() == 1):
        columns.append("CENS")
    columns += ["PRED", "IPRED", "RES", "WRES", "IWRES", "CWRES"]
    columns += ["NPDE"] if "NPDE" in diag else []
    table = diag[columns].copy()
    # each row's subject, found by its ID (the rows of eta are the population's subjects):
    # placed by position, a diagnostics table the caller had sorted got other subjects' ETAs
    sub = pd.Index(list(pop.ids)).get_indexer(list(diag["ID"]))
    if np.any(sub < 0):
        missing = sorted({str(i) for i, k in zip(diag["ID"], sub, strict=True) if k < 0})
        raise ValueError(f"sdtab: diagnostics has IDs that are not this fit's subjects: "
                         f"{missing[:5]}")
    values = eta.to_numpy()[sub]
    for k, name in enumerate(eta.columns):
        upper = str(name).upper()
        table[upper if upper.startswith("ETA") else f"ETA_{upper}"] = values[:, k]
    order = np.argsort(diag["ROW"].to_numpy(), kind="stable")  # the data's row order
    return table.iloc[order].reset_index(drop=True)


# ---------------------------------------------------------------------------- comparison

def chi2_sf(x: float, df: int) -> float:
    """``P(X > x)`` for ``X`` chi-square with integer ``df`` degrees of freedom (the
    regularised upper incomplete gamma ``Q(df/2, x/2)`` by its finite series)."""
    if df < 1 or int(df) != df:
        raise ValueError(f"df must be a positive integer, got {df}")
    if not x > 0:
        return 1.0
    y = 0.5 * x
    if df % 2 == 0:  # Q(n, y) = exp(-y) sum_{j<n} y^j / j!
        return math.fsum(math.exp(j * math.log(y) - y - math.lgamma(j + 1))
                         for j in range(df // 2))
    # Q(n + 1/2, y) = erfc(sqrt y) + exp(-y) sum_{j<n} y^(j+1/2) / Gamma(j + 3/2)
    return math.erfc(math.sqrt(y)) + math.fsum(
        math.exp((j + 0.5) * math.log(y) - y - math.lgamma(j + 1.5))
        for j in range(df // 2))


@dataclasses.dataclass
class _Entry:
    name: str
    method: str
    minus2ll: float
    ofv: float
    aic: float
    bic: float
    n_obs: int
    n_subjects: int
    n_parameters: int
    parameters: frozenset
    converged: bool
    data: str | None = None  # the data path ``pk fit`` resolved (folders)
    observations: tuple | None = None  # the observed arrays (FitResult objects)
    # What is not estimated and must match for the parameter names to tell nesting
    # (_pairs): the structural model, allometric scaling and the covariate columns used
    # without a parameter of their own for fits; the model options for folders, with
    # their covariate terms (each of the reduced model's must be in the full one's).
    fixed: tuple = ()
    terms: frozenset | None = None
    held: dict = dataclasses.field(default_factory=dict)  # fixed parameters' values
    n_censored: int | None = None  # observations fitted as below the LLOQ (M3)


def _from_result(name: str, fit: FitResult) -> _Entry:
    pop = fit.population
    params = frozenset(n for n in fit.model.parameter_names() if n not in fit.fixed)
    unnamed = frozenset(c for c in fit.model.covariates
                        if not any(p.endswith(f"_{c}") or f"_{c}_" in p for p in params))
    data = observed(pop)
    return _Entry(name, fit.method, fit.minus2ll, fit.ofv, fit.aic, fit.bic, fit.n_obs,
                  pop.n_subjects, fit.n_parameters, params, bool(fit.converged),
                  observations=data,
                  fixed=("fit", type(fit.model.structural).__name__, unnamed,
                         getattr(fit.model.individual, "allometric", None)),
                  held={n: float(fit.estimates[n]) for n in fit.fixed},
                  n_censored=int(np.sum(data[3])))


def _from_folder(name: str, path: Path) -> _Entry:
    file = path / "summary.json" if path.is_dir() else path
    if not file.is_file():
        raise ValueError(f"compare_fits: {path} has no summary.json (not a folder written by "
                         "`bayes-ude pk fit --out`)")
    s = json.loads(file.read_text())
    if s.get("ofv") is None or "theta" not in s:
        raise ValueError(f"compare_fits: {path} holds a {s.get('method')!r} fit without an "
                         "objective function value (a Bayesian fit?); only maximum-likelihood "
                         "fits have one")
    params = set(s["theta"]) | {k if k.startswith("omega_") else f"omega_{k}"
                                for k in s["omega"]} | set(s["sigma"])
    options = s.get("options") or {}
    data = options.get("data") or s.get("data")  # the options' is the resolved path
    terms = options.get("covariate") or ""  # the --covariate terms (covariates: columns)
    return _Entry(name, s["method"], float(s["minus2ll"]), float(s["ofv"]), float(s["aic"]),
                  float(s["bic"]), int(s["n_obs"]), int(s["n_subjects"]),
                  int(s["n_parameters"]), frozenset(params),
                  bool(s.get("converged")) and s.get("status", "complete") == "complete",
                  data=None if data is None else os.path.normpath(str(data)),
                  fixed=("folder", options.get("model", s.get("model")),
                         options.get("allometric")),
                  terms=frozenset(t.strip().replace(" ", "") for t in str(terms).split(",")
                                  if t.strip()),
                  n_censored=s.get("n_censored"))


def observed(population) -> tuple:
    """``(ids, times, values, censored)`` of the observation records: what makes two
    populations the same data (:func:`same_observations`); a value fitted as below the
    limit (M3) is not the same datum as the value fitted as measured."""
    mask = np.asarray(population.obs_mask)
    return (tuple(population.ids), np.asarray(population.obs_time)[mask],
            np.asarray(population.obs_dv)[mask],
            np.isfinite(np.asarray(population.obs_lloq))[mask])


def same_observations(a: tuple, b: tuple) -> bool:
    """Whether two :func:`observed` tuples are the same subjects, times and values."""
    return a[0] == b[0] and all(x.shape == y.shape and np.array_equal(x, y, equal_nan=True)
                                for x, y in zip(a[1:], b[1:], strict=True))


def _check_same_data(entries: list[_Entry]) -> None:
    """Every pair (a folder has no observations to compare: checked against the first
    entry only, [folder, B, C] let B and C of different data through)."""
    for i, first in enumerate(entries):
        for e in entries[i + 1:]:
            _check_pair(first, e)


def _check_pair(first: _Entry, e: _Entry) -> None:
    """Raise if ``first`` and ``e`` are fits of different data."""
    why = []
    if (e.n_obs, e.n_subjects) != (first.n_obs, first.n_subjects):
        why.append(f"{e.n_subjects} subjects and {e.n_obs} observations against "
                   f"{first.n_subjects} and {first.n_obs}")
    if e.data is not None and first.data is not None and e.data != first.data:
        why.append(f"data {e.data!r} against {first.data!r}")
    if (e.n_censored is not None and first.n_censored is not None
            and e.n_censored != first.n_censored):
        why.append(f"{e.n_censored} observations fitted as below the LLOQ against "
                   f"{first.n_censored}")
    if e.observations is not None and first.observations is not None and not why:
        if not same_observations(e.observations, first.observations):
            why.append("other subjects, times, DV values or censoring")
    if why:
        raise ValueError(f"compare_fits: {e.name!r} and {first.name!r} are fits of "
                         f"different data ({'; '.join(why)}); objective function values "
                         "are comparable only on the same data")


@dataclasses.dataclass
class FitComparison:
    """The result of :func:`compare_fits`.

    ``table``: one row per fit (index ``name``): ``method, n_obs, n_parameters, minus2ll,
    ofv, delta_ofv, aic, delta_aic, bic, delta_bic, converged``; the deltas against
    ``reference``. ``tests``: one row per nested pair: ``reduced, full, delta_ofv``
    (−2LL(reduced) − −2LL(full)), ``df``, ``p_value`` (chi-square), ``inferred`` (found by
    parameter names, not given).
    """

    table: pd.DataFrame
    tests: pd.DataFrame
    reference: str

    def summary(self) -> dict:
        """JSON-ready: the reference, the fits and the tests."""
        return {"reference": self.reference,
                "fits": json.loads(self.table.reset_index().to_json(orient="records")),
                "tests": json.loads(self.tests.to_json(orient="records"))}

    def __repr__(self) -> str:
        with pd.option_context("display.float_format", "{:.4g}".format, "display.width", 120):
            text = f"Fits compared (deltas against {self.reference!r}):\n{self.table}\n"
            if len(self.tests):
                text += f"Likelihood-ratio tests of nested models:\n{self.tests}\n"
            return text


def _pairs(entries, nested) -> list[tuple[_Entry, _Entry, bool]]:
    by_name = {e.name: e for e in entries}
    if nested is not None:
        out = []
        for pair in nested:
            reduced, full = (by_name.get(str(n)) for n in pair)
            if reduced is None or full is None:
                raise ValueError(f"compare_fits: nested pair {tuple(pair)} names a fit not "
                                 f"compared; fits are {list(by_name)}")
            if reduced.method != full.method:
                raise ValueError(f"compare_fits: {reduced.name!r} ({reduced.method}) and "
                                 f"{full.name!r} ({full.method}) use different likelihood "
                                 "approximations: no likelihood-ratio test")
            if full.n_parameters <= reduced.n_parameters:
                raise ValueError(f"compare_fits: in a nested pair (reduced, full) the full "
                                 f"model has more parameters; {full.name!r} has "
                                 f"{full.n_parameters}, {reduced.name!r} {reduced.n_parameters}")
            out.append((reduced, full, False))
        return out
    out = []
    for a in entries:
        for b in entries:
            if not (a.method == b.method and a.parameters < b.parameters
                    and a.n_parameters < b.n_parameters):
                continue
            held = all(a.held[n] == b.held[n] for n in a.held.keys() & b.held.keys())
            if a.fixed == b.fixed and held and (a.terms is None or b.terms is None
                                                or a.terms <= b.terms):
                out.append((a, b, True))
            else:  # e.g. allometric scaling added with a covariate: not nested
                warnings.warn(
                    f"compare_fits: {a.name!r} and {b.name!r} have nested parameter names but "
                    f"differ in what is not estimated (the structural model, allometric "
                    f"scaling, a covariate's form or column, a parameter both hold fixed "
                    f"at different values): no likelihood-ratio test "
                    f"inferred; name the pair with nested=[({a.name!r}, {b.name!r})] if "
                    f"the one is the other with parameters fixed", UserWarning, stacklevel=3)
    return out


def compare_fits(fits, names: Sequence[str] | None = None,
                 nested: Sequence[tuple[str, str]] | None = None,
                 reference: str | None = None) -> FitComparison:
    """Compare maximum-likelihood fits of the same data: OFV, ΔOFV, AIC, BIC, and the
    likelihood-ratio test of nested models.

    Parameters
    ----------
    fits : a sequence of :class:`FitResult` objects and/or ``--out`` folders of
        ``bayes-ude pk fit`` (or their ``summary.json``), or a mapping name -> either.
    names : names of the fits (default: the mapping's keys, a folder's name, ``fit<k>``).
    nested : ``(reduced, full)`` name pairs to test. Default: every pair with the same
        method where the reduced model's estimated parameter names are a proper subset of
        the full model's (e.g. random effects on ``cl, v`` within ``ka, cl, v``; an
        additive error within a combined one), and where what is not estimated is the
        same: the structural model, and no covariate column used without a parameter of
        its own (allometric scaling) in one but not the other (for ``--out`` folders: the
        same model and allometric options, and the reduced model's ``--covariate`` terms
        among the full one's). A pair with nested names that fails this warns
        instead of being tested: ``oral1cmt`` against the same with allometric weight
        scaling and ``v~DOSE:power`` gave p = 0.036 "for" the DOSE effect. A covariate
        whose form changes under the same parameter name is not seen in fit objects.
    reference : the fit the deltas are taken against (default: the lowest OFV).

    Returns
    -------
    FitComparison: ``table`` (one row per fit) and ``tests`` (one row per nested pair).

    Notes
    -----
    Fits of different data (other numbers of subjects or observations, another data path
    in ``summary.json``, other observations) raise ``ValueError``; different methods give
    a warning (their OFVs are different approximations) and no test. A p-value treats the
    statistic as chi-square with ``df`` = the difference in estimated parameters; for a
    variance tested at 0 (a random effect left out) that is conservative (the null
    distribution is a 50:50 mixture of chi-square with ``df - 1`` and ``df``).
    """
    if isinstance(fits, Mapping):
        names = list(fits) if names is None else names
        fits = list(fits.values())
    fits = list(fits)
    if len(fits) < 2:
        raise ValueError(f"compare_fits needs at least two fits, got {len(fits)}")
    if names is not None and len(names) != len(fits):
        raise ValueError(f"compare_fits: {len(names)} names for {len(fits)} fits")
    entries = []
    for k, f in enumerate(fits):
        if isinstance(f, FitResult):
            entries.append(_from_result(f"fit{k + 1}" if names is None else str(names[k]), f))
        elif isinstance(f, str | os.PathLike):
            path = Path(f)
            label = path.parent.name if path.name == "summary.json" else path.name
            entries.append(_from_folder(label if names is None else str(names[k]), path))
        else:
            raise TypeError(f"compare_fits: fit {k + 1} is a {type(f).__name__}; give "
                            "maximum-likelihood FitResult objects or `pk fit --out` folders")
    labels = [e.name for e in entries]
    if len(set(labels)) != len(labels):
        raise ValueError(f"compare_fits: the fits' names repeat ({labels}); give names=")
    _check_same_data(entries)
    if len({e.method for e in entries}) > 1:
        warnings.warn("compare_fits: the fits use different methods "
                      f"({sorted({e.method for e in entries})}): their OFVs are different "
                      "approximations of the likelihood, not comparable", stacklevel=2)
    best = min(entries, key=lambda e: e.ofv).name if reference is None else str(reference)
    if best not in labels:
        raise ValueError(f"compare_fits: reference {reference!r} is not one of {labels}")
    ref = entries[labels.index(best)]
    table = pd.DataFrame([{
        "name": e.name, "method": e.method, "n_obs": e.n_obs, "n_parameters": e.n_parameters,
        "minus2ll": e.minus2ll, "ofv": e.ofv, "delta_ofv": e.ofv - ref.ofv, "aic": e.aic,
        "delta_aic": e.aic - ref.aic, "bic": e.bic, "delta_bic": e.bic - ref.bic,
        "converged": e.converged} for e in entries]).set_index("name")
    rows = []
    for reduced, full, inferred in _pairs(entries, nested):
        stat = reduced.minus2ll - full.minus2ll
        df = full.n_parameters - reduced.n_parameters
        rows.append({"reduced": reduced.name, "full": full.name, "delta_ofv": stat, "df": df,
                     "p_value": chi2_sf(stat, df), "inferred": inferred})
    tests = pd.DataFrame(rows, columns=["reduced", "full", "delta_ofv", "df", "p_value",
                                        "inferred"])
    return FitComparison(table, tests, best)
