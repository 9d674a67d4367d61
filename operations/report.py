"""`ckptflow report`: a home's training runs and served versions as pictures.

`write_report(store, out_dir, serving_root=...)` reads everything from ML
Metadata and the files it points to, and writes into `out_dir`:

* `metrics.png`: train and eval metrics against the training step, one
  line per metric and training run. The lines are the per-step scalars of
  the Trainer's TensorBoard event files (the `tensorboard/` folder of each
  Trainer execution's ModelRun artifact) where those files are readable,
  otherwise the checkpoints' own `metrics`. Every checkpoint is marked on
  every curve, its marker saying what became of it: pruned (DELETED),
  abandoned (ABANDONED: damaged files), kept (LIVE), exported / promoted
  (custom property `protected`), served (the Model behind a version that
  models.config serves was exported from it).
* `served.png`: served versions over time, per model: every push, and
  which version each label (stable, canary, ...) pointed at, when.
* `lineage-<model>.svg`: the lineage graph of each model's stable version
  (graphviz `dot`, as `ckptflow lineage --format svg`).
* `index.html`: the pictures and the tables behind them. It references
  only those files, by relative name: no script, no stylesheet and no font
  from the network, so it opens from disk without network access.

Guarantees: read-only on MLMD and on the home. Each file is written under a
temporary name and renamed into place, `index.html` last, so a reader never
sees a partial file nor an index that points at a missing one. A missing
`dot` or unreadable event files degrade the report (said in the page), they
do not fail it.

Imports neither TensorFlow nor TFX: matplotlib (Agg, no display) draws the
plots, and event files are read with TensorBoard's protobuf classes and a
TFRecord reader of our own.
"""

from __future__ import annotations

import dataclasses
import datetime
import glob
import html
import logging
import os
import struct
from typing import Iterator, Mapping, Sequence

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from ckptflow.components import checkpoint as checkpoints_lib
from ckptflow.operations import lineage as lineage_lib
from ckptflow.components import promotion
from ckptflow.components.checkpoint import CheckpointRecord
from ckptflow.base import storage
from ckptflow.base.errors import CkptflowError
from ckptflow.base.metadata import query

_log = logging.getLogger(__name__)

METRICS_PNG = "metrics.png"
SERVED_PNG = "served.png"
INDEX_HTML = "index.html"
MAX_RUNS_PLOTTED = 6

# What became of a checkpoint, lowest priority first: a checkpoint gets the
# last category that applies.
CATEGORIES = ("pruned", "abandoned", "kept", "exported", "promoted", "served")
CATEGORY_STYLE = {
    "pruned": {"marker": "x", "color": "#8c8c8c", "s": 36},
    "abandoned": {"marker": "X", "color": "#d62728", "s": 64},
    "kept": {"marker": "o", "color": "#1f77b4", "s": 40},
    "exported": {"marker": "s", "color": "#ff7f0e", "s": 56},
    "promoted": {"marker": "D", "color": "#9467bd", "s": 60},
    "served": {"marker": "*", "color": "#2ca02c", "s": 200},
}
CATEGORY_MEANING = {
    "pruned": "deleted by retention (state DELETED; record kept for lineage)",
    "abandoned": "files found damaged on resume (state ABANDONED)",
    "kept": "files present (state LIVE)",
    "exported": "exported as a SavedModel (protected from pruning)",
    "promoted": "pushed to serving (protected from pruning)",
    "served": "behind a version models.config serves now",
}


@dataclasses.dataclass(frozen=True)
class MarkedCheckpoint:
  record: CheckpointRecord
  category: str
  execution_id: int | None
  served_as: tuple[str, ...]  # "model:version (label)" it is behind


@dataclasses.dataclass
class TrainingRun:
  """The checkpoints (and event-file scalars) of one resume key."""

  resume_key: str
  checkpoints: list[MarkedCheckpoint]
  execution_ids: list[int]
  scalars: dict[str, list[tuple[int, float]]]  # tag -> [(step, value)]
  event_files: int = 0
  event_file_problems: list[str] = dataclasses.field(default_factory=list)

  @property
  def short(self) -> str:
    return self.resume_key[:8] or "(no key)"


