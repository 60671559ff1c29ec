"""Plotly figures and the per-version panel of the training page (pages/training.py)."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from core.model import history
from ui.safe import md

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#7f7f7f"]


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _band(fig: go.Figure, part, name: str, colour: str, dash: str | None = None) -> None:
    """A mean line with its min-max band over the folds."""
    fig.add_trace(go.Scatter(x=list(part["epoch"]) + list(part["epoch"])[::-1],
                             y=list(part["hi"]) + list(part["lo"])[::-1], fill="toself", line={"width": 0},
                             fillcolor=_rgba(colour, 0.15), hoverinfo="skip", showlegend=False, legendgroup=name))
    fig.add_trace(go.Scatter(x=part["epoch"].tolist(), y=part["mean"].tolist(), mode="lines+markers", name=name,
                             legendgroup=name, line={"color": colour, "dash": dash},
                             customdata=part[["lo", "hi", "n_folds"]].to_numpy().tolist(),
                             hovertemplate=f"{name}<br>epoch %{{x}}: %{{y:.3f}} (folds %{{customdata[0]:.2f}}-"
                                           "%{customdata[1]:.2f}, n=%{customdata[2]})<extra></extra>"))


def _mark_chosen(fig: go.Figure, hist) -> None:
    chosen = sorted(history.chosen_epochs(hist).values())
    if not chosen:
        return
    mid = chosen[len(chosen) // 2]
    fig.add_vline(x=mid, line={"color": "#444", "dash": "dot"},
                  annotation_text=f"chosen (median {mid}; folds {', '.join(map(str, chosen))})",
                  annotation_position="top left")


def class_curve_figure(hist, metric: str = "recall") -> go.Figure:
    """Per-class ``metric`` by epoch: mean over the folds with a min-max band; the chosen epoch marked."""
    classes = history.history_classes(hist)
    data = history.curves(hist, [f"{metric}_{c}" for c in classes])
    fig = go.Figure()
    for i, c in enumerate(classes):
        part = data[data["series"] == f"{metric}_{c}"]
        if len(part):
            _band(fig, part, c, PALETTE[i % len(PALETTE)])
    _mark_chosen(fig, hist)
    fig.update_layout(height=360, margin={"l": 10, "r": 10, "t": 30, "b": 10}, yaxis={"range": [-0.02, 1.02]},
                      xaxis_title="epoch", yaxis_title=f"held-out {metric}", legend_title="class")
    return fig


def loss_figure(hist) -> go.Figure:
    """Training loss and held-out loss by epoch (mean over folds, band), the final model's training loss, chosen epoch."""
    data = history.curves(hist, ["train_loss", "val_loss", "stop_loss"])
    fig = go.Figure()
    names = {"train_loss": ("training", PALETTE[0], None), "val_loss": ("held-out fold", PALETTE[1], None),
             "stop_loss": ("early-stopping split", PALETTE[2], "dash")}
    for series, (name, colour, dash) in names.items():
        part = data[data["series"] == series].dropna(subset=["mean"])
        if len(part):
            _band(fig, part, name, colour, dash)
    final = hist[hist["fold"] == history.FINAL_FOLD]
    if len(final):
        fig.add_trace(go.Scatter(x=final["epoch"].tolist(), y=final["train_loss"].tolist(), mode="lines", name="final model (training)",
                                 line={"color": "#7f7f7f", "dash": "dot"}))
    _mark_chosen(fig, hist)
    fig.update_layout(height=320, margin={"l": 10, "r": 10, "t": 30, "b": 10}, xaxis_title="epoch",
                      yaxis_title="cross-entropy")
    return fig


def version_panel(version: str, meta: dict, hist, metric: str, key: str) -> None:
    """Curves, losses and the lagging-classes table of one version."""
    folds = history.fold_rows(hist)
    st.markdown(f"**{md(version)}** · {md(str(meta.get('model', '?')))} · {folds['fold'].nunique()} folds · "
                f"out-of-fold balanced accuracy {(meta.get('metrics') or {}).get('oof_balanced_accuracy', float('nan')):.3f}")
    st.caption("Scored after every epoch on each fold's held-out slides (given labels of the training run); "
               "line = mean over folds, band = min-max over folds.")
    st.plotly_chart(class_curve_figure(hist, metric), key=f"{key}_curves")
    st.plotly_chart(loss_figure(hist), key=f"{key}_loss")
    lag = history.lagging_classes(hist)
    st.markdown("**Lagging classes** (held-out recall at each fold's chosen epoch)")
    n_lag = int(lag["lagging"].sum()) if len(lag) else 0
    st.caption(md(f"{n_lag} class(es) trail the others' mean by more than 0.10" if n_lag
                  else "no class trails the others' mean by more than 0.10"))
    st.dataframe(lag, key=f"{key}_lagging", hide_index=True,
                 column_config={"recall_at_chosen": st.column_config.NumberColumn(format="%.3f"),
                                "others_mean": st.column_config.NumberColumn(format="%.3f"),
                                "gap": st.column_config.NumberColumn(format="%.3f")})
