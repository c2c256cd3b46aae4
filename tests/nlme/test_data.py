"""NONMEM table reading: validation errors, event semantics, padding, shipped data."""

from __future__ import annotations

import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from bayes_ude import datasets
from bayes_ude.nlme import (
    NonmemDataError,
    Population,
    builtin_model,
    covariates_at,
    fit,
    load_theophylline_population,
    load_warfarin_population,
    read_nonmem,
)

HEADER = "ID,TIME,DV,AMT,EVID,MDV,CMT,RATE,II,ADDL,SS,WT"


def _csv(tmp_path, lines: list[str], header: str = HEADER):
    path = tmp_path / "data.csv"
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


# Two well-formed subjects; the malformed tables below each change one cell.
GOOD = [
    "1,0,.,100,1,1,1,0,0,0,0,70",  # row 1
    "1,1,5.0,.,0,0,2,0,0,0,0,70",  # row 2
    "1,2,4.0,.,0,0,2,0,0,0,0,70",  # row 3
    "2,0,.,200,1,1,1,0,0,0,0,80",  # row 4
    "2,1,9.0,.,0,0,2,0,0,0,0,80",  # row 5
    "2,3,7.0,.,0,0,2,0,0,0,0,80",  # row 6
]


def _with(row: int, column: str, value: str) -> list[str]:
    """GOOD with the cell (1-based data row, column name) replaced."""
    lines = [line.split(",") for line in GOOD]
    lines[row - 1][HEADER.split(",").index(column)] = value
    return [",".join(line) for line in lines]


def _assert_problem(err: NonmemDataError, subject, row: int, column: str, text: str):
    """Some problem line names the subject, the row, the column and contains ``text``."""
    for line in err.problems:
        if (
            f"row {row} " in line
            and f"(subject {subject})" in line
            and f"column {column}" in line
            and text.lower() in line.lower()
        ):
            assert line in str(err)
            return
    raise AssertionError(
        f"no problem naming subject {subject}, row {row}, column {column}: {err.problems}"
    )


def test_good_table_reads(tmp_path):
    pop = read_nonmem(_csv(tmp_path, GOOD))
    assert pop.ids == (1, 2)
    assert pop.n_subjects == 2 and pop.n_obs == 4 and pop.n_doses == 2
    np.testing.assert_array_equal(pop.obs_time, [[1, 2], [1, 3]])
    np.testing.assert_array_equal(pop.obs_dv, [[5, 4], [9, 7]])
    np.testing.assert_array_equal(pop.obs_row, [[2, 3], [5, 6]])
    np.testing.assert_array_equal(pop.obs_cmt, [[2, 2], [2, 2]])
    np.testing.assert_array_equal(pop.dose_amt, [[100], [200]])
    np.testing.assert_array_equal(pop.dose_cmt, [[1], [1]])
    np.testing.assert_array_equal(pop.cov_baseline, [[70], [80]])
    assert pop.covariate_names == ("WT",)
    assert pop.reset_time.shape == (2, 0)


# ---- one malformed table per validation error ----------------------------------------


def test_missing_required_column(tmp_path):
    header = HEADER.replace("DV,", "")
    lines = [",".join(x for k, x in enumerate(line.split(",")) if k != 2) for line in GOOD]
    with pytest.raises(NonmemDataError, match=r"column DV: required column is missing"):
        read_nonmem(_csv(tmp_path, lines, header))


def test_missing_amt_column_with_doses(tmp_path):
    header = HEADER.replace("AMT,", "")
    lines = [",".join(x for k, x in enumerate(line.split(",")) if k != 3) for line in GOOD]
    with pytest.raises(NonmemDataError) as info:
        read_nonmem(_csv(tmp_path, lines, header))
    message = str(info.value)
    assert re.search(r"column AMT: required column is missing.*row 1 \(subject 1\)", message)


def test_non_numeric_value(tmp_path):
    with pytest.raises(NonmemDataError) as info:
        read_nonmem(_csv(tmp_path, _with(5, "DV", "abc")))
    _assert_problem(info.value, 2, 5, "DV", "'abc' is not a number")


def test_non_numeric_covariate(tmp_path):
    with pytest.raises(NonmemDataError) as info:
        read_nonmem(_csv(tmp_path, _with(3, "WT", "heavy")))
    _assert_problem(info.value, 1, 3, "WT", "'heavy' is not a number")