@dataclasses.dataclass
class ReportData:
  runs: list[TrainingRun]
  served: list[promotion.ServedRecord]
  labels: dict[str, list[promotion.LabelChange]]  # model -> history
  serving_now: dict[str, set[int]]  # model -> versions models.config serves
  notes: list[str]


# --- reading -----------------------------------------------------------------


def _tfrecords(path: str) -> Iterator[bytes]:
  """The records of a TFRecord file (length, crc, data, crc). A truncated
  last record (a writer still open, or killed) ends the file."""
  with open(path, "rb") as f:
    while True:
      header = f.read(12)
      if len(header) < 12:
        return
      (length,) = struct.unpack("<Q", header[:8])
      data = f.read(length)
      if len(data) < length or len(f.read(4)) < 4:
        return
      yield data


def _scalar_value(value) -> float | None:
  """A summary value's float: TF2 summaries store a scalar tensor."""
  kind = value.WhichOneof("value")
  if kind == "simple_value":
    return float(value.simple_value)
  if kind != "tensor":
    return None
  tensor = value.tensor
  if tensor.float_val:
    return float(tensor.float_val[0])
  if tensor.double_val:
    return float(tensor.double_val[0])
  if tensor.tensor_content:
    formats = {1: "<f", 2: "<d"}  # DT_FLOAT, DT_DOUBLE
    fmt = formats.get(tensor.dtype)
    if fmt and len(tensor.tensor_content) == struct.calcsize(fmt):
      return float(struct.unpack(fmt, tensor.tensor_content)[0])
  return None


def read_event_scalars(directory: str) -> tuple[dict[str, list[tuple[int, float]]], int]:
  """tag -> [(step, value)] from the TensorBoard event files in `directory`,
  and how many files were read.

  Raises:
    ValueError: a file is not an event file.
  """
  from google.protobuf.message import DecodeError
  from tensorboard.compat.proto import event_pb2

  scalars: dict[str, list[tuple[int, float]]] = {}
  files = sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*")))
  for path in files:
    for data in _tfrecords(path):
      try:
        event = event_pb2.Event.FromString(data)
      except DecodeError as e:
        raise ValueError(f"{path}: not a TensorBoard event file ({e})") from e
      for value in event.summary.value:
        number = _scalar_value(value)
        if number is not None:
          scalars.setdefault(value.tag, []).append((int(event.step), number))
  return scalars, len(files)


def _tensorboard_dirs(store: metadata_store.MetadataStore,
                      execution_ids: Sequence[int]) -> dict[int, str]:
  """execution id -> its ModelRun output's tensorboard/ folder."""
  if not execution_ids:
    return {}
  events = query(lambda: store.get_events_by_execution_ids(list(execution_ids)),
                 what="reading Trainer outputs")
  outputs = {e.artifact_id: e.execution_id for e in events
             if e.type == metadata_store_pb2.Event.OUTPUT}
  if not outputs:
    return {}
  artifacts = query(lambda: store.get_artifacts_by_id(list(outputs)),
                    what="reading Trainer outputs")
  type_ids = {a.type_id for a in artifacts}
  names = {t.id: t.name for t in query(lambda: store.get_artifact_types_by_id(list(type_ids)),
                                       what="reading artifact types")}
  found = {}
  for artifact in artifacts:
    if names.get(artifact.type_id) == "ModelRun" and artifact.uri:
      found[outputs[artifact.id]] = os.path.join(artifact.uri, "tensorboard")
  return found


def _served_checkpoints(store, serving_now: Mapping[str, set[int]],
                        served: Sequence[promotion.ServedRecord],
                        labels_now: Mapping[str, Mapping[str, int]]) -> dict[int, list[str]]:
  """checkpoint id -> the currently served versions whose Model came from it
  (the Model read by the execution that pushed the version; the Model's
  `checkpoint_id`, or a Checkpoint that execution read)."""
  behind: dict[int, list[str]] = {}
  for record in served:
    if record.version not in serving_now.get(record.model_name, set()):
      continue
    graph = lineage_lib.lineage(store, record.artifact_id, max_nodes=60)
    names = [label for label, v in labels_now.get(record.model_name, {}).items()
             if v == record.version]
    text = f"{record.model_name}:{record.version}" + (f" ({', '.join(names)})" if names else "")
    for _, producer in graph.upstream(graph.root):
      for _, source in graph.upstream(producer.key):
        checkpoint_id = None
        if source.type_name == checkpoints_lib.CHECKPOINT_TYPE_NAME:
          checkpoint_id = source.id
        elif isinstance(source.properties.get("checkpoint_id"), int):
          checkpoint_id = source.properties["checkpoint_id"]
        if checkpoint_id is not None:
          behind.setdefault(checkpoint_id, []).append(text)
  return behind


