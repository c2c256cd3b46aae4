"""Covariate terms written as formulas: ``cl~WT:power``, ``v~WT``, ``cl~SEX:categorical``.

A term multiplies a log-normal parameter's typical value (it is added on the log scale,
beside ``t<parameter>`` and ``eta_<parameter>``):

=============  ==========================================  ===========================
form           log-scale shift                             fixed effects (initial 0)
=============  ==========================================  ===========================
power          ``b log(x / ref)``                          ``<p>_<COL>``
linear         ``log(1 + b (x - ref))``                    ``<p>_<COL>``
exponential    ``b (x - ref)``                             ``<p>_<COL>``
categorical    ``b_k`` for ``x == k`` (k not the reference) ``<p>_<COL>_<k>`` per level
=============  ==========================================  ===========================

``ref`` is the median of the subjects' values unless given (``cl~WT:power:70``); the
reference level of a categorical covariate is its most frequent one unless given
(``cl~SEX:categorical:1``). Terms read the covariate at each subject's first record: a
covariate that changes within a subject is an error for them (the closed-form models have
constant parameters), naming the subject and the rows.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

import jax.numpy as jnp
import numpy as np

__all__ = [
    "FORMS",
    "CovariateTerm",
    "parse_covariate_terms",
    "positive_problems",
    "resolve_covariate_terms",
]

FORMS = ("power", "linear", "exponential", "categorical")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class CovariateTerm:
    """One covariate effect on one parameter (see the module notes)."""

    parameter: str
    column: str
    form: str = "power"
    reference: float | None = None
    levels: tuple[float, ...] = ()  # categorical: the non-reference levels

    def theta_names(self) -> tuple[str, ...]:
        if self.form == "categorical":
            return tuple(f"{self.parameter}_{self.column}_{_level_text(k)}"
                         for k in self.levels)
        return (f"{self.parameter}_{self.column}",)

    def shift(self, theta: Mapping, covariates: Mapping):
        """The term's log-scale shift for one subject."""
        x = covariates[self.column]
        if self.form == "categorical":
            return sum(jnp.where(x == k, theta[name], 0.0)
                       for k, name in zip(self.levels, self.theta_names(), strict=True))
        b = theta[self.theta_names()[0]]
        if self.form == "power":
            return b * jnp.log(x / self.reference)
        if self.form == "exponential":
            return b * (x - self.reference)
        # linear: a factor 1 + b (x - ref) that must stay positive (a NaN, a failed
        # subject, otherwise: the optimiser steps back)
        factor = 1.0 + b * (x - self.reference)
        return jnp.where(factor > 0, jnp.log(jnp.where(factor > 0, factor, 1.0)), jnp.nan)

    def problems(self, population) -> list[str]:
        """What in ``population`` (new data, e.g. a design to simulate) this term is not
        defined for, one line each: a categorical level it was not built with (it would
        get the reference level's effect), a power form's value <= 0 (log), a value that
        changes within a subject (the term reads the baseline)."""
        label = f"{self.parameter}~{self.column}"
        if self.column not in population.covariate_names:
            return []  # said by the model's own check of its covariate columns
        out = _changes(label, self.column, population)
        x = np.asarray(population.cov_baseline)[:, population.covariate_names.index(
            self.column)]
        if self.form == "categorical":
            known = {self.reference, *self.levels}
            new = sorted({float(v) for v in x} - known)
            if new:
                out.append(f"{label}: level(s) {', '.join(f'{v:g}' for v in new)} of "
                           f"{self.column} were not in the data the model was built on "
                           f"(levels {', '.join(f'{v:g}' for v in sorted(known))}); they "
                           "would get the reference level's effect")
        elif self.form == "power":
            out += positive_problems(population, self.column, f"{label} (power form)")
        return out


def _changes(label: str, column: str, population) -> list[str]:
    varying = population.covariate_changes(column)[:10]
    return [f"{label}: {column} changes within subject(s) {varying}; the built-in models "
            "need covariates constant within a subject"] if varying else []


def positive_problems(population, column: str, what: str) -> list[str]:
    """One line naming the subjects whose baseline ``column`` is not > 0 (empty if none):
    ``what`` takes its log."""
    x = np.asarray(population.cov_baseline)[:, population.covariate_names.index(column)]
    bad = [population.ids[i] for i in np.nonzero(~(x > 0))[0]]
    if not bad:
        return []
    shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
    return [f"{what} needs {column} > 0; subject(s) {shown} have {column} <= 0 or missing"]


def _level_text(k: float) -> str:
    return str(int(k)) if float(k).is_integer() else str(k).replace(".", "p").replace("-", "m")


