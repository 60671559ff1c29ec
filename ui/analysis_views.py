"""Cached loaders, plotly figures and small widgets for the error-analysis page (pages/analysis.py)."""

from __future__ import annotations

import io
import re
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.analysis.files import model_classes, read_predictions
from core.analysis.metrics import classes_of
from core.cohort.labels import read_labels
from ui.safe import md

RIGHT, WRONG = "#2e7d32", "#c62828"


def _mtime(path: Path) -> float:
    return path.stat().st_mtime if path.is_file() else 0.0


@st.cache_data(show_spinner=False, max_entries=32)
def _predictions(path: str, mtime: float) -> pd.DataFrame:
    return read_predictions(path)


def predictions(path: Path) -> pd.DataFrame:
    """A predictions CSV (validated), cached until the file changes; ``InputError`` naming the file otherwise."""
    return _predictions(str(path), _mtime(path))


@st.cache_data(show_spinner=False, max_entries=8)
def _given(path: str, mtime: float) -> pd.DataFrame:
    return read_labels(path).df


def given_labels(path: Path | None) -> pd.DataFrame | None:
    """The labels file's table (for ``given_label`` and breakdown columns), cached until it changes."""
    return _given(str(path), _mtime(path)) if path is not None and path.is_file() else None


def classes_for(preds: pd.DataFrame, model_dir: Path) -> list[str]:
    """The model's classes (model.json) or, for predictions made elsewhere, those of the predictions' columns."""
    return model_classes(model_dir) or classes_of(preds)


@st.cache_data(show_spinner=False, max_entries=512)
def _thumb(path: str, mtime: float, size: int, cache_dir: str | None) -> bytes | None:
    from core.errors import SlideLensError
    from core.slides.thumbnails import quick_thumbnail

    try:  # the slide's ready-made thumbnail file (UBC-OCEAN), else the slide; None: an image not converted yet
        img = quick_thumbnail(path, size, cache_dir)
    except (SlideLensError, OSError):
        return None
    if img is None:
        return None
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def thumbnail_jpeg(path: Path | None, size: int = 160, cache_dir: Path | None = None) -> bytes | None:
    """A small JPEG thumbnail of a slide (cached), or ``None`` if the slide is missing or unreadable."""
    if path is None:
        return None
    return _thumb(str(path), _mtime(Path(path)), size, str(cache_dir) if cache_dir else None)


def viewer_link(image_id: str, version: str) -> str:
    """The viewer URL for a slide with a model's attention overlay."""
    return "/viewer?" + urlencode({"slide": image_id, "model": version})


def confusion_figure(cm: pd.DataFrame, normalized: bool, selected: tuple[str, str] | None = None,
                     interactive: bool = True) -> go.Figure:
    """Heatmap of the confusion matrix (true on y, predicted on x); ``interactive`` adds a clickable marker per cell
    (for selection in the page), otherwise the figure is the clean one for export."""
    classes_y, classes_x = [str(c) for c in cm.index], [str(c) for c in cm.columns]
    z = cm.to_numpy(float)
    text = [[f"{v:.2f}" if normalized else f"{int(v)}" for v in row] for row in z]
    fig = go.Figure(go.Heatmap(z=z, x=classes_x, y=classes_y, colorscale="Blues", showscale=True,
                               text=text, texttemplate=None if interactive else "%{text}",
                               hovertemplate="true %{y}<br>predicted %{x}<br>%{z}<extra></extra>"))
    if not interactive:
        fig.update_layout(xaxis_title="predicted", yaxis_title="true", yaxis_autorange="reversed",
                          title="Confusion matrix (" + ("row-normalised" if normalized else "counts") + ")",
                          margin={"l": 90, "r": 30, "t": 60, "b": 70}, font={"size": 16})
        return fig
    xs, ys, cd, txt = [], [], [], []
    for i, t in enumerate(classes_y):
        for j, p in enumerate(classes_x):
            xs.append(p)
            ys.append(t)
            cd.append([t, p])
            txt.append(text[i][j])
    hi = float(np.nanmax(z)) if z.size else 0.0
    colors = ["white" if hi and v > hi * 0.6 else "black" for v in z.ravel()]
    # Invisible-ish markers make every cell selectable by a click (heatmaps have no point selection of their own).
    fig.add_trace(go.Scatter(x=xs, y=ys, customdata=cd, mode="markers+text", text=txt, textfont={"color": colors},
                             marker={"symbol": "square", "size": 40, "opacity": 0.01, "color": "grey"},
                             hovertemplate="true %{customdata[0]}<br>predicted %{customdata[1]}<br>%{text}"
                                           "<extra>click to list slides</extra>", showlegend=False))
    if selected:
        fig.add_shape(type="rect", xref="x", yref="y", line={"color": "orange", "width": 3},
                      x0=classes_x.index(selected[1]) - 0.5, x1=classes_x.index(selected[1]) + 0.5,
                      y0=classes_y.index(selected[0]) - 0.5, y1=classes_y.index(selected[0]) + 0.5)
    fig.update_layout(xaxis_title="predicted", yaxis_title="true", yaxis_autorange="reversed",
                      margin={"l": 10, "r": 10, "t": 30, "b": 10}, height=120 + 60 * len(classes_y),
                      title="row-normalised" if normalized else "counts", clickmode="event+select", dragmode=False)
    return fig


