"""A self-contained HTML report from tables and figure data.

Every figure is drawn from the same plain data that goes to ``figures.json`` (lists of numbers keyed by
series), so the page and the JSON cannot disagree. Images are embedded as base64 PNG and the style is
inline: the file opens anywhere, offline, with nothing beside it.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f2f2f2; }
figure { display: inline-block; margin: .5em 1em .5em 0; vertical-align: top; }
figcaption { font-size: .85em; color: #555; max-width: 640px; }
.note { color: #555; font-size: .9em; }
pre { background: #f6f6f6; padding: .6em; overflow-x: auto; font-size: .85em; }
"""


@dataclass
class Table:
    caption: str
    columns: list[str]
    rows: list[list[Any]]


@dataclass
class Section:
    title: str
    tables: list[Table] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)  # keys into the figure data
    notes: list[str] = field(default_factory=list)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if np.isnan(value) else f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return html.escape(str(value))


def render_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td class='n'>{_cell(v)}</td>" if isinstance(v, (int, float))
                                    else f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in table.rows)
    return f"<table><caption>{html.escape(table.caption)}</caption><thead><tr>{head}</tr></thead>" \
           f"<tbody>{body}</tbody></table>"


# ---- figures: each takes its data (as in figures.json) and draws on a new matplotlib figure ----

def _lines(ax: Any, series: dict[str, dict[str, list[float]]], x: str, ys: tuple[str, ...]) -> None:
    for name, data in series.items():
        for y in ys:
            if y in data:
                ax.plot(data[x], data[y], lw=1.2, label=f"{name} {y}" if len(ys) > 1 else name)


def draw_roc(data: dict[str, Any]) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    for name, curve in data["series"].items():
        ax.plot(curve["fpr"], curve["tpr"], lw=1.4, label=f"{name} (AUC {curve['auc_mean']:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=data["title"])
    ax.legend(loc="lower right", fontsize=7)
    return fig


def draw_curves(data: dict[str, Any]) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    _lines(ax, data["series"], data["x"], tuple(data["y"]))
    ax.set(xlabel=data["x"], ylabel=data.get("ylabel", "loss"), title=data["title"])
    ax.legend(fontsize=7, ncol=2)
    return fig


def draw_bars(data: dict[str, Any]) -> plt.Figure:
    names, values = list(data["values"]), list(data["values"].values())
    fig, ax = plt.subplots(figsize=(5.6, 0.6 + 0.35 * len(names)))
    ax.barh(names, values, xerr=data.get("errors"), color="C0")
    ax.set(xlabel=data["xlabel"], title=data["title"])
    return fig


def draw_reconstruction(data: dict[str, Any]) -> plt.Figure:
    series = data["series"]
    fig, axes = plt.subplots(len(series), 1, figsize=(9, 1.5 * len(series) + 0.5), squeeze=False)
    for ax, (name, example) in zip(axes[:, 0], series.items()):
        true, predicted, window = np.asarray(example["true"]), np.asarray(example["predicted"]), example["window"]
        ax.plot(true, "k", lw=1, label="true")
        ax.plot(predicted, "C1", lw=1, label="predicted")
        for token in example["hidden"]:
            ax.axvspan(token * window, (token + 1) * window, color="0.85", zorder=0)
        ax.set_ylabel(name, rotation=0, ha="right")
    axes[0, 0].legend(loc="upper right", fontsize=7)
    axes[0, 0].set_title(data["title"])
    axes[-1, 0].set_xlabel(data["xlabel"])
    return fig


DRAW: dict[str, Callable[[dict[str, Any]], plt.Figure]] = {
    "roc": draw_roc, "curves": draw_curves, "bars": draw_bars, "reconstruction": draw_reconstruction,
}


def figure_png(data: dict[str, Any]) -> bytes:
    fig = DRAW[data["kind"]](data)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def render_html(title: str, sections: list[Section], figures: dict[str, dict[str, Any]],
                footer: str = "") -> str:
    """The page: sections in order, each with its tables, figures (by key of ``figures``) and notes."""
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    for section in sections:
        parts.append(f"<section><h2>{html.escape(section.title)}</h2>")
        parts += [f"<p class='note'>{html.escape(n)}</p>" for n in section.notes]
        parts += [render_table(t) for t in section.tables]
        for key in section.figures:
            png = base64.b64encode(figure_png(figures[key])).decode()
            parts.append(f"<figure id='fig-{html.escape(key)}'><img alt='{html.escape(figures[key]['title'])}' "
                         f"src='data:image/png;base64,{png}'><figcaption>{html.escape(figures[key]['title'])}"
                         f" (data: figures.json[&quot;{html.escape(key)}&quot;])</figcaption></figure>")
        parts.append("</section>")
    parts.append(f"<footer><pre>{html.escape(footer)}</pre></footer></body></html>")
    return "\n".join(parts)
