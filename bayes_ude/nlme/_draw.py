"""Drawing the figures of a population fit from plain numbers (numpy arrays, pandas tables).

Nothing here computes a model: :mod:`._plots` (the public ``plot_*`` functions) and the
command (:mod:`._command_plots`) prepare the numbers and call these functions. This module
imports nothing from the package, only numpy, pandas and matplotlib, so that the command can
also run it as its own process (:mod:`._figure_worker`): that process loads matplotlib while
the fit runs and draws the individual fits while the diagnostics are computed, without
importing JAX. Run as a script it serves drawing jobs (:func:`serve`).
"""

from __future__ import annotations

import os
import pickle
import selectors
import signal
import struct
import sys
import traceback
from statistics import NormalDist

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.backends.backend_pdf import PdfPages

__all__ = ["JOBS", "draw_gof", "draw_individual", "draw_vpc", "frame", "grid_margins", "label",
           "serve"]

#: the resolution of the command's PNG figures
DPI = 110


def label(what: str, unit: str | None) -> str:
    return f"{what} ({unit})" if unit else what


def grid_margins(fig, nrows: int, ncols: int, top: float, bottom: float = 0.6,
                 hgap: float = 0.7) -> dict:
    """Margins and gaps of a grid of panels on ``fig`` (a figure or subfigure), given in
    inches (``top`` above the panels, ``bottom`` below, ``hgap`` between rows: a panel's
    title and the x axis above it) and returned as the fractions
    ``subplots_adjust`` and ``gridspec_kw`` take. A fixed layout: ``tight_layout`` and the
    constrained layout measure every tick label at each draw (0.25-0.35 s of a 12-panel
    page, a third of drawing and saving it, and still let wide tick labels touch the next
    panel)."""
    width = fig.bbox.width / fig.dpi
    height = fig.bbox.height / fig.dpi
    left, right, wgap = 0.75, 0.15, 0.7
    panel_w = (width - left - right - (ncols - 1) * wgap) / ncols
    panel_h = (height - top - bottom - (nrows - 1) * hgap) / nrows
    return dict(left=left / width, right=1 - right / width, bottom=bottom / height,
                top=1 - top / height, wspace=wgap / panel_w, hspace=hgap / panel_h)


# ------------------------------------------------------------------------------ VPC


def draw_vpc(ax, table: pd.DataFrame, observed: dict | None = None, log: bool = False,
             title: str = "Prediction-corrected visual predictive check",
             time_unit: str | None = None, dv_unit: str | None = None,
             corrected: bool = True):
    """A VPC on ``ax``: the observations ``observed`` (``t``, ``dv``, ``censored``:
    points, crosses at the limit when below it), their quantiles (lines) over the simulated
    quantiles' intervals (bands), from the VPC ``table``."""
    qs = sorted({c.split("_")[1][1:] for c in table.columns if c.startswith("obs_q")},
                key=float)
    colours = {qs[0]: "tab:blue", qs[-1]: "tab:blue"} | ({qs[1]: "tab:red"} if len(qs) > 2
                                                        else {})
    if observed is not None:
        t, dv, cens = observed["t"], observed["dv"], observed["censored"]
        shown = dv > 0 if log else np.ones_like(dv, bool)
        ax.plot(t[shown & ~cens], dv[shown & ~cens], "o", ms=2.5, color="0.4", alpha=0.5,
                zorder=0, label="observations")
        if cens.any():
            ax.plot(t[shown & cens], dv[shown & cens], "x", ms=3, color="tab:orange",
                    alpha=0.7, zorder=0, label="below LLOQ (at the limit)")
    for q in qs:
        c = colours.get(q, "tab:blue")
        ax.fill_between(table["time"], table[f"sim_q{q}_lo"], table[f"sim_q{q}_hi"], color=c,
                        alpha=0.2, lw=0, label=f"simulated {float(q):.0%} quantile, interval")
        ax.plot(table["time"], table[f"obs_q{q}"], color=c, lw=1.8,
                label=f"observed {float(q):.0%} quantile")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(label("time", time_unit))
    ax.set_ylabel(label("prediction-corrected DV" if corrected else "DV", dv_unit))
    ax.set_title(title)
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles, strict=False))
    ax.legend(uniq.values(), uniq.keys(), fontsize=7,
              loc="upper left" if "obs_blq_frac" in table else "best")
    if "obs_blq_frac" in table:
        _blq_inset(ax, table)
    return ax