def _category(record: CheckpointRecord, served: bool) -> str:
  if served:
    return "served"
  if record.protected in ("promoted", "exported"):
    return record.protected
  if record.protected:
    return "exported"
  return {"LIVE": "kept", "DELETED": "pruned", "ABANDONED": "abandoned"}.get(record.state,
                                                                               "pruned")


def collect(store: metadata_store.MetadataStore, serving_root: str) -> ReportData:
  """Everything the report shows, read from MLMD and the home's files."""
  notes: list[str] = []
  records = checkpoints_lib.list_checkpoints(store)
  producers = checkpoints_lib.producer_execution_ids(store, [r.id for r in records]) \
      if records else {}
  served = promotion.all_served_versions(store)
  models = sorted({r.model_name for r in served})
  labels = {m: promotion.label_history(store, m) for m in models}
  labels_now = {m: promotion.current_labels(store, m) for m in models}
  try:
    states = promotion.serving_states(store, serving_root)
    serving_now = {m: set(s.versions) for m, s in states.items()}
  except CkptflowError as e:
    notes.append(f"could not tell which versions models.config serves: {e}")
    serving_now = {}
  behind = _served_checkpoints(store, serving_now, served, labels_now)

  by_key: dict[str, TrainingRun] = {}
  for record in records:
    run = by_key.setdefault(record.resume_key, TrainingRun(
        resume_key=record.resume_key, checkpoints=[], execution_ids=[], scalars={}))
    execution_id = producers.get(record.id)
    run.checkpoints.append(MarkedCheckpoint(
        record=record, category=_category(record, record.id in behind),
        execution_id=execution_id, served_as=tuple(behind.get(record.id, ()))))
    if execution_id is not None and execution_id not in run.execution_ids:
      run.execution_ids.append(execution_id)
  runs = sorted(by_key.values(), key=lambda r: max(c.record.id for c in r.checkpoints))

  boards = _tensorboard_dirs(store, sorted({e for r in runs for e in r.execution_ids}))
  for run in runs:
    for execution_id in sorted(run.execution_ids):  # later executions win a step
      directory = boards.get(execution_id)
      if not directory or not os.path.isdir(directory):
        continue
      try:
        scalars, files = read_event_scalars(directory)
      except (OSError, ValueError) as e:
        run.event_file_problems.append(str(e))
        continue
      run.event_files += files
      for tag, points in scalars.items():
        merged = dict(run.scalars.get(tag, []))
        merged.update(points)
        run.scalars[tag] = sorted(merged.items())
  return ReportData(runs=runs, served=served, labels=labels, serving_now=serving_now,
                    notes=notes)


# --- drawing -----------------------------------------------------------------


def _figure(width: float, height: float):
  from matplotlib.figure import Figure
  return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _metric_names(runs: Sequence[TrainingRun]) -> list[str]:
  names = set()
  for run in runs:
    for c in run.checkpoints:
      names |= set(c.record.metrics)
  return sorted(n for n in names if not n.endswith("_at_step"))


def _runs_to_plot(runs: Sequence[TrainingRun]) -> list[TrainingRun]:
  """The newest runs, plus any run with a served, promoted or exported
  checkpoint."""
  notable = [r for r in runs if any(c.category in ("served", "promoted", "exported")
                                    for c in r.checkpoints)]
  chosen = {id(r) for r in list(runs)[-MAX_RUNS_PLOTTED:]} | {id(r) for r in notable}
  return [r for r in runs if id(r) in chosen]


