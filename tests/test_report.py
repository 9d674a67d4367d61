"""`ckptflow report`: the HTML report of a home (real MLMD stores, the real
CLI in a subprocess, the end-to-end run's home)."""

from __future__ import annotations

import html.parser
import json
import os
import pathlib
import struct
import subprocess
import sys
import urllib.parse
import xml.etree.ElementTree as ElementTree
import zlib

import pytest
from ml_metadata.proto import metadata_store_pb2

from ckptflow.components import checkpoint as checkpoints_lib
from ckptflow.components import promotion
from ckptflow.components.checkpoint import CheckpointRegistry, NewCheckpoint
from ckptflow.operations import report
from ckptflow.base.metadata import open_store
from support import ckptflow

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class _References(html.parser.HTMLParser):
  """Every src/href in a page, and the tags it uses."""

  def __init__(self):
    super().__init__()
    self.references: list[str] = []
    self.tags: set[str] = set()

  def handle_starttag(self, tag, attrs):
    self.tags.add(tag)
    self.references += [value for name, value in attrs if name in ("src", "href") and value]


def png_size(path: pathlib.Path) -> tuple[int, int, int]:
  """(width, height, distinct byte values in the pixel data) of a PNG, after
  checking its signature, every chunk's CRC, that it ends with IEND and that
  its image data decompresses; raises AssertionError otherwise."""
  data = path.read_bytes()
  assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
  offset, chunks, image = 8, [], b""
  while offset < len(data):
    (length,) = struct.unpack(">I", data[offset:offset + 4])
    kind = data[offset + 4:offset + 8]
    body = data[offset + 8:offset + 8 + length]
    (crc,) = struct.unpack(">I", data[offset + 8 + length:offset + 12 + length])
    assert zlib.crc32(kind + body) == crc, f"{path}: bad CRC in chunk {kind!r}"
    chunks.append(kind)
    if kind == b"IDAT":
      image += body
    offset += 12 + length
  assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND", chunks
  width, height = struct.unpack(">II", data[16:24])
  pixels = zlib.decompress(image)
  assert len(pixels) >= width * height, f"{path}: image data shorter than the image"
  return width, height, len(set(pixels))


def check_local_page(out: pathlib.Path) -> list[str]:
  """Asserts index.html references only relative files that exist beside it,
  and loads nothing from the network; returns the references."""
  parser = _References()
  parser.feed((out / "index.html").read_text())
  assert not parser.tags & {"script", "link", "iframe", "object"}, parser.tags
  for reference in parser.references:
    parsed = urllib.parse.urlsplit(reference)
    assert not parsed.scheme and not parsed.netloc, reference
    assert not reference.startswith("/") and ".." not in reference.split("/"), reference
    assert (out / parsed.path).is_file(), f"{reference} is referenced but missing"
  return parser.references


@pytest.mark.e2e
def test_report_of_e2e_home_has_valid_pngs_and_only_local_references(e2e_home, tmp_path):
  out = tmp_path / "report"

  result = ckptflow("report", "--home", str(e2e_home), "--out", str(out))

  assert result.stdout.strip() == f"report: {out / 'index.html'}"
  references = check_local_page(out)
  assert {"metrics.png", "served.png", "lineage-penguin.svg"} <= set(references)
  for name in ("metrics.png", "served.png"):
    width, height, shades = png_size(out / name)
    assert width >= 600 and height >= 300, (name, width, height)
    # A drawn plot (text, lines, markers), not a blank or a flat image.
    assert (out / name).stat().st_size > 10_000, name
    assert shades > 32, (name, shades)
  svg = ElementTree.parse(out / "lineage-penguin.svg").getroot()
  assert svg.tag.endswith("svg")
  text = ElementTree.tostring(svg, encoding="unicode")
  assert "PushedModel" in text and "Examples" in text
  # The stable version's Model came from a checkpoint, recorded by events.
  assert "Checkpoint" in text and "ckptflow.TrainerExport" in text
  assert not [p for p in os.listdir(out) if p.endswith(".tmp")]


@pytest.mark.e2e
def test_report_marks_the_checkpoint_behind_the_stable_version_as_served(e2e_home):
  store = open_store(str(e2e_home / "metadata.sqlite"), create=False)
  [stable] = [r for r in promotion.served_versions(store, "penguin") if r.version ==
              promotion.current_labels(store, "penguin")["stable"]]
  [producer] = [e.execution_id for e in store.get_events_by_artifact_ids([stable.artifact_id])
                if e.type == metadata_store_pb2.Event.OUTPUT]
  inputs = store.get_artifacts_by_id(
      [e.artifact_id for e in store.get_events_by_execution_ids([producer])
       if e.type == metadata_store_pb2.Event.INPUT])
  [model] = [a for a in inputs if "checkpoint_id" in a.custom_properties]

  data = report.collect(store, str(e2e_home / "serving"))

  marks = {c.record.id: c for run in data.runs for c in run.checkpoints}
  served_id = model.custom_properties["checkpoint_id"].int_value
  assert marks[served_id].category == "served"
  # tests/test_pipeline_e2e.py may have rerun this home (pushing version 2
  # of the same checkpoint's model): whichever is stable is the one shown.
  assert marks[served_id].served_as == (f"penguin:{stable.version} (stable)",)
  assert all(c.category == "kept" for i, c in marks.items() if i != served_id)
  # The Trainer's TensorBoard files give a point per training step.
  [run] = [r for r in data.runs if any(c.record.id == served_id for c in r.checkpoints)]
  steps = [s for s, _ in run.scalars["loss"]]
  assert steps[:3] == [1, 2, 3] and steps[-1] >= marks[served_id].record.step