def reliability_figure(table: pd.DataFrame, ece: float) -> go.Figure:
    """Reliability diagram: accuracy per confidence bin against the diagonal of perfect calibration."""
    t = table[table["count"] > 0]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dash", "color": "grey"},
                             name="perfect calibration"))
    fig.add_trace(go.Bar(x=(t["lo"] + t["hi"]) / 2, y=t["accuracy"], width=(t["hi"] - t["lo"]) * 0.9,
                         name="accuracy", customdata=t[["count", "mean_confidence"]],
                         hovertemplate="accuracy %{y:.2f}<br>mean confidence %{customdata[1]:.2f}"
                                       "<br>%{customdata[0]} slides<extra></extra>"))
    fig.add_trace(go.Scatter(x=t["mean_confidence"], y=t["accuracy"], mode="markers", name="mean confidence"))
    fig.update_layout(title=f"Reliability (ECE {ece:.3f})", xaxis_title="confidence", yaxis_title="accuracy",
                      xaxis_range=[0, 1], yaxis_range=[0, 1.02], height=360, margin={"t": 40, "b": 10})
    return fig


def confidence_histogram(df: pd.DataFrame) -> go.Figure:
    """Histogram of confidence for right and wrong predictions."""
    fig = go.Figure()
    for ok, name, color in ((True, "right", RIGHT), (False, "wrong", WRONG)):
        fig.add_trace(go.Histogram(x=df.loc[df["correct"] == ok, "confidence"], name=name, marker_color=color,
                                   opacity=0.65, xbins={"start": 0, "end": 1.0001, "size": 0.05}))
    fig.update_layout(barmode="overlay", title="Confidence of right and wrong predictions", xaxis_title="confidence",
                      yaxis_title="slides", height=360, margin={"t": 40, "b": 10})
    return fig