def draw_metrics(runs: Sequence[TrainingRun], path: str) -> None:
  figure = _figure(11, 7)
  plotted = _runs_to_plot(runs)
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


# --- the page ----------------------------------------------------------------

_CSS = """
body { font-family: sans-serif; margin: 1.5em 2em; color: #222; max-width: 1200px; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.8em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } td.num { text-align: right; }
img { max-width: 100%; border: 1px solid #ddd; }
.note { color: #8a5a00; } .meta { color: #666; font-size: 0.85em; }
"""


def _e(value) -> str:
  return html.escape(str(value), quote=True)


def _metrics_text(metrics: Mapping[str, float]) -> str:
  return " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())
                  if isinstance(v, (int, float)))


def render_html(data: ReportData, *, title_target: str, lineage_files: Mapping[str, str],
                lineage_problems: Mapping[str, str]) -> str:
  generated = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
         f"<title>ckptflow report: {_e(title_target)}</title>",
         f"<style>{_CSS}</style></head><body>",
         "<h1>ckptflow report</h1>",
         f'<p class="meta">metadata store: {_e(title_target)}<br>generated {_e(generated)}</p>']
  for note in data.notes:
    out.append(f'<p class="note">{_e(note)}</p>')

  total = sum(len(r.checkpoints) for r in data.runs)
  out.append(f"<h2>Training: metrics by step ({total} checkpoints, "
             f"{len(data.runs)} training runs)</h2>")
  plotted = _runs_to_plot(data.runs)
  if len(plotted) < len(data.runs):
    out.append(f"<p>The plot shows {len(plotted)} of {len(data.runs)} training runs: the "
               f"{MAX_RUNS_PLOTTED} newest and any with a served, promoted or exported "
               "checkpoint. The table lists every checkpoint.</p>")
  out.append(f'<p><img src="{METRICS_PNG}" alt="training metrics by step"></p>')
  out.append("<table><tr><th>marker</th><th>meaning</th></tr>")
  for category in CATEGORIES:
    out.append(f"<tr><td>{_e(category)}</td><td>{_e(CATEGORY_MEANING[category])}</td></tr>")
  out.append("</table>")
  for run in data.runs:
    source = (f"curves from {run.event_files} TensorBoard event file(s)" if run.scalars
              else "curves from checkpoint metrics (no readable TensorBoard event files)")
    out.append(f"<h3>run {_e(run.short)} &middot; Trainer execution(s) "
               f"{_e(', '.join(map(str, sorted(run.execution_ids))) or '?')} &middot; "
               f"{_e(source)}</h3>")
    for problem in run.event_file_problems:
      out.append(f'<p class="note">{_e(problem)}</p>')
    out.append("<table><tr><th>id</th><th>step</th><th>epoch</th><th>state</th>"
               "<th>marked</th><th>served as</th><th>metrics</th><th>size</th>"
               "<th>created</th><th>uri</th></tr>")
    for c in sorted(run.checkpoints, key=lambda c: (c.record.step, c.record.id)):
      r = c.record
      out.append(
          f'<tr><td class="num">{r.id}</td><td class="num">{r.step}</td>'
          f'<td class="num">{r.epoch}</td><td>{_e(r.state)}</td><td>{_e(c.category)}</td>'
          f"<td>{_e(', '.join(c.served_as))}</td><td>{_e(_metrics_text(r.metrics))}</td>"
          f'<td class="num">{r.size_bytes / 1e6:.2f} MB</td><td>{_e(r.created_at)}</td>'
          f"<td>{_e(r.uri)}</td></tr>")
    out.append("</table>")

  out.append("<h2>Serving: versions over time</h2>")
  out.append(f'<p><img src="{SERVED_PNG}" alt="served versions over time"></p>')
  if data.served:
    out.append("<table><tr><th>model</th><th>version</th><th>pushed</th><th>label at push"
               "</th><th>forced</th><th>served now</th><th>path</th></tr>")
    for s in data.served:
      now = "yes" if s.version in data.serving_now.get(s.model_name, set()) else ""
      out.append(f'<tr><td>{_e(s.model_name)}</td><td class="num">{s.version}</td>'
                 f"<td>{_e(s.pushed_at)}</td><td>{_e(s.label)}</td>"
                 f"<td>{'yes' if s.forced else ''}</td><td>{now}</td><td>{_e(s.path)}</td></tr>")
    out.append("</table>")
    out.append("<table><tr><th>model</th><th>label</th><th>version</th><th>previous</th>"
               "<th>reason</th><th>when</th><th>execution</th></tr>")
    for model, history in sorted(data.labels.items()):
      for change in history:
        previous = "" if change.previous_version is None else change.previous_version
        out.append(f"<tr><td>{_e(model)}</td><td>{_e(change.label)}</td>"
                   f'<td class="num">{change.version}</td><td class="num">{previous}</td>'
                   f"<td>{_e(change.reason)}</td><td>{_e(change.changed_at)}</td>"
                   f'<td class="num">{change.execution_id}</td></tr>')
    out.append("</table>")

  out.append("<h2>Lineage of the stable version</h2>")
  if not lineage_files and not lineage_problems:
    out.append("<p>No model has a served version.</p>")
  for model, name in sorted(lineage_files.items()):
    out.append(f"<h3>{_e(model)}</h3>")
    out.append(f'<p><img src="{_e(name)}" alt="lineage of {_e(model)}"></p>')
  for model, problem in sorted(lineage_problems.items()):
    out.append(f'<p class="note">{_e(model)}: {_e(problem)}</p>')
  out.append("</body></html>")
  return "\n".join(out) + "\n"