def test_decreasing_time(tmp_path):
    with pytest.raises(NonmemDataError) as info:
        read_nonmem(_csv(tmp_path, _with(6, "TIME", "0.5")))
    _assert_problem(info.value, 2, 6, "TIME", "must not decrease")


def test_dose_without_amt(tmp_path):
    with pytest.raises(NonmemDataError) as info:
        read_nonmem(_csv(tmp_path, _with(4, "AMT", ".")))
    _assert_problem(info.value, 2, 4, "AMT", "dose record (EVID 1) without AMT")


def test_observation_without_dv(tmp_path):
    with pytest.raises(NonmemDataError) as info:
        read_nonmem(_csv(tmp_path, _with(2, "DV", ".")))
    _assert_problem(info.value, 1, 2, "DV", "observation record without DV")


def test_unknown_evid(tmp_path):
    with pytest.raises(NonmemDataError) as info:
        read_nonmem(_csv(tmp_path, _with(3, "EVID", "7")))
    _assert_problem(info.value, 1, 3, "EVID", "unknown EVID 7")


def test_negative_amt(tmp_path):
    with pytest.raises(NonmemDataError) as info:
        read_nonmem(_csv(tmp_path, _with(1, "AMT", "-5")))
    _assert_problem(info.value, 1, 1, "AMT", "negative AMT -5")


def test_negative_rate(tmp_path):
    with pytest.raises(NonmemDataError) as info:
        read_nonmem(_csv(tmp_path, _with(1, "RATE", "-3")))
    _assert_problem(info.value, 1, 1, "RATE", "negative RATE -3")


def test_modelled_duration_not_supported(tmp_path):
    with pytest.raises(NonmemDataError) as info:
        read_nonmem(_csv(tmp_path, _with(4, "RATE", "-2")))
    _assert_problem(info.value, 2, 4, "RATE", "not supported")


def test_addl_without_ii(tmp_path):
    with pytest.raises(NonmemDataError) as info:
        read_nonmem(_csv(tmp_path, _with(1, "ADDL", "3")))
    _assert_problem(info.value, 1, 1, "II", "need an interdose interval II > 0")


def test_unsupported_ss(tmp_path):
    with pytest.raises(NonmemDataError) as info:
        read_nonmem(_csv(tmp_path, _with(1, "SS", "2")))
    _assert_problem(info.value, 1, 1, "SS", "not supported")


def test_constant_ss_infusion_with_an_interval(tmp_path):
    """AMT 0, RATE 10, SS 1 is a constant infusion at steady state; with II 12 it gave no
    drug at all, without a word."""
    lines = GOOD.copy()
    lines[0] = "1,0,.,0,1,1,1,10,12,0,1,70"
    with pytest.raises(NonmemDataError) as info:
        read_nonmem(_csv(tmp_path, lines))
    _assert_problem(info.value, 1, 1, "II", "II must be 0, got 12")


def test_covariate_missing_for_whole_subject(tmp_path):
    lines = _with(4, "WT", ".")
    lines = [line if k < 3 else line.rsplit(",", 1)[0] + ",." for k, line in enumerate(lines)]
    with pytest.raises(NonmemDataError) as info:
        read_nonmem(_csv(tmp_path, lines))
    _assert_problem(info.value, 2, 4, "WT", "missing on every record")


def test_all_problems_reported_together(tmp_path):
    lines = _with(2, "DV", ".")
    lines[4] = lines[4].replace("2,1,9.0", "2,1,xyz")  # row 5 DV non-numeric
    lines[2] = lines[2].replace(",0,0,2,", ",9,0,2,")  # row 3 EVID 9
    with pytest.raises(NonmemDataError) as info:
        read_nonmem(_csv(tmp_path, lines))
    err = info.value
    assert len(err.problems) == 3
    _assert_problem(err, 1, 2, "DV", "without DV")
    _assert_problem(err, 2, 5, "DV", "not a number")
    _assert_problem(err, 1, 3, "EVID", "unknown EVID 9")
    assert isinstance(err, ValueError)


def test_subject_without_observations_warns(tmp_path):
    lines = [*GOOD, "3,0,.,50,1,1,1,0,0,0,0,60"]
    with pytest.warns(UserWarning, match=r"subject 3 .*no observations.*kept"):
        pop = read_nonmem(_csv(tmp_path, lines))
    assert pop.ids == (1, 2, 3)
    assert not pop.obs_mask[2].any()
    np.testing.assert_array_equal(pop.obs_time[2], [0.0, 0.0])  # padding: first time


# ---- semantics -----------------------------------------------------------------------


