"""The report's plots, drawn with matplotlib (Agg: no display needed).

`draw_metrics(runs, path)` writes the training metrics against the step,
every checkpoint marked by its category; `draw_served(data, path)` writes
the served versions and labels of each model over time. Both write a PNG to
`path` and nothing else; matplotlib is imported when they run, not when this
module is imported.
"""

from __future__ import annotations

import datetime
from typing import Sequence

from ckptflow.components import promotion
from ckptflow.operations.report.collect import CATEGORIES, ReportData, TrainingRun

MAX_RUNS_PLOTTED = 6

CATEGORY_STYLE = {
    "pruned": {"marker": "x", "color": "#8c8c8c", "s": 36},
    "abandoned": {"marker": "X", "color": "#d62728", "s": 64},
    "kept": {"marker": "o", "color": "#1f77b4", "s": 40},
    "exported": {"marker": "s", "color": "#ff7f0e", "s": 56},
    "promoted": {"marker": "D", "color": "#9467bd", "s": 60},
    "served": {"marker": "*", "color": "#2ca02c", "s": 200},
}

def _figure(width: float, height: float):
  import matplotlib
  matplotlib.use("Agg", force=False)  # no display; must precede any pyplot import
  from matplotlib.figure import Figure
  return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _metric_names(runs: Sequence[TrainingRun]) -> list[str]:
  names = set()
  for run in runs:
    for c in run.checkpoints:
      names |= set(c.record.metrics)
  return sorted(n for n in names if not n.endswith("_at_step"))


def runs_to_plot(runs: Sequence[TrainingRun]) -> list[TrainingRun]:
  """The newest runs, plus any run with a served, promoted or exported
  checkpoint."""
  notable = [r for r in runs if any(c.category in ("served", "promoted", "exported")
                                    for c in r.checkpoints)]
  chosen = {id(r) for r in list(runs)[-MAX_RUNS_PLOTTED:]} | {id(r) for r in notable}
  return [r for r in runs if id(r) in chosen]


def draw_metrics(runs: Sequence[TrainingRun], path: str) -> None:
  """Training metrics by step (loss and other metrics apart), a line per
  metric and run: the event-file scalars where there are at least as many
  as checkpoints, else the checkpoints' metrics. Writes a PNG to `path`."""
  figure = _figure(11, 7)
  plotted = runs_to_plot(runs)
  names = _metric_names(plotted)
  groups = [("loss", [n for n in names if "loss" in n]),
            ("other metrics", [n for n in names if "loss" not in n])]
  groups = [(title, group) for title, group in groups if group] or [("metrics", [])]
  axes = figure.subplots(len(groups), 1, sharex=True, squeeze=False)[:, 0]
  colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
            "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
  styles = ["-", "--", ":", "-."]
  seen_categories: set[str] = set()
  for ax, (title, group) in zip(axes, groups):
    for run_index, run in enumerate(plotted):
      suffix = f" (run {run.short})" if len(plotted) > 1 else ""
      for metric_index, name in enumerate(group):
        color = colors[metric_index % len(colors)]
        style = styles[run_index % len(styles)]
        points = sorted((c.record.step, c.record.metrics[name]) for c in run.checkpoints
                        if name in c.record.metrics)
        dense = run.scalars.get(name)
        line = dense if dense and len(dense) >= len(points) else points
        if line:
          ax.plot([s for s, _ in line], [v for _, v in line], linestyle=style, color=color,
                  linewidth=1.0 if dense else 1.5, alpha=0.8, label=name + suffix)
        for category in CATEGORIES:
          marked = [(c.record.step, c.record.metrics[name]) for c in run.checkpoints
                    if c.category == category and name in c.record.metrics]
          if marked:
            style_kw = CATEGORY_STYLE[category]
            outline = {"edgecolors": "black", "linewidths": 0.6} if category == "served" else {}
            ax.scatter([s for s, _ in marked], [v for _, v in marked], zorder=3,
                       marker=style_kw["marker"], s=style_kw["s"], color=style_kw["color"],
                       **outline)
            seen_categories.add(category)
    ax.set_title(title, loc="left", fontsize=11)
    ax.grid(True, alpha=0.3)
    if group:
      ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    else:
      ax.text(0.5, 0.5, "no checkpoint in the metadata store", ha="center", va="center",
              transform=ax.transAxes, fontsize=12, color="#555555")
  axes[-1].set_xlabel("training step")
  if seen_categories:
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], linestyle="none", marker=CATEGORY_STYLE[c]["marker"],
                      color=CATEGORY_STYLE[c]["color"], markersize=9 if c == "served" else 7,
                      markeredgecolor="black" if c == "served" else CATEGORY_STYLE[c]["color"],
                      label=f"checkpoint {c}") for c in CATEGORIES if c in seen_categories]
    figure.legend(handles=handles, loc="outside lower center", ncol=len(handles),
                  fontsize=9, frameon=False)
  figure.suptitle("training metrics by step, checkpoints marked", fontsize=12)
  figure.savefig(path, format="png")


def _when(text: str) -> datetime.datetime:
  return datetime.datetime.fromisoformat(text)


def draw_served(data: ReportData, path: str) -> None:
  """Per model: every push, and which version each label pointed at, when.
  Writes a PNG to `path`."""
  models = sorted({r.model_name for r in data.served})
  figure = _figure(11, max(3.2, 2.8 * len(models)))
  if not models:
    ax = figure.subplots()
    ax.set_axis_off()
    ax.text(0.5, 0.5, "no served version recorded in the metadata store", ha="center",
            va="center", transform=ax.transAxes, fontsize=12, color="#555555")
    figure.savefig(path, format="png")
    return
  import matplotlib.dates as mdates
  from matplotlib.ticker import MaxNLocator
  axes = figure.subplots(len(models), 1, squeeze=False)[:, 0]
  now = datetime.datetime.now(datetime.timezone.utc)
  label_colors = {"stable": "#2ca02c", "canary": "#ff7f0e"}
  extra_colors = iter(["#9467bd", "#8c564b", "#17becf", "#e377c2", "#7f7f7f"])
  for ax, model in zip(axes, models):
    records = [r for r in data.served if r.model_name == model]
    pushes = [(_when(r.pushed_at), r.version) for r in records]
    ax.scatter([t for t, _ in pushes], [v for _, v in pushes], marker="^", s=60,
               color="#1f77b4", zorder=3, label="push (new version)")
    history = data.labels.get(model, [])
    by_label: dict[str, list[promotion.LabelChange]] = {}
    for change in history:
      by_label.setdefault(change.label, []).append(change)
    for label, changes in sorted(by_label.items()):
      color = label_colors.get(label) or next(extra_colors, "#333333")
      times = [_when(c.changed_at) for c in changes] + [now]
      versions = [c.version for c in changes]
      ax.step(times, versions + versions[-1:], where="post", color=color, linewidth=2,
              alpha=0.8, label=f"label {label}")
      for change in changes:
        if change.reason == "rollback":
          ax.annotate("rollback", (_when(change.changed_at), change.version),
                      textcoords="offset points", xytext=(4, 6), fontsize=8, color=color)
    served_now = sorted(data.serving_now.get(model, ()))
    ax.set_title(f"{model}: served versions over time (models.config serves "
                 f"{', '.join(map(str, served_now)) or 'none'})", loc="left", fontsize=11)
    ax.set_ylabel("version")
    top = max([v for _, v in pushes] + [c.version for c in history])
    ax.set_ylim(0.5, top + 0.5)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
  axes[-1].set_xlabel("time (UTC)")
  figure.savefig(path, format="png")
