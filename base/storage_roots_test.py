"""The one guard every delete goes through (`storage.within_roots`,
`check_within_roots`, `remove_tree`, `remove_file`): real files in a tmp
dir, nothing outside the roots is ever touched."""

from __future__ import annotations

import logging
import os

import pytest

from ckptflow.base import storage
from ckptflow.base.errors import CkptflowError


def _files(root) -> dict[str, bytes]:
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
          if p.is_file()}


@pytest.fixture
def layout(tmp_path):
  home = tmp_path / "home"
  outside = tmp_path / "home2"  # a sibling whose name starts like the home's
  for directory in (home / "pipeline_root" / "a", outside / "pipeline_root" / "a"):
    directory.mkdir(parents=True)
    (directory / "ckpt.index").write_bytes(b"index")
  return home, outside


def test_paths_below_a_root_are_within_and_siblings_with_the_same_prefix_are_not(layout):
  home, outside = layout
  roots = [str(home)]
  assert storage.within_roots(str(home / "pipeline_root" / "a"), roots)
  assert storage.within_roots(str(home / "not" / "yet" / "there"), roots)
  assert storage.within_roots(str(home), roots)
  assert not storage.within_roots(str(home), roots, strictly=True)
  assert not storage.within_roots(str(outside / "pipeline_root" / "a"), roots)
  assert not storage.within_roots(str(home / ".." / "home2"), roots)
  assert not storage.within_roots("", roots)
  assert not storage.within_roots(str(home / "x"), [])


def test_a_symlink_inside_a_root_that_points_outside_is_outside(layout):
  home, outside = layout
  link = home / "pipeline_root" / "link"
  link.symlink_to(outside / "pipeline_root")
  assert not storage.within_roots(str(link / "a"), [str(home)])
  with pytest.raises(storage.OutsideRootsError):
    storage.remove_tree(str(link / "a"), [str(home)])
  assert (outside / "pipeline_root" / "a" / "ckpt.index").read_bytes() == b"index"


def test_bucket_uris_compare_by_segment_and_never_match_local_roots():
  roots = ["s3://bucket/home"]
  assert storage.within_roots("s3://bucket/home/pipeline_root/x", roots)
  assert not storage.within_roots("s3://bucket/home2/pipeline_root/x", roots)
  assert not storage.within_roots("/bucket/home/x", roots)
  assert not storage.within_roots("s3://bucket/home/x", ["/bucket/home"])


def test_remove_tree_outside_the_roots_refuses_logs_and_deletes_nothing(layout, caplog):
  home, outside = layout
  before = _files(outside)
  target = str(outside / "pipeline_root" / "a")
  with caplog.at_level(logging.WARNING, logger="ckptflow.base.storage"):
    with pytest.raises(storage.OutsideRootsError) as raised:
      storage.remove_tree(target, [str(home)])
  assert isinstance(raised.value, CkptflowError)
  assert "refusing to delete" in str(raised.value) and target in str(raised.value)
  assert any("refusing to delete" in r.getMessage() for r in caplog.records)
  assert _files(outside) == before


def test_remove_tree_and_remove_file_inside_the_roots_delete(layout):
  home, _ = layout
  storage.remove_file(str(home / "pipeline_root" / "a" / "ckpt.index"), [str(home)])
  assert not (home / "pipeline_root" / "a" / "ckpt.index").exists()
  storage.remove_tree(str(home / "pipeline_root" / "a"), [str(home)])
  assert not (home / "pipeline_root" / "a").exists()
  storage.remove_tree(str(home / "pipeline_root" / "gone"), [str(home)])  # missing: ok
  with pytest.raises(FileNotFoundError):
    storage.remove_tree(str(home / "pipeline_root" / "gone"), [str(home)], missing_ok=False)


def test_a_root_itself_is_never_removed(layout):
  home, _ = layout
  with pytest.raises(storage.OutsideRootsError):
    storage.remove_tree(str(home), [str(home)])
  assert os.path.isdir(home / "pipeline_root" / "a")


def test_remove_file_outside_the_roots_refuses(layout):
  home, outside = layout
  path = outside / "pipeline_root" / "a" / "ckpt.index"
  with pytest.raises(storage.OutsideRootsError):
    storage.remove_file(str(path), [str(home)])
  assert path.read_bytes() == b"index"