def test_addl_expansion(tmp_path):
    lines = ["1,0,.,100,1,1,1,0,12,3,0,70", "1,40,3.0,.,0,0,2,0,0,0,0,70"]
    pop = read_nonmem(_csv(tmp_path, lines))
    np.testing.assert_array_equal(pop.dose_time[0], [0, 12, 24, 36])
    np.testing.assert_array_equal(pop.dose_amt[0], [100] * 4)
    np.testing.assert_array_equal(pop.dose_ii[0], [12] * 4)
    np.testing.assert_array_equal(pop.dose_row[0], [1] * 4)
    assert pop.dose_mask.all() and pop.n_doses == 4


def test_addl_interleaves_with_later_doses_and_pads(tmp_path):
    lines = [
        "1,0,.,100,1,1,1,0,12,2,0,70",  # doses at 0, 12, 24
        "1,18,.,50,1,1,1,0,0,0,0,70",  # dose at 18
        "1,30,3.0,.,0,0,2,0,0,0,0,70",
        "2,0,.,10,1,1,1,0,0,0,0,80",
        "2,5,1.0,.,0,0,2,0,0,0,0,80",
    ]
    pop = read_nonmem(_csv(tmp_path, lines))
    np.testing.assert_array_equal(pop.dose_time[0], [0, 12, 18, 24])
    np.testing.assert_array_equal(pop.dose_amt[0], [100, 100, 50, 100])
    np.testing.assert_array_equal(pop.dose_mask[1], [True, False, False, False])
    np.testing.assert_array_equal(pop.dose_amt[1], [10, 0, 0, 0])


def test_infusion_rate_and_steady_state_stored(tmp_path):
    lines = ["1,0,.,100,1,1,1,25,12,0,1,70", "1,2,3.0,.,0,0,2,0,0,0,0,70"]
    pop = read_nonmem(_csv(tmp_path, lines))
    assert pop.dose_rate[0, 0] == 25.0  # infusion of duration 100 / 25 = 4 h
    assert pop.dose_ss[0, 0] and pop.dose_ii[0, 0] == 12.0


def test_resets(tmp_path):
    lines = [
        "1,0,.,100,1,1,1,0,0,0,0,70",
        "1,1,5.0,.,0,0,2,0,0,0,0,70",
        "1,10,.,.,3,1,1,0,0,0,0,70",
        "1,20,.,80,4,1,1,0,0,0,0,70",
        "1,21,2.0,.,0,0,2,0,0,0,0,70",
    ]
    pop = read_nonmem(_csv(tmp_path, lines))
    np.testing.assert_array_equal(pop.reset_time[0], [10, 20])
    np.testing.assert_array_equal(pop.dose_time[0], [0, 20])
    np.testing.assert_array_equal(pop.dose_amt[0], [100, 80])


def test_mdv_one_observation_and_evid2_are_not_observations(tmp_path):
    lines = [
        "1,0,.,100,1,1,1,0,0,0,0,70",
        "1,1,.,.,0,1,2,0,0,0,0,70",  # EVID 0 but MDV 1: "other"
        "1,2,.,.,2,1,2,0,0,0,0,75",  # EVID 2: covariate change only
        "1,3,4.0,.,0,0,2,0,0,0,0,75",
    ]
    pop = read_nonmem(_csv(tmp_path, lines))
    np.testing.assert_array_equal(pop.obs_time[0], [3])
    np.testing.assert_array_equal(pop.obs_cov[0, :, 0], [75])


def test_time_varying_covariates_locf(tmp_path):
    # WT missing on rows 2 and 5 (carried forward), first value missing (back-filled).
    lines = [
        "1,0,.,100,1,1,1,0,0,0,0,.",
        "1,1,5.0,.,0,0,2,0,0,0,0,70",
        "1,2,4.0,.,0,0,2,0,0,0,0,.",
        "1,3,3.5,.,0,0,2,0,0,0,0,72",
        "1,4,3.0,.,0,0,2,0,0,0,0,.",
        "1,5,2.5,.,0,0,2,0,0,0,0,75",
    ]
    pop = read_nonmem(_csv(tmp_path, lines))
    np.testing.assert_array_equal(pop.obs_cov[0, :, 0], [70, 70, 72, 72, 75])
    np.testing.assert_array_equal(pop.dose_cov[0, :, 0], [70])
    assert pop.cov_baseline[0, 0] == 70
    np.testing.assert_array_equal(pop.cov_time[0], [0, 3, 5])
    np.testing.assert_array_equal(pop.cov_value[0, :, 0], [70, 72, 75])
    at = jax.vmap(
        lambda t: covariates_at(pop.cov_time[0], pop.cov_value[0], pop.cov_mask[0], t)
    )(jnp.array([-1.0, 0.0, 2.9, 3.0, 4.5, 5.0, 99.0]))
    np.testing.assert_array_equal(at[:, 0], [70, 70, 70, 72, 72, 75, 75])