@pytest.mark.e2e
def test_report_command_imports_neither_tensorflow_nor_tfx(e2e_home, tmp_path):
  code = ("import json, sys; from ckptflow.cli import main as cli; "
          f"rc = cli.main(['report', '--home', {str(e2e_home)!r}, '--out', "
          f"{str(tmp_path / 'r')!r}]); "
          "print(json.dumps([rc, sorted(m for m in sys.modules "
          "if m.split('.')[0] in ('tensorflow', 'tfx'))]))")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env=os.environ | {"TF_USE_LEGACY_KERAS": "1"})

  assert result.returncode == 0, result.stderr[-2000:]
  rc, heavy = json.loads(result.stdout.strip().splitlines()[-1])
  assert rc == 0 and heavy == []


# --- without a pipeline run ----------------------------------------------------


def _register(store, execution_id, step, **kwargs):
  return CheckpointRegistry(store, execution_id).register(NewCheckpoint(
      uri=f"/ckpt/step-{step}", step=step, epoch=0,
      metrics={"loss": 1.0 / step, "accuracy": step / 1000, "eval_loss": 2.0 / step},
      size_bytes=1000, checksum=f"sum-{step}", tf_version="2.16.2", fingerprint="fp",
      resume_key=kwargs.get("resume_key", "run-a")))


@pytest.fixture
def marked_store(tmp_path):
  """One training run whose checkpoints end pruned, abandoned, kept,
  exported, promoted (not served now) and served (behind stable m:2)."""
  store = open_store(str(tmp_path / "metadata.sqlite"))
  trainer_type = store.put_execution_type(metadata_store_pb2.ExecutionType(name="Trainer"))
  [trainer] = store.put_executions([metadata_store_pb2.Execution(
      type_id=trainer_type, last_known_state=metadata_store_pb2.Execution.COMPLETE)])
  ids = {step: _register(store, trainer, step).id for step in (100, 200, 300, 400, 500, 600)}
  checkpoints_lib.set_states(store, [ids[100]], metadata_store_pb2.Artifact.DELETED)
  checkpoints_lib.set_states(store, [ids[200]], metadata_store_pb2.Artifact.ABANDONED,
                             reason="checksum mismatch")
  checkpoints_lib.set_protected(store, ids[400], "exported")
  model_type = store.put_artifact_type(metadata_store_pb2.ArtifactType(name="Model"))
  serving_root = tmp_path / "serving"
  for version, step in ((1, 500), (2, 600)):
    checkpoints_lib.set_protected(store, ids[step], "promoted")
    saved_model = tmp_path / f"export-{step}"
    (saved_model / "variables").mkdir(parents=True)
    (saved_model / "saved_model.pb").write_bytes(b"pb")
    model = metadata_store_pb2.Artifact(type_id=model_type, uri=str(saved_model))
    model.custom_properties["checkpoint_id"].int_value = ids[step]
    [model_id] = store.put_artifacts([model])
    promotion.promote(store, saved_model_dir=str(saved_model), serving_root=str(serving_root),
                      model_name="m", model_artifact_id=model_id, label="stable")
  # Version 1 leaves the serving root: models.config serves only version 2.
  import shutil
  shutil.rmtree(serving_root / "m" / "1")
  return store, ids, serving_root


def test_collect_marks_each_checkpoint_by_what_became_of_it(marked_store):
  store, ids, serving_root = marked_store

  data = report.collect(store, str(serving_root))

  marks = {c.record.step: c.category for run in data.runs for c in run.checkpoints}
  assert marks == {100: "pruned", 200: "abandoned", 300: "kept", 400: "exported",
                   500: "promoted", 600: "served"}
  assert data.serving_now == {"m": {2}}


def test_report_without_event_files_draws_from_checkpoint_metrics(marked_store, tmp_path):
  store, _, serving_root = marked_store
  out = tmp_path / "report"

  index = report.write_report(store, str(out), serving_root=str(serving_root))

  assert index == str(out / "index.html")
  references = check_local_page(out)
  assert {"metrics.png", "served.png"} <= set(references)
  for name in ("metrics.png", "served.png"):
    png_size(out / name)
  page = (out / "index.html").read_text()
  assert "curves from checkpoint metrics" in page
  for category in report.CATEGORIES:
    assert f"<td>{category}</td>" in page


def test_report_of_an_empty_store_says_there_is_nothing_yet(tmp_path):
  store = open_store(str(tmp_path / "metadata.sqlite"))
  out = tmp_path / "report"

  report.write_report(store, str(out), serving_root=str(tmp_path / "serving"))

  check_local_page(out)
  assert "No model has a served version." in (out / "index.html").read_text()
  width, height, _ = png_size(out / "metrics.png")
  assert width > 0 and height > 0


def test_report_of_a_missing_home_fails_in_one_line_and_writes_nothing(tmp_path):
  home = tmp_path / "no-such-home"

  result = ckptflow("report", "--home", str(home), check=False)

  assert result.returncode == 2
  assert result.stderr.strip().count("\n") == 0, result.stderr
  assert result.stderr.startswith("ckptflow: error: no metadata store at")
  assert not home.exists()