def _blq_inset(ax, table: pd.DataFrame) -> None:
    """The censored VPC's second half: the fraction below the limit per bin, observed
    against the simulated interval (an inset, upper right)."""
    inset = ax.inset_axes([0.64, 0.56, 0.34, 0.34])
    inset.fill_between(table["time"], table["sim_blq_frac_lo"], table["sim_blq_frac_hi"],
                       color="tab:orange", alpha=0.25, lw=0)
    inset.plot(table["time"], table["sim_blq_frac_median"], color="tab:orange", lw=1,
               ls="--")
    inset.plot(table["time"], table["obs_blq_frac"], "o-", color="tab:orange", ms=2.5, lw=1.2)
    inset.set_ylim(-0.02, 1.02)
    inset.set_title("fraction below LLOQ", fontsize=7)
    inset.tick_params(labelsize=6)


# ---------------------------------------------------------------------- goodness of fit


def draw_gof(diag: pd.DataFrame, fig=None, title: str = "Goodness of fit",
             time_unit: str | None = None, dv_unit: str | None = None):
    """The goodness-of-fit panel: DV vs PRED and IPRED, CWRES vs TIME and PRED, |IWRES| vs
    IPRED, and a normal QQ plot of CWRES (``time_unit``/``dv_unit`` label the axes)."""
    fig = plt.figure(figsize=(11, 7)) if fig is None else fig
    axes = fig.subplots(2, 3, gridspec_kw=grid_margins(fig, 2, 3, top=0.75, hgap=0.95))
    for ax, x in zip(axes[0, :2], ("PRED", "IPRED"), strict=True):
        ax.plot(diag[x], diag["DV"], "o", ms=3, alpha=0.6)
        lim = [min(diag[x].min(), diag["DV"].min()), max(diag[x].max(), diag["DV"].max())]
        ax.plot(lim, lim, "k-", lw=1)
        ax.set_xlabel(label(x, dv_unit))
        ax.set_ylabel(label("DV", dv_unit))
        ax.set_title(f"DV vs {x}")
    ax = axes[0, 2]
    ax.plot(diag["IPRED"], diag["IWRES"].abs(), "o", ms=3, alpha=0.6)
    ax.set_xlabel(label("IPRED", dv_unit))
    ax.set_ylabel("|IWRES|")
    ax.set_title("|IWRES| vs IPRED")
    for ax, x in zip(axes[1, :2], ("TIME", "PRED"), strict=True):
        ax.plot(diag[x], diag["CWRES"], "o", ms=3, alpha=0.6)
        ax.axhline(0, color="k", lw=1)
        for y in (-2, 2):
            ax.axhline(y, color="k", lw=0.6, ls="--")
        ax.set_xlabel(label(x, time_unit if x == "TIME" else dv_unit))
        ax.set_ylabel("CWRES")
        ax.set_title(f"CWRES vs {x}")
    ax = axes[1, 2]
    cwres = np.sort(diag["CWRES"].dropna())  # censored observations have none
    ax.plot(normal_quantiles(len(cwres)), cwres, "o", ms=3, alpha=0.6)
    ax.plot([-3, 3], [-3, 3], "k-", lw=1)
    ax.set_xlabel("normal quantiles")
    ax.set_ylabel("CWRES quantiles")
    ax.set_title("CWRES normal QQ")
    fig.suptitle(title)
    return fig


