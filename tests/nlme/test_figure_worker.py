"""The command's figures drawn by a second process (bayes_ude/nlme/_figure_worker.py, which
runs bayes_ude/nlme/_draw.py): the same files as drawn in this process, its errors raised
here, a dead or garbled process replaced by drawing here, nothing written after it is
stopped, and its loop with forked children, without them, and when no child can be
forked. Small made-up tables, no fit."""

import io
import os
import pickle
import re
import threading
import time

import matplotlib
import numpy as np
import pandas as pd
import pytest

from bayes_ude.nlme import _draw as draw
from bayes_ude.nlme import _figure_worker
from bayes_ude.nlme._figure_worker import Figures


def _jobs(folder, n_pages=2):
    rng = np.random.default_rng(0)
    times = np.linspace(0.5, 24, 8)
    table = pd.DataFrame({"time": times, "t_lo": times - 0.5, "t_hi": times + 0.5})
    for q, level in (("0.05", 2.0), ("0.5", 5.0), ("0.95", 8.0)):
        table[f"obs_q{q}"] = level + rng.normal(size=8)
        table[f"sim_q{q}_lo"], table[f"sim_q{q}_hi"] = level - 1, level + 1
    observed = {"t": rng.uniform(0, 24, 40), "dv": rng.uniform(0.5, 9, 40),
                "censored": np.zeros(40, bool)}
    diag = pd.DataFrame({c: rng.normal(size=30) + 5 for c in ("DV", "PRED", "IPRED")}
                        | {"IWRES": rng.normal(size=30), "CWRES": rng.normal(size=30),
                           "TIME": rng.uniform(0, 24, 30)})
    grid = np.linspace(0, 24, 50)
    panels = [{"id": k + 1, "t_obs": times, "dv_obs": 5 + rng.normal(size=8), "t": grid,
               "ipred": 5 + np.sin(grid / 4), "pred": 5 + np.cos(grid / 4)} for k in range(5)]
    pages = [{"panels": panels, "title": f"page {p + 1} of {n_pages}", "time_unit": "h",
              "dv_unit": "mg/L"} for p in range(n_pages)]
    return [("vpc", {"path": folder / "vpc.png", "log": False,
                     "panels": [{"table": table, "observed": observed, "title": "VPC"}]}),
            ("gof", {"path": folder / "gof.png", "parts": [{"diag": diag, "title": "GOF"}]}),
            ("individual", {"pdf_path": folder / "individual.pdf",
                            "png_path": folder / "individual.png", "pages": pages})]


def _draw(figures, jobs):
    tickets = [figures.submit(name, **kwargs) for name, kwargs in jobs]
    for ticket in tickets:
        figures.wait(ticket)