def coverage_figure(curve: pd.DataFrame, threshold: float) -> go.Figure:
    """Coverage and balanced accuracy as the confidence threshold rises, with the chosen threshold marked."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=curve["threshold"], y=curve["coverage"], name="coverage", mode="lines"))
    fig.add_trace(go.Scatter(x=curve["threshold"], y=curve["balanced_accuracy"], name="balanced accuracy",
                             mode="lines"))
    fig.add_vline(x=threshold, line_dash="dot", line_color="orange")
    fig.update_layout(title="Coverage vs balanced accuracy", xaxis_title="confidence threshold",
                      yaxis_range=[0, 1.02], height=360, margin={"t": 40, "b": 10})
    return fig


def impact_figure(impact: pd.DataFrame, top: int = 10) -> go.Figure:
    """Horizontal bars: balanced-accuracy gain if each (true -> predicted) error pair were fixed."""
    t = impact.head(top).iloc[::-1]
    fig = go.Figure(go.Bar(x=t["ba_gain"], y=[f"{a} → {b}" for a, b in zip(t["true"], t["pred"], strict=True)],
                           orientation="h", text=t["count"], hovertemplate="+%{x:.3f} balanced accuracy"
                                                                           "<br>%{text} slides<extra></extra>"))
    fig.update_layout(title="Balanced-accuracy gain if fixed", xaxis_title="gain", height=120 + 28 * len(t),
                      margin={"t": 40, "b": 10})
    return fig


def table_with_download(df: pd.DataFrame, name: str, key: str, **kwargs: object) -> None:
    """Show a table and a CSV download button for exactly what is shown (in a container keyed ``<key>_box``).

    ``name`` may hold user text (a labels-file column): it is shown as text and made safe as a file name.
    """
    safe = re.sub(r"[^\w.-]+", "_", name).strip("._") or "table"
    with st.container(key=f"{key}_box"):
        st.dataframe(df, hide_index=True, **kwargs)
        st.download_button(f"Download {md(safe)}.csv", df.to_csv(index=False).encode(), file_name=f"{safe}.csv",
                           mime="text/csv", key=f"{key}_csv", on_click="ignore")


VIEWER_COLUMN = {"viewer": st.column_config.LinkColumn("viewer", display_text="open", width="small",
                                                       help="open the slide in the viewer with this model's attention")}


def with_viewer_links(df: pd.DataFrame, version: str) -> pd.DataFrame:
    """``df`` with a ``viewer`` link column right after ``image_id`` (never the column a narrow table cuts)."""
    out = df.copy()
    out.insert(1 if "image_id" in out.columns else 0, "viewer",
               [viewer_link(i, version) for i in out["image_id"]] if "image_id" in out.columns else [])
    return out


def figure_downloads(fig: go.Figure, name: str, key: str) -> None:
    """PNG/SVG (rendered by kaleido only when clicked) and HTML downloads of a figure."""
    cols = st.columns(3, width=360)
    for col, fmt, mime in ((cols[0], "png", "image/png"), (cols[1], "svg", "image/svg+xml")):
        with col:
            st.download_button(f"{fmt.upper()}", data=lambda f=fmt: render_figure(fig, f), file_name=f"{name}.{fmt}",
                               mime=mime, key=f"{key}_{fmt}", on_click="ignore")
    with cols[2]:
        # self-contained (plotly.js inside) so it opens offline; built only when clicked
        st.download_button("HTML", data=lambda: fig.to_html(include_plotlyjs=True).encode(), file_name=f"{name}.html",
                           mime="text/html", key=f"{key}_html", on_click="ignore")


def render_figure(fig: go.Figure, fmt: str) -> bytes:
    """The figure as PNG or SVG bytes (kaleido); empty bytes and a page error if it cannot render."""
    try:
        return fig.to_image(format=fmt, width=900, height=700)
    except Exception as exc:  # kaleido needs a local Chrome; say so instead of failing the page
        st.error(f"could not render {fmt.upper()} ({type(exc).__name__}); download the HTML instead")
        return b""


def annotations_tab(cohort: object, store: object, version: str) -> None:
    """Slides where the model looks elsewhere first: its attention against the reviewers' tumour annotations."""
    from core.review.annotation_metrics import cohort_inside_for_version

    table = cohort_inside_for_version(cohort, store, version)
    if table.empty:
        st.info("No slide has tumour annotations and attention from this model yet: outline tumour in the viewer "
                "or import QuPath GeoJSON (`python -m core annotations import`).")
        return
    st.caption(md(f"The final model's attention ({version}, as the overlay shows it) against tumour-class "
                  "annotations: share of attention inside, AUROC of attention inside against outside, and whether "
                  "the most-attended patch is inside. Slides where the model looks elsewhere first come first."))
    table_with_download(with_viewer_links(table, version), "attention_vs_annotations", "an_annotations",
                        column_config=VIEWER_COLUMN)