# --- writing -----------------------------------------------------------------


def _publish(directory: str, name: str, write) -> str:
  """Writes a file under a temporary name with `write(path)`, then renames
  it into place (`storage.atomic_write`)."""
  return storage.atomic_write(os.path.join(directory, name), write)


def _write_text(text: str):
  def write(path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
      f.write(text)
  return write


def _lineage_target(model: str, data: ReportData) -> tuple[int | None, str]:
  """The version whose lineage is drawn: the stable one, else the newest."""
  history = data.labels.get(model, [])
  stable = [c.version for c in history if c.label == promotion.STABLE]
  if stable:
    return stable[-1], "stable"
  versions = [r.version for r in data.served if r.model_name == model]
  return (max(versions), "newest; no stable label") if versions else (None, "")


def write_report(store: metadata_store.MetadataStore, out_dir: str, *, serving_root: str,
                 title_target: str = "") -> str:
  """Writes the report into `out_dir` (created if needed); returns the path
  of its index.html. See the module docstring for what it holds.

  Raises:
    CkptflowError: `out_dir` cannot be created or written.
  """
  import matplotlib
  matplotlib.use("Agg", force=False)  # no display; must precede any pyplot import
  out_dir = os.path.abspath(out_dir)
  try:
    os.makedirs(out_dir, exist_ok=True)
  except OSError as e:
    raise CkptflowError(f"cannot create report directory {out_dir!r}: {e.strerror}") from e
  if not os.access(out_dir, os.W_OK):
    raise CkptflowError(f"report directory {out_dir!r} is not writable")

  data = collect(store, serving_root)
  _publish(out_dir, METRICS_PNG, lambda path: draw_metrics(data.runs, path))
  _publish(out_dir, SERVED_PNG, lambda path: draw_served(data, path))
  lineage_files: dict[str, str] = {}
  problems: dict[str, str] = {}
  for model in sorted({r.model_name for r in data.served}):
    version, why = _lineage_target(model, data)
    if version is None:
      continue
    try:
      svg = lineage_lib.to_svg(lineage_lib.lineage(store, f"{model}:{version}"))
    except CkptflowError as e:
      problems[model] = f"lineage graph of version {version} not drawn: {e}"
      continue
    name = f"lineage-{model}.svg"
    _publish(out_dir, name, _write_text(svg))
    lineage_files[f"{model}:{version} ({why})"] = name
  page = render_html(data, title_target=title_target, lineage_files=lineage_files,
                     lineage_problems=problems)
  return _publish(out_dir, INDEX_HTML, _write_text(page))


__all__ = ["collect", "draw_metrics", "draw_served", "read_event_scalars", "render_html",
           "write_report"]