def test_addl_dose_covariates_locf(tmp_path):
    lines = [
        "1,0,.,100,1,1,1,0,10,2,0,70",  # doses at 0, 10, 20
        "1,15,3.0,.,0,0,2,0,0,0,0,80",
    ]
    pop = read_nonmem(_csv(tmp_path, lines))
    np.testing.assert_array_equal(pop.dose_cov[0, :, 0], [70, 70, 80])


def test_case_insensitive_headers_and_dot_missing(tmp_path):
    header = HEADER.lower().replace("wt", "Wt")
    pop_lower = read_nonmem(_csv(tmp_path, GOOD, header))
    pop_upper = read_nonmem(pd.read_csv(_csv(tmp_path, GOOD), na_values=["."]))
    assert pop_lower.covariate_names == ("Wt",)
    for name in ("obs_time", "obs_dv", "dose_amt", "obs_row", "cov_baseline"):
        np.testing.assert_array_equal(getattr(pop_lower, name), getattr(pop_upper, name))


def test_no_evid_column_derives_events(tmp_path):
    header = "id,time,amt,dv,wt"
    lines = ["7,0,100,.,70", "7,1,.,5.0,70", "7,2,0,4.0,70"]  # AMT 0 is not a dose
    pop = read_nonmem(_csv(tmp_path, lines, header))
    np.testing.assert_array_equal(pop.obs_time[0], [1, 2])
    np.testing.assert_array_equal(pop.dose_amt[0], [100])


def test_non_contiguous_subjects_grouped_in_order_of_appearance(tmp_path):
    lines = [GOOD[3], GOOD[0], GOOD[4], GOOD[1], GOOD[5], GOOD[2]]
    pop = read_nonmem(_csv(tmp_path, lines))
    assert pop.ids == (2, 1)
    np.testing.assert_array_equal(pop.obs_dv, [[9, 7], [5, 4]])
    np.testing.assert_array_equal(pop.obs_row, [[3, 5], [4, 6]])


def test_explicit_covariates_and_dvid(tmp_path):
    header = "ID,TIME,DV,AMT,TYPE,WT,AGE"
    lines = ["1,0,.,10,1,70,30", "1,1,2.0,.,1,70,30", "1,1,50,.,2,70,30"]
    pop = read_nonmem(_csv(tmp_path, lines, header), covariates=["age"], dvid="type")
    assert pop.covariate_names == ("AGE",)
    np.testing.assert_array_equal(pop.obs_dvid[0], [1, 2])


# ---- Population as a pytree ----------------------------------------------------------


def test_padding_and_vmap(tmp_path):
    lines = [*GOOD, "2,4,6.0,.,0,0,2,0,0,0,0,80"]
    pop = read_nonmem(_csv(tmp_path, lines))
    # subject 1 padded to 3 observations at its last observation time
    np.testing.assert_array_equal(pop.obs_time[0], [1, 2, 2])
    np.testing.assert_array_equal(pop.obs_mask[0], [True, True, False])
    assert pop.obs_dv[0, 2] == 0 and pop.obs_row[0, 2] == -1

    def masked_sum(subject: Population):
        return jnp.sum(jnp.where(subject.obs_mask, subject.obs_dv, 0.0))

    sums = jax.jit(jax.vmap(masked_sum))(pop)
    np.testing.assert_allclose(sums, [9.0, 22.0])


def test_take_subject_and_index(tmp_path):
    pop = read_nonmem(_csv(tmp_path, GOOD))
    sub = pop.take([1])
    assert sub.ids == (2,) and sub.obs_time.shape == pop.obs_time[1:].shape
    np.testing.assert_array_equal(sub.obs_dv, pop.obs_dv[1:])
    assert pop.subject(0).ids == (1,)
    assert pop.index(2) == 1
    assert "subjects=2" in repr(pop) and "observations=4" in repr(pop)


