"""Writes the report's files into a directory, each one published whole.

Each file is written under a temporary name and renamed into place,
`index.html` last, so a reader never sees a partial file nor an index that
points at a missing one. A missing `dot` degrades the report (said in the
page), it does not fail it.
"""

from __future__ import annotations

import os


from ckptflow.base import storage
from ckptflow.base.errors import CkptflowError
from ckptflow.components import promotion
from ckptflow.operations import lineage as lineage_lib
from ckptflow.operations.report import html, plots
from ckptflow.operations.report.collect import ReportData, collect
from ckptflow.base.metadata import Store


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


def write_report(store: Store, out_dir: str, *, serving_root: str,
                 title_target: str = "") -> str:
  """Writes the report into `out_dir` (created if needed); returns the path
  of its index.html. See the package docstring for what it holds.

  Raises:
    CkptflowError: `out_dir` cannot be created or written.
  """
  out_dir = storage.create_dir(out_dir, "report directory")

  data = collect(store, serving_root)
  _publish(out_dir, html.METRICS_PNG, lambda path: plots.draw_metrics(data.runs, path))
  _publish(out_dir, html.SERVED_PNG, lambda path: plots.draw_served(data, path))
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
  page = html.render_html(data, title_target=title_target, lineage_files=lineage_files,
                          lineage_problems=problems)
  return _publish(out_dir, html.INDEX_HTML, _write_text(page))
