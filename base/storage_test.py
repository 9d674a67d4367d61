"""Storage primitives: atomic writes, directory publication, file locks."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest

from ckptflow.base import storage
from ckptflow.base.errors import CkptflowError


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args],
                        capture_output=True, text=True, timeout=60)


def start_holder(code: str, *args: str) -> subprocess.Popen:
  """A process that takes a lock, prints 'held' and sleeps."""
  holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args],
                            stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == "held"
  return holder


# --- atomic writes -----------------------------------------------------------


def test_atomic_write_replaces_the_file_and_leaves_no_temp_file(tmp_path):
  target = tmp_path / "models.config"
  target.write_text("old")
  assert storage.atomic_write(str(target), "new") == str(target)
  assert target.read_text() == "new"
  assert os.listdir(tmp_path) == ["models.config"]


def test_atomic_write_writes_bytes_and_the_output_of_a_function(tmp_path):
  def draw(path):
    with open(path, "w") as f:
      f.write("drawn")

  storage.atomic_write(str(tmp_path / "b"), b"\x00\x01")
  storage.atomic_write(str(tmp_path / "f"), draw)
  assert (tmp_path / "b").read_bytes() == b"\x00\x01"
  assert (tmp_path / "f").read_text() == "drawn"


def test_atomic_write_gives_the_mode_open_would_unless_told(tmp_path):
  umask = os.umask(0o022)
  try:
    storage.atomic_write(str(tmp_path / "default"), "x")
    storage.atomic_write(str(tmp_path / "public"), "x", mode=0o640)
  finally:
    os.umask(umask)
  assert stat.S_IMODE(os.stat(tmp_path / "default").st_mode) == 0o644
  assert stat.S_IMODE(os.stat(tmp_path / "public").st_mode) == 0o640


def test_failing_write_keeps_the_old_file_and_removes_its_temp_file(tmp_path):
  target = tmp_path / "data.csv"
  target.write_text("old")

  def fail(path):
    with open(path, "w") as f:
      f.write("half")
    raise OSError(28, "No space left on device")

  with pytest.raises(OSError, match="No space left"):
    storage.atomic_write(str(target), fail)
  assert target.read_text() == "old"
  assert os.listdir(tmp_path) == ["data.csv"]


def test_writer_killed_before_the_replace_leaves_the_old_file_whole(tmp_path):
  target = tmp_path / "models.config"
  target.write_text("old")
  result = run_python("""
      import os, signal, sys
      from ckptflow.base import storage
      storage.atomic_write(sys.argv[1], "new" * 1000,
                           before_replace=lambda: os.kill(os.getpid(), signal.SIGKILL))
      """, str(target))
  assert result.returncode == -signal.SIGKILL, result.stderr
  assert target.read_text() == "old"
  [temp] = [n for n in os.listdir(tmp_path) if n != "models.config"]
  assert temp.startswith(storage.temp_prefix(str(target)))
  assert temp.startswith(".models.config.tmp-")
  assert (tmp_path / temp).read_text() == "new" * 1000  # fsynced whole before


def test_temp_prefix_of_a_hidden_file_adds_no_second_dot():
  assert storage.temp_prefix("/a/.last_version") == ".last_version.tmp-"
  assert storage.temp_prefix("/a/pipeline.json") == ".pipeline.json.tmp-"


def test_atomic_write_all_changes_no_file_if_one_cannot_be_written(tmp_path):
  first, second = tmp_path / "pipeline.json", tmp_path / "pipeline.yaml"
  first.write_text("old json")
  second.write_text("old yaml")

  def fail(path):
    raise OSError(5, "Input/output error")

  with pytest.raises(OSError):
    storage.atomic_write_all({str(first): "new json", str(second): fail})
  assert first.read_text() == "old json"
  assert second.read_text() == "old yaml"
  assert sorted(os.listdir(tmp_path)) == ["pipeline.json", "pipeline.yaml"]


# --- durability --------------------------------------------------------------


def test_fsync_tree_syncs_every_file_and_directory_children_first(tmp_path, monkeypatch):
  root = tmp_path.resolve() / "export"
  (root / "variables").mkdir(parents=True)
  (root / "saved_model.pb").write_bytes(b"pb")
  (root / "variables" / "variables.index").write_bytes(b"i")
  synced = []
  real_fsync = os.fsync

  def recording_fsync(fd):
    synced.append(os.readlink(f"/proc/self/fd/{fd}"))
    real_fsync(fd)

  monkeypatch.setattr(os, "fsync", recording_fsync)
  storage.fsync_tree(str(root))
  expected = {str(root), str(root / "variables"), str(root / "saved_model.pb"),
              str(root / "variables" / "variables.index")}
  assert set(synced) == expected and len(synced) == len(expected)
  assert synced.index(str(root / "variables" / "variables.index")) < synced.index(
      str(root / "variables"))
  assert synced.index(str(root / "variables")) < synced.index(str(root))
  assert synced[-1] == str(root)


# --- publish_dir -------------------------------------------------------------


def test_publish_dir_moves_the_directory_under_its_final_name(tmp_path):
  staged = tmp_path / ".staging-1"
  staged.mkdir()
  (staged / "saved_model.pb").write_bytes(b"pb")
  storage.publish_dir(str(staged), str(tmp_path / "1"))
  assert os.listdir(tmp_path) == ["1"]
  assert (tmp_path / "1" / "saved_model.pb").read_bytes() == b"pb"


@pytest.mark.parametrize("existing", ["empty-dir", "file"])
def test_publish_dir_refuses_to_replace_an_existing_name(tmp_path, existing):
  staged = tmp_path / ".staging-1"
  staged.mkdir()
  final = tmp_path / "1"
  if existing == "file":
    final.write_text("x")
  else:
    final.mkdir()  # os.rename alone would silently replace an empty dir
  with pytest.raises(FileExistsError):
    storage.publish_dir(str(staged), str(final))
  assert staged.is_dir()


# --- file_lock ---------------------------------------------------------------

_HOLD = """
    import sys, time
    from ckptflow.base import storage
    with storage.file_lock(sys.argv[1], shared=sys.argv[2] == "shared") as held:
      assert held
      print("held", flush=True)
      time.sleep(60)
    """


def test_exclusive_lock_is_refused_while_another_process_holds_it(tmp_path):
  path = str(tmp_path / ".lock")
  holder = start_holder(_HOLD, path, "exclusive")
  try:
    with storage.file_lock(path, blocking=False) as held:
      assert held is False
    with storage.file_lock(path, shared=True, blocking=False) as held:
      assert held is False
  finally:
    holder.kill()
    holder.wait()


def test_shared_locks_coexist_and_exclude_an_exclusive_one(tmp_path):
  path = str(tmp_path / ".lock")
  holder = start_holder(_HOLD, path, "shared")
  try:
    with storage.file_lock(path, shared=True, blocking=False) as held:
      assert held is True
    with storage.file_lock(path, blocking=False) as held:
      assert held is False
  finally:
    holder.kill()
    holder.wait()


def test_lock_of_a_killed_holder_is_released_by_the_kernel(tmp_path):
  path = str(tmp_path / ".lock")
  holder = start_holder(_HOLD, path, "exclusive")
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  with storage.file_lock(path, blocking=False) as held:
    assert held is True


def test_lock_is_released_when_the_block_ends(tmp_path):
  path = str(tmp_path / ".lock")
  with storage.file_lock(path) as held:
    assert held is True
  probe = run_python("""
      import sys
      from ckptflow.base import storage
      with storage.file_lock(sys.argv[1], blocking=False) as held:
        print(held)
      """, path)
  assert probe.stdout.strip() == "True", probe.stderr


def test_lock_without_create_neither_creates_nor_locks_a_missing_file(tmp_path):
  path = tmp_path / ".lock"
  with pytest.raises(FileNotFoundError):
    with storage.file_lock(str(path), create=False):
      pass
  assert not path.exists()


# --- nearest_existing ----------------------------------------------------------


def test_nearest_existing_is_the_path_or_its_closest_existing_ancestor(tmp_path):
  assert storage.nearest_existing(str(tmp_path)) == str(tmp_path)
  assert storage.nearest_existing(str(tmp_path / "a" / "b" / "c")) == str(tmp_path)
  (tmp_path / "file").write_text("x")
  assert storage.nearest_existing(str(tmp_path / "file" / "sub")) == str(tmp_path / "file")


def test_nearest_existing_answers_an_absolute_path(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert storage.nearest_existing("missing/child") == str(tmp_path)


def test_creatable_dir_check_names_the_blocking_file_and_creates_nothing(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(CkptflowError, match=r"cannot create home .* is not a directory: "
                     r"it is a file\. Expected a directory path"):
    storage.check_creatable_dir(str(blocker / "home"), "home")
  assert storage.check_creatable_dir(str(tmp_path / "a" / "b"), "home") == str(tmp_path / "a" / "b")
  assert not (tmp_path / "a").exists()


def test_create_dir_makes_parents_and_names_what_it_could_not_create(tmp_path):
  made = storage.create_dir(str(tmp_path / "a" / "b"), "report directory")
  assert os.path.isdir(made)
  (tmp_path / "file").write_text("x")
  with pytest.raises(CkptflowError, match="cannot create report directory"):
    storage.create_dir(str(tmp_path / "file" / "sub"), "report directory")


def test_link_tree_survives_a_recursive_delete_of_the_links(tmp_path):
  source = tmp_path / "served" / "1"
  (source / "variables").mkdir(parents=True)
  (source / "saved_model.pb").write_bytes(b"pb")
  (source / "variables" / "v").write_bytes(b"v" * 10)
  target = tmp_path / "tmp" / "holder" / "Format-Serving"
  storage.link_tree(str(source), str(target))
  assert (target / "variables" / "v").read_bytes() == b"v" * 10
  assert os.stat(target / "saved_model.pb").st_ino == os.stat(source / "saved_model.pb").st_ino
  storage.remove_tree(str(tmp_path / "tmp"), [str(tmp_path)])
  assert not (tmp_path / "tmp").exists()
  assert (source / "variables" / "v").read_bytes() == b"v" * 10
  storage.remove_tree(str(tmp_path / "tmp"), [str(tmp_path)])  # gone already


def test_tree_size_counts_files_and_not_what_links_point_to(tmp_path):
  root = tmp_path / "home"
  (root / "a").mkdir(parents=True)
  (root / "a" / "f").write_bytes(b"x" * 100)
  outside = tmp_path / "outside"
  outside.mkdir()
  (outside / "big").write_bytes(b"y" * 1000)
  (root / "link").symlink_to(outside)
  assert storage.tree_size(str(root)) == 100
  assert storage.tree_size(str(root / "a" / "f")) == 100
  assert storage.tree_size(str(tmp_path / "none")) == 0