def test_to_frame_round_trip(tmp_path):
    path = _csv(tmp_path, GOOD)
    frame = read_nonmem(path).to_frame()
    table = pd.read_csv(path, na_values=["."])
    expected = table[table.EVID == 0].reset_index(drop=True)
    np.testing.assert_array_equal(frame.ID, expected.ID)
    np.testing.assert_array_equal(frame.TIME, expected.TIME)
    np.testing.assert_array_equal(frame.DV, expected.DV)
    np.testing.assert_array_equal(frame.CMT, expected.CMT)
    np.testing.assert_array_equal(frame.WT, expected.WT)
    np.testing.assert_array_equal(frame.ROW, table.index[table.EVID == 0] + 1)


# ---- shipped data --------------------------------------------------------------------


def test_theophylline_population():
    pop = load_theophylline_population()
    raw = datasets.load_theophylline()
    assert pop.n_subjects == 12 and pop.n_obs == 132 and pop.n_doses == 12
    assert pop.obs_mask.all() and pop.obs_time.shape == (12, 11)
    assert (pop.obs_cmt == 2).all() and (pop.dose_cmt == 1).all()
    assert (pop.dose_time == 0).all()
    per_subject = raw.groupby("Subject", sort=False)[["Wt", "Dose"]].first()
    expected_amt = (per_subject.Wt * per_subject.Dose).loc[list(pop.ids)].to_numpy()
    np.testing.assert_allclose(pop.dose_amt[:, 0], expected_amt, rtol=1e-3)
    frame = pop.to_frame()
    nm = datasets.load_theophylline_nonmem()
    obs = nm[nm.EVID == 0].reset_index(drop=True)
    np.testing.assert_array_equal(frame.DV, obs.DV)
    np.testing.assert_array_equal(frame.TIME, obs.TIME)


def test_warfarin_population():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every subject has observations
        pop = load_warfarin_population()
    raw = datasets.load_warfarin()
    assert pop.n_subjects == 32 and pop.n_doses == 32
    assert pop.ids[:2] == (100, 1)  # order of first appearance, not sorted
    assert int((pop.obs_mask & (pop.obs_dvid == 1)).sum()) == 251
    assert int((pop.obs_mask & (pop.obs_dvid == 2)).sum()) == 232
    doses = raw[raw.amt.notna()].set_index("id").amt.loc[list(pop.ids)].to_numpy()
    np.testing.assert_array_equal(pop.dose_amt[:, 0], doses)
    assert pop.covariate_names == ("wt", "sex", "age")
    first = raw.groupby("id", sort=False)[["wt", "sex", "age"]].first().loc[list(pop.ids)]
    np.testing.assert_array_equal(pop.cov_baseline, first.to_numpy(dtype=float))


def test_one_kind_of_observation_for_a_builtin_model():
    """Warfarin holds concentrations (DVID 1) and PCA (DVID 2): a one-output model fitted
    to both fits the PCA values as concentrations (it ended in a degenerate fit). It is
    refused, naming the kinds; select_dvid keeps one, as the command's --dvid does."""
    pop = load_warfarin_population()
    assert pop.observed_dvids() == {1: 251, 2: 232}
    with pytest.raises(ValueError, match=r"2 kinds of observation, DVID 1 \(251 "
                                         r"observations\), 2 \(232\); model oral1cmt"):
        builtin_model("oral1cmt", pop)
    with pytest.raises(ValueError, match=r"also holds observations of DVID 2 \(232 "
                                         r"observations\).*pass population.select_dvid\(1\)"):
        builtin_model("oral1cmt", pop, dvid=1)
    with pytest.raises(ValueError, match=r"no observations with DVID 3 \(the data hold DVID "
                                         r"1 \(251 observations\), 2 \(232\)\)"):
        pop.select_dvid(3)
    pk = pop.select_dvid(1)
    assert pk.observed_dvids() == {1: 251} and pk.n_doses == pop.n_doses
    assert pk.obs_mask.shape == pop.obs_mask.shape  # padded widths kept
    raw = datasets.load_warfarin()
    np.testing.assert_array_equal(np.asarray(pk.obs_dv)[np.asarray(pk.obs_mask)],
                                  raw[(raw.dvid == 1) & raw.amt.isna()].dv.to_numpy())
    model = builtin_model("oral1cmt", pk, dvid=1)
    model.check(pk)
    builtin_model("oral1cmt", pk).check(pk)  # one kind: no dvid needed
    # the model built on one kind, then fitted to both: refused by the fit's own check
    with pytest.raises(ValueError, match=r"2 kinds of observation, DVID 1 .*; model oral1cmt "
                                         r"\(OneCompartmentOral\) predicts one quantity "
                                         r".*select_dvid"):
        fit(model, pop, "focei")