def test_second_process_draws_the_same_files(tmp_path):
    there, here = tmp_path / "there", tmp_path / "here"
    there.mkdir(), here.mkdir()
    with Figures() as figures:
        assert figures.in_second_process
        _draw(figures, _jobs(there))
    with matplotlib.rc_context(), Figures(second_process=False) as figures:
        matplotlib.rcdefaults()  # what the second process starts from
        assert not figures.in_second_process
        _draw(figures, _jobs(here))
    for name in ("vpc.png", "gof.png", "individual.png"):
        assert (there / name).read_bytes() == (here / name).read_bytes(), name
        assert (there / name).stat().st_size > 10_000
    pdf = (there / "individual.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and len(re.findall(rb"/Type /Page\b", pdf)) == 2


def test_an_error_in_the_second_process_is_raised_here(tmp_path):
    name, kwargs = _jobs(tmp_path)[1]
    kwargs["parts"][0]["diag"] = kwargs["parts"][0]["diag"].drop(columns="CWRES")
    with Figures() as figures:
        ticket = figures.submit(name, **kwargs)
        with pytest.raises(RuntimeError, match=r"drawing gof failed(.|\n)*KeyError: 'CWRES'"):
            figures.wait(ticket)
        # the process is still there for the next job
        ticket = figures.submit(*_jobs(tmp_path)[0][:1], **_jobs(tmp_path)[0][1])
        figures.wait(ticket)
        assert figures.in_second_process and (tmp_path / "vpc.png").exists()


def test_a_figure_process_that_died_is_replaced_by_drawing_here(tmp_path):
    with Figures() as figures:
        figures._process.popen.kill()
        _draw(figures, _jobs(tmp_path, n_pages=1))
        assert not figures.in_second_process
    assert all((tmp_path / n).stat().st_size > 10_000 for n in ("vpc.png", "individual.png"))


def test_closing_with_jobs_left_stops_the_process_and_its_children_at_once(tmp_path):
    figures = Figures()
    process = figures._process.popen
    for name, kwargs in _jobs(tmp_path, n_pages=40):
        figures.submit(name, **kwargs)
    time.sleep(1.0)  # drawing has begun (in children of the figure process, where forked)
    start = time.perf_counter()
    figures.close()  # an interruption: the jobs are not waited for
    assert time.perf_counter() - start < 2  # 40 pages take ~10 s
    assert process.poll() is not None
    written = sorted(p.name for p in tmp_path.iterdir())
    time.sleep(1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == written  # nothing after close
    figures.close()  # again: nothing


def test_jobs_one_after_the_other_where_there_is_no_fork(tmp_path):
    # the figure process's loop without children (one core, or no os.fork), in this process
    jobs = _jobs(tmp_path, n_pages=1)
    jobs[1][1]["parts"][0]["diag"] = jobs[1][1]["parts"][0]["diag"].drop(columns="CWRES")
    requests = io.BytesIO(b"".join(draw.frame((k, name, kwargs))
                                   for k, (name, kwargs) in enumerate(jobs)))
    replies = io.BytesIO()
    draw.serve(requests, replies, parallel=1)
    replies.seek(0)
    answers = [pickle.load(replies) for _ in jobs]
    assert [k for k, _ in answers] == [0, 1, 2]
    assert answers[0][1] is None and answers[2][1] is None
    assert "KeyError: 'CWRES'" in answers[1][1]
    assert (tmp_path / "vpc.png").stat().st_size > 10_000
    assert (tmp_path / "individual.pdf").read_bytes().startswith(b"%PDF")


def test_a_figure_process_that_writes_something_else_is_stopped(tmp_path, monkeypatch):
    # e.g. a sitecustomize printing a banner: the answers cannot be read, so the process
    # is killed (it must not go on writing the same files) and the jobs drawn here
    monkeypatch.setattr(_figure_worker, "_BOOT", "print('a banner'); " + _figure_worker._BOOT)
    with Figures() as figures:
        process = figures._process.popen
        _draw(figures, _jobs(tmp_path, n_pages=1))
        assert not figures.in_second_process
        assert process.wait(timeout=10) != 0  # killed
    assert all((tmp_path / n).stat().st_size > 10_000 for n in
               ("vpc.png", "gof.png", "individual.png"))


def test_a_job_is_drawn_in_the_figure_process_itself_when_no_child_can_be_forked(
        tmp_path, monkeypatch):
    def no_fork():
        raise BlockingIOError(11, "Resource temporarily unavailable")  # EAGAIN

    monkeypatch.setattr(os, "fork", no_fork)
    jobs = _jobs(tmp_path, n_pages=1)
    data = b"".join(draw.frame((k, name, kwargs)) for k, (name, kwargs) in enumerate(jobs))
    read, write = os.pipe()

    def send():
        with os.fdopen(write, "wb") as out:
            out.write(data)

    threading.Thread(target=send).start()
    replies = io.BytesIO()
    with os.fdopen(read, "rb", buffering=0) as requests:
        draw.serve(requests, replies, parallel=2)
    replies.seek(0)
    assert [pickle.load(replies) for _ in jobs] == [(0, None), (1, None), (2, None)]
    assert all((tmp_path / n).stat().st_size > 10_000 for n in
               ("vpc.png", "gof.png", "individual.png"))