def normal_quantiles(n: int) -> np.ndarray:
    """The normal QQ plot's theoretical quantiles at Filliben's plotting positions (as
    ``scipy.stats.probplot``)."""
    m = np.empty(n)
    m[-1] = 0.5 ** (1.0 / n)
    m[0] = 1.0 - m[-1]
    m[1:-1] = (np.arange(2, n) - 0.3175) / (n + 0.365)
    return np.array([NormalDist().inv_cdf(x) for x in m])


# --------------------------------------------------------------------- individual fits


def draw_individual(panels: list[dict], ncols: int = 4, log: bool = False,
                    time_unit: str | None = None, dv_unit: str | None = None,
                    title: str | None = None):
    """One panel per subject: observations (``t_obs``, ``dv_obs``), IPRED (solid) and
    PRED (dashed) on the grid ``t``, titled ``ID {id}``; returns the figure."""
    nrows = int(np.ceil(len(panels) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3 * ncols, 2.4 * nrows + 0.4),
                             squeeze=False, sharex=False)
    for k, ax in enumerate(axes.flat):
        if k >= len(panels):
            ax.axis("off")
            continue
        p = panels[k]
        ax.plot(p["t_obs"], p["dv_obs"], "o", ms=3, color="k")
        ax.plot(p["t"], p["ipred"], "-", color="tab:blue", lw=1.3)
        ax.plot(p["t"], p["pred"], "--", color="tab:orange", lw=1.0)
        ax.set_title(f"ID {p['id']}", fontsize=9)
        if log:
            ax.set_yscale("log")
        if k // ncols == nrows - 1 or k + ncols >= len(panels):
            ax.set_xlabel(label("time", time_unit), fontsize=8)
        if k % ncols == 0:
            ax.set_ylabel(label("DV", dv_unit), fontsize=8)
    fig.legend(["DV", "IPRED", "PRED"], loc="lower center", ncols=3, fontsize=8)
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(**grid_margins(fig, nrows, ncols, top=0.6 if title else 0.35,
                                       bottom=0.8))  # the legend below the panels
    return fig


# ------------------------------------------------------------- the command's figure files


def vpc_file(path, panels: list[dict], log: bool = False) -> None:
    """``vpc.png``: one VPC (:func:`draw_vpc` keyword arguments) under the other."""
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 4.5 * len(panels)), squeeze=False)
    for ax, panel in zip(axes[:, 0], panels, strict=True):
        draw_vpc(ax, log=log, **panel)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def gof_file(path, parts: list[dict]) -> None:
    """``gof.png``: one goodness-of-fit block (:func:`draw_gof` keyword arguments) under
    the other."""
    fig = plt.figure(figsize=(11, 7 * len(parts)))
    for sub, part in zip(np.atleast_1d(fig.subfigures(len(parts), 1)), parts, strict=True):
        draw_gof(fig=sub, **part)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def individual_files(pdf_path, png_path, pages: list[dict]) -> None:
    """``individual.pdf`` (every page: :func:`draw_individual` keyword arguments) and
    ``individual.png`` (the first page)."""
    with PdfPages(pdf_path) as pdf:
        for k, page in enumerate(pages):
            fig = draw_individual(**page)
            pdf.savefig(fig)
            if k == 0:
                fig.savefig(png_path, dpi=DPI)
            plt.close(fig)


#: what :func:`serve` runs, by name
JOBS = {"vpc": vpc_file, "gof": gof_file, "individual": individual_files}


