"""Training figures as PNG bytes: the two learning curves, and how the error grows per step."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from gradparity.core import escape
from gradparity.report.plots import FLOOR, _png

_KIND_STYLE = {"loss": "tab:red", "grad": "tab:orange", "param": "tab:blue", "state": "tab:green"}


def training_curves(history: pd.DataFrame, name: str = "") -> bytes:
    """Loss per step (both sides) and, where scored, validation accuracy, in one figure.

    history: one row per step with columns step, loss_ours, loss_ref and optionally
    val_acc_ours, val_acc_ref (NaN on steps that were not scored).
    """
    fig = Figure(figsize=(10, 4.5))
    ax = fig.add_axes((0.08, 0.13, 0.78 if "val_acc_ours" in history else 0.88, 0.75))
    ax.plot(history["step"], history["loss_ours"], color="tab:blue", lw=2.2, label="loss, ours")
    ax.plot(
        history["step"],
        history["loss_ref"],
        color="tab:orange",
        lw=1,
        ls="--",
        label="loss, reference",
    )
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("training loss (batch)")
    name = escape.plot_text(name)
    ax.set_title(f"{name}: learning curves, ours and reference" if name else "learning curves")
    handles, labels = ax.get_legend_handles_labels()
    if "val_acc_ours" in history:
        scored = history.dropna(subset=["val_acc_ours"])
        acc = ax.twinx()
        acc.plot(
            scored["step"],
            scored["val_acc_ours"],
            "o-",
            color="tab:green",
            ms=3,
            label="validation accuracy, ours",
        )
        acc.plot(
            scored["step"],
            scored["val_acc_ref"],
            "x--",
            color="tab:purple",
            ms=4,
            lw=1,
            label="validation accuracy, reference",
        )
        acc.set_ylabel("validation accuracy")
        acc.set_ylim(0, 1.02)
        more_h, more_l = acc.get_legend_handles_labels()
        handles, labels = handles + more_h, labels + more_l
    ax.legend(handles, labels, loc="center right", fontsize="small")
    return _png(fig)


def error_growth(history: pd.DataFrame, name: str = "") -> bytes:
    """Largest error per quantity kind and step relative to the allowed error (log scale).

    history columns err_loss, err_grad, err_param, err_state: |ours - reference| over the
    allowed error at the worst element (0 exact, above 1 diverged, inf no comparable value).
    """
    fig = Figure(figsize=(10, 4.5))
    ax = fig.add_axes((0.09, 0.13, 0.88, 0.75))
    top = FLOOR
    for kind, colour in _KIND_STYLE.items():
        column = f"err_{kind}"
        if column not in history:
            continue
        values = history[column].to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        top = max(top, float(finite.max()) if finite.size else top)
        ax.plot(
            history["step"],
            np.clip(np.nan_to_num(values, posinf=np.inf), FLOOR, None),
            color=colour,
            lw=1.5,
            label=kind,
        )
    ax.axhline(1.0, color="black", ls="--", lw=1, label="tolerance")
    ax.set_yscale("log")
    ax.set_ylim(FLOOR / 2, max(10.0, top * 10))
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"error / allowed error (log; exact at {FLOOR:g})")
    name = escape.plot_text(name)
    ax.set_title(f"{name}: error growth per step" if name else "error growth per step")
    ax.legend(loc="upper left", fontsize="small")
    return _png(fig)