def parse_covariate_terms(text: str) -> list[CovariateTerm]:
    """``"cl~WT:power,v~WT:power:70,cl~SEX:categorical"`` -> terms (form default
    ``power``; parameter names lower case; an error names the malformed term)."""
    terms = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        left, tilde, right = item.partition("~")
        parts = [p.strip() for p in right.split(":")]
        column, form = parts[0], (parts[1].lower() if len(parts) > 1 and parts[1] else "power")
        problem = None
        if not tilde or not _NAME.match(left.strip()) or not _NAME.match(column):
            problem = "expected PARAMETER~COLUMN[:FORM[:REFERENCE]]"
        elif form not in FORMS:
            problem = f"the form must be one of {', '.join(FORMS)}"
        elif len(parts) > 3:
            problem = "too many ':' fields"
        reference = None
        if problem is None and len(parts) == 3:
            try:
                reference = float(parts[2])
            except ValueError:
                problem = f"the reference {parts[2]!r} is not a number"
        if problem:
            raise ValueError(f"covariate term {item!r}: {problem} (e.g. cl~WT:power, "
                             "v~WT:power:70, cl~SEX:categorical)")
        terms.append(CovariateTerm(left.strip().lower(), column, form, reference))
    if not terms:
        raise ValueError(f"no covariate term in {text!r}; e.g. cl~WT:power,v~WT:power")
    pairs = [(t.parameter, t.column) for t in terms]
    twice = sorted({p for p in pairs if pairs.count(p) > 1})
    if twice:
        raise ValueError(f"covariate terms given twice: {[f'{p}~{c}' for p, c in twice]}")
    return terms


def resolve_covariate_terms(terms: Sequence[CovariateTerm], population,
                            parameters: Sequence[str]) -> list[CovariateTerm]:
    """The terms checked against the model's ``parameters`` and the data, with their
    reference values and levels filled in; every problem is one ``ValueError``."""
    names = list(population.covariate_names)
    problems, out = [], []
    for t in terms:
        label = f"{t.parameter}~{t.column}"
        if t.parameter not in parameters:
            problems.append(f"{label}: the model has no parameter {t.parameter!r} "
                            f"(parameters: {', '.join(parameters)})")
            continue
        if t.column not in names:
            problems.append(f"{label}: no covariate column {t.column!r} in the data "
                            f"(covariates there: {', '.join(names) or 'none'})")
            continue
        c = names.index(t.column)
        varying = _changes(label, t.column, population)
        if varying:
            problems += varying
            continue
        x = np.asarray(population.cov_baseline)[:, c]
        out.append(_with_reference(t, x, label, problems, population.ids))
    # e.g. cl~SEX:categorical (level 2: cl_SEX_2) and cl~SEX_2:power (cl_SEX_2): one fixed
    # effect would have served both terms
    owner: dict[str, str] = {}
    for t in out:
        for name in t.theta_names():
            if name in owner:
                problems.append(f"{owner[name]} and {t.parameter}~{t.column} both name the "
                                f"fixed effect {name!r}; rename a column")
            owner.setdefault(name, f"{t.parameter}~{t.column}")
    if problems:
        raise ValueError("covariate terms do not fit the data:\n  " + "\n  ".join(problems))
    return out


def _with_reference(t: CovariateTerm, x: np.ndarray, label: str,
                    problems: list[str], ids: Sequence = ()) -> CovariateTerm:
    if t.reference is not None and not np.isfinite(t.reference):
        problems.append(f"{label}: the reference must be a finite number, got "
                        f"{t.reference:g}")
        return t
    if t.form == "categorical":
        values, counts = np.unique(x, return_counts=True)
        ref = float(values[np.argmax(counts)]) if t.reference is None else t.reference
        if ref not in values:
            problems.append(f"{label}: reference level {t.reference:g} does not occur "
                            f"(levels: {', '.join(f'{v:g}' for v in values)})")
        elif len(values) > 20:
            problems.append(f"{label}: {len(values)} levels; a categorical covariate "
                            "needs a few (use a continuous form)")
        levels = tuple(float(v) for v in values if v != ref)
        if not levels:
            problems.append(f"{label}: only one level ({ref:g}) in the data")
        return dataclasses.replace(t, reference=ref, levels=levels)
    if t.form == "power" and not np.all(x > 0):
        bad = [str(ids[i]) for i in np.flatnonzero(~(x > 0))] if len(ids) else []
        shown = f" ({', '.join(bad[:10])}{', ...' if len(bad) > 10 else ''})" if bad else ""
        problems.append(f"{label}: the power form needs positive values; {t.column} has "
                        f"{np.sum(~(x > 0))} subject(s) with values <= 0{shown}")
    ref = float(np.median(x)) if t.reference is None else t.reference
    if t.form == "power" and not ref > 0:
        problems.append(f"{label}: the power form needs a positive reference, got {ref:g}")
    return dataclasses.replace(t, reference=ref)