def serve(requests=None, replies=None, parallel: int = 1) -> None:
    """Run jobs ``(ticket, name, kwargs)`` read from ``requests`` (default: stdin) until it
    ends, each answered ``(ticket, None)`` or ``(ticket, traceback text)`` on ``replies``
    (default: the original stdout; anything printed goes to stderr), both pickled, a
    request after its length (:func:`frame`). With ``parallel`` > 1 and ``os.fork``, up
    to that many jobs at once, each in a child process forked from this one (matplotlib
    already loaded: a fork costs ~10 ms), answered as they finish."""
    matplotlib.use("Agg")  # files only, also without a display
    if requests is None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the command handles Ctrl-C
        if hasattr(os, "nice"):
            os.nice(10)  # the command's own work first: this one mostly waits for it
        requests = sys.stdin.buffer.raw
        replies = os.fdopen(os.dup(1), "wb")
        os.dup2(2, 1)  # a stray print must not corrupt the replies
    if parallel > 1 and hasattr(os, "fork"):
        _serve_forking(requests, replies, parallel)
        return
    while (request := _read_frame(requests)) is not None:  # one job after the other
        ticket, name, kwargs = request
        _answer(replies, ticket, _run(name, kwargs))


def _serve_forking(requests, replies, parallel: int) -> None:
    """:func:`serve`'s loop with up to ``parallel`` children drawing at once: requests
    are read while fewer are running, answers passed on as the children end."""
    running: dict[int, tuple] = {}  # the read end of a child's pipe -> (ticket, pid, data)
    selector = selectors.DefaultSelector()
    more = True
    while more or running:
        if more and len(running) < parallel:
            selector.register(requests, selectors.EVENT_READ)
        for key, _ in selector.select():
            if key.fileobj is requests:
                request = _read_frame(requests)
                if request is None:
                    more = False
                else:
                    _fork(*request, running, selector, replies)
            else:
                _child_output(key.fileobj, running, selector, replies)
        if requests in selector.get_map():
            selector.unregister(requests)


def frame(message) -> bytes:
    """``message`` pickled, after its length (8 bytes): what :func:`serve` reads."""
    data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    return struct.pack("<Q", len(data)) + data


def _read_frame(stream):
    """The next message of ``stream`` (:func:`frame`), ``None`` at its end."""
    head = _read_exactly(stream, 8)
    if head is None:
        return None
    body = _read_exactly(stream, struct.unpack("<Q", head)[0])
    return None if body is None else pickle.loads(body)


def _read_exactly(stream, n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _run(name: str, kwargs: dict) -> str | None:
    try:
        JOBS[name](**kwargs)
    except Exception:  # reported to the command, which raises it
        return traceback.format_exc()
    return None


def _answer(replies, ticket: int, error: str | None) -> None:
    pickle.dump((ticket, error), replies)
    replies.flush()


def _fork(ticket: int, name: str, kwargs: dict, running: dict, selector, replies) -> None:
    """Draw job ``name`` in a child process, which writes its answer into a pipe (here,
    when no process can be forked)."""
    read, write = os.pipe()
    try:
        pid = os.fork()
    except OSError:  # e.g. a limit on processes: this job here, then the next
        os.close(read)
        os.close(write)
        _answer(replies, ticket, _run(name, kwargs))
        return
    if pid == 0:  # the child: draw, answer, and leave without Python's clean-up
        os.close(read)
        with os.fdopen(write, "wb") as out:
            out.write(pickle.dumps(_run(name, kwargs)))
        os._exit(0)
    os.close(write)
    reader = os.fdopen(read, "rb", buffering=0)
    running[reader.fileno()] = (ticket, pid, [])
    selector.register(reader, selectors.EVENT_READ, reader.fileno())


def _child_output(reader, running: dict, selector, replies) -> None:
    """Read a child's answer; at its end, pass it on."""
    ticket, pid, data = running[reader.fileno()]
    chunk = reader.read(65536)
    if chunk:
        data.append(chunk)
        return
    selector.unregister(reader)
    del running[reader.fileno()]
    reader.close()
    _, status = os.waitpid(pid, 0)
    try:
        error = pickle.loads(b"".join(data))
    except Exception:
        error = f"the process drawing it ended without an answer (wait status {status})"
    _answer(replies, ticket, error)


if __name__ == "__main__":
    serve(parallel=int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    # every file is closed and every reply flushed: skip the interpreter's clean-up of
    # matplotlib and pandas (~0.4 s), which the command would otherwise wait for
    os._exit(0)
