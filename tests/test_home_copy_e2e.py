"""A copied and a moved home, end to end: real pipeline runs, exports and
pushes in the copy and in the move leave the original home byte for byte
as it was (its files and its metadata store)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from ckptflow.base.metadata import open_store
from ckptflow.components import checkpoint as ckpt_records
from ckptflow.components import promotion
from support import ckptflow
from test_home_identity import one_error_line, snapshot

pytestmark = pytest.mark.e2e


def _refused_everywhere(home, original, penguins_dir, why: str) -> None:
  """`run`, `doctor --repair` and `promote` in `home` stop with one line and
  change nothing, neither in `home` nor in `original`."""
  before_home, before_original = snapshot(home), snapshot(original)
  for command in (("run", "--data", str(penguins_dir), "--train-steps", "200"),
                  ("doctor", "--repair"), ("promote", "latest", "--force")):
    result = ckptflow(*command, "--home", str(home), check=False)
    one_error_line(result, why, f"ckptflow doctor --relocate --home {home}")
    assert snapshot(home) == before_home, command
    assert snapshot(original) == before_original, command


def _live_and_pruned(home) -> tuple[list, list]:
  store = open_store(str(home / "metadata.sqlite"), create=False)
  records = ckpt_records.list_checkpoints(store)
  return [r for r in records if r.live], [r for r in records if r.state == "DELETED"]


def test_copied_then_moved_home_works_on_its_own_and_never_touches_the_original(
    e2e_home, tmp_path, penguins_dir):
  # The shared e2e home stays as it is: the original here is a copy of it,
  # made a home of its own, with an export besides the run's checkpoints
  # and served version.
  original = tmp_path / "original"
  subprocess.run(["cp", "-a", str(e2e_home), str(original)], check=True)
  ckptflow("doctor", "--relocate", "--home", str(original))
  ckptflow("export", "latest", "--home", str(original))
  live, _ = _live_and_pruned(original)
  store = open_store(str(original / "metadata.sqlite"), create=False)
  assert live and promotion.served_versions(store, "penguin")
  assert store.get_artifacts_by_type("Model")
  del store
  frozen = snapshot(original)

  # A copy: refused until relocated, then a home of its own.
  copy = tmp_path / "copy"
  subprocess.run(["cp", "-a", str(original), str(copy)], check=True)
  _refused_everywhere(copy, original, penguins_dir, f"was copied from '{original}'")
  ckptflow("doctor", "--relocate", "--home", str(copy))
  ckptflow("run", "--home", str(copy), "--data", str(penguins_dir), "--train-steps", "400",
           "--checkpoint-every", "100", "--keep-last", "1", "--model-name", "penguin")
  live, pruned = _live_and_pruned(copy)
  # Retention ran in the copy, on the copy's files only.
  assert pruned and all(r.uri.startswith(f"{copy}/") for r in pruned)
  assert all(r.uri.startswith(f"{copy}/") for r in live)
  assert ckptflow("doctor", "--repair", "--home", str(copy)).returncode == 0
  promoted = ckptflow("promote", "latest", "--force", "--home", str(copy))
  assert f"{copy}/serving/penguin/" in promoted.stdout
  assert snapshot(original) == frozen

  # The copy moved: refused until relocated, then works where it is now.
  moved = tmp_path / "moved"
  shutil.move(str(copy), moved)
  _refused_everywhere(moved, original, penguins_dir, f"was moved from '{copy}'")
  ckptflow("doctor", "--relocate", "--home", str(moved))
  ckptflow("run", "--home", str(moved), "--data", str(penguins_dir), "--train-steps", "400",
           "--checkpoint-every", "100", "--keep-last", "1", "--model-name", "penguin")
  assert ckptflow("doctor", "--repair", "--home", str(moved)).returncode == 0
  promoted = ckptflow("promote", "latest", "--force", "--home", str(moved))
  assert f"{moved}/serving/penguin/" in promoted.stdout
  live, pruned = _live_and_pruned(moved)
  assert all(r.uri.startswith(f"{moved}/") for r in live + pruned)
  assert snapshot(original) == frozen
