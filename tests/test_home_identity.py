"""A home knows itself: copied or moved homes are recognised and refused
with one line, relocated on purpose, and no delete path ever reaches
outside the roots a command was given (real SQLite MLMD, real files, the
real CLI in a subprocess where the exit status matters). No TensorFlow,
except the retention test, which saves real checkpoints."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil

import pytest
from ml_metadata.proto import metadata_store_pb2

from ckptflow.base import identity, storage
from ckptflow.base.home import Home, read_identity
from ckptflow.base.metadata import open_store
from ckptflow.components import checkpoint as ckpt_records
from ckptflow.components.pusher import serving
from ckptflow.operations import doctor, relocate
from ckptflow.components.checkpoint import CheckpointRegistry
from reliability_support import (ToyHome, make_saved_model, mysql_admin, mysql_target,
                                 register_checkpoint, start_execution, write_checkpoint_dir)
from support import ckptflow

LIVE = metadata_store_pb2.Artifact.LIVE
GLOG_LINE = re.compile(r"^(WARNING: Logging before InitGoogleLogging|[EWIF]\d{4} )")


def snapshot(root) -> dict[str, str]:
  """sha256 of every file under `root` (and the list of directories): equal
  snapshots mean byte for byte the same tree (a symlink: where it points).
  The home lock file is empty
  and opening a store may leave a SQLite journal; both are left out."""
  found = {}
  for dirpath, dirnames, filenames in os.walk(root):
    for name in dirnames:
      found[os.path.relpath(os.path.join(dirpath, name), root) + "/"] = "dir"
    for name in filenames:
      if name == ".ckptflow.lock" or name.endswith("-journal"):
        continue
      path = os.path.join(dirpath, name)
      if os.path.islink(path):  # e.g. TFMA's link to a baseline model
        found[os.path.relpath(path, root)] = "link:" + os.readlink(path)
        continue
      with open(path, "rb") as f:
        found[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  return found


def one_error_line(result, *phrases: str) -> str:
  """Asserts the command failed with exit 2 and exactly one stderr line,
  `ckptflow: error: ...`, containing `phrases`; returns it."""
  # MLMD's C++ client logs a failed MySQL login through glog before Python
  # sees the error ("WARNING: Logging before InitGoogleLogging()", "E1129
  # ..."); quieting that is not this test's subject.
  lines = [line for line in result.stderr.splitlines() if line.strip()
           and not GLOG_LINE.match(line)]
  assert result.returncode == 2, result.stderr
  assert len(lines) == 1 and lines[0].startswith("ckptflow: error: "), result.stderr
  for phrase in phrases:
    assert phrase in lines[0], lines[0]
  return lines[0]


@pytest.fixture
def home(toy):
  """The toy home (two checkpoints, one served version), adopted: it has
  its identity, as after any writing command of this version."""
  identity.check(toy.store, toy.target, toy.where(), adopt=True)
  return toy


# --- identity ----------------------------------------------------------------


def test_first_writing_command_adopts_an_old_home_and_writes_its_identity(toy):
  assert read_identity(toy.where()) is None
  assert identity.check(toy.store, toy.target, toy.where()) is None  # no adopt: no write
  assert not os.path.exists(toy.where().identity_file)
  result = ckptflow("doctor", "--home", str(toy.home), "--repair")
  assert result.returncode == 0, result.stderr
  mine = read_identity(toy.where())
  assert mine is not None and mine.metadata is None  # its own metadata.sqlite
  [registration] = identity.registrations(toy.store)
  assert (registration.id, registration.home) == (mine.id, str(toy.home))
  assert registration.serving_roots == (str(toy.serving),)
  with open(toy.where().identity_file) as f:
    assert json.load(f) == {"id": mine.id, "metadata": None, "serving_dir": None}


def test_adoption_is_done_once(home):
  first = read_identity(home.where())
  identity.check(home.store, home.target, home.where(), adopt=True)
  assert read_identity(home.where()) == first
  assert len(identity.registrations(home.store)) == 1


def test_copied_home_is_recognised_and_names_relocate(home, tmp_path):
  copy = tmp_path / "copy"
  shutil.copytree(home.home, copy)
  store = open_store(str(copy / "metadata.sqlite"), create=False)
  with pytest.raises(identity.HomeMismatchError) as raised:
    identity.check(store, str(copy / "metadata.sqlite"), Home(str(copy)), adopt=True)
  message = str(raised.value)
  assert f"was copied from '{home.home}'" in message
  assert f"ckptflow doctor --relocate --home {copy}" in message


def test_moved_home_is_recognised_as_moved(home, tmp_path):
  moved = tmp_path / "moved"
  shutil.move(str(home.home), moved)
  store = open_store(str(moved / "metadata.sqlite"), create=False)
  with pytest.raises(identity.HomeMismatchError, match="was moved from"):
    identity.check(store, str(moved / "metadata.sqlite"), Home(str(moved)))


def test_copy_of_an_old_home_without_identity_is_refused_too(toy, tmp_path):
  copy = tmp_path / "copy"
  shutil.copytree(toy.home, copy)
  store = open_store(str(copy / "metadata.sqlite"), create=False)
  with pytest.raises(identity.HomeMismatchError, match=f"was copied from '{toy.home}'"):
    identity.check(store, str(copy / "metadata.sqlite"), Home(str(copy)), adopt=True)
  assert read_identity(Home(str(copy))) is None  # nothing adopted


def test_home_used_with_another_store_is_refused(home, tmp_path):
  other = str(tmp_path / "other.sqlite")
  store = open_store(other)
  with pytest.raises(identity.HomeMismatchError, match="is registered in the metadata store"):
    identity.check(store, other, home.where(), adopt=True)
  assert identity.registrations(store) == []


def test_damaged_identity_file_is_one_line(home):
  with open(home.where().identity_file, "w") as f:
    f.write("{not json")
  before = snapshot(home.home)
  result = ckptflow("doctor", "--home", str(home.home), check=False)
  one_error_line(result, "home identity file", "is unreadable")
  assert snapshot(home.home) == before


# --- refusals in a copy or a move: one line, exit 2, nothing changed ----------


@pytest.mark.parametrize("command", [
    ("doctor",), ("doctor", "--repair"), ("rollback", "penguin"),
    ("promote", "latest", "--force"), ("export", "latest")])
def test_writing_commands_in_a_copied_home_stop_with_one_line(home, tmp_path, command):
  copy = tmp_path / "copy"
  shutil.copytree(home.home, copy)
  original, copied = snapshot(home.home), snapshot(copy)
  result = ckptflow(*command, "--home", str(copy), check=False)
  one_error_line(result, f"home '{copy}' was copied from '{home.home}'",
                 "ckptflow doctor --relocate")
  assert snapshot(home.home) == original
  assert snapshot(copy) == copied


def test_run_in_a_copied_home_stops_before_writing_anything(home, tmp_path, penguins_dir):
  copy = tmp_path / "copy"
  shutil.copytree(home.home, copy)
  original, copied = snapshot(home.home), snapshot(copy)
  result = ckptflow("run", "--home", str(copy), "--data", str(penguins_dir), check=False)
  one_error_line(result, "was copied from", "ckptflow doctor --relocate")
  assert snapshot(home.home) == original
  assert snapshot(copy) == copied


# --- relocation --------------------------------------------------------------


def test_relocate_dry_run_writes_nothing_and_says_what_it_would_do(home, tmp_path):
  copy = tmp_path / "copy"
  shutil.copytree(home.home, copy)
  copied = snapshot(copy)
  result = ckptflow("doctor", "--relocate", "--dry-run", "--home", str(copy))
  assert f"relocating {home.home} -> {copy}" in result.stdout
  assert "would rewrite" in result.stdout and "dry run: nothing was written" in result.stdout
  assert snapshot(copy) == copied


def test_relocated_copy_is_its_own_home_and_the_original_is_untouched(home, tmp_path):
  copy = tmp_path / "copy"
  shutil.copytree(home.home, copy)
  original = snapshot(home.home)
  result = ckptflow("doctor", "--relocate", "--home", str(copy))
  assert "is now a home of its own" in result.stdout
  store = open_store(str(copy / "metadata.sqlite"), create=False)
  uris = [r.uri for r in ckpt_records.list_checkpoints(store)]
  assert uris and all(u.startswith(str(copy) + "/") for u in uris)
  served = serving.read_models_config(str(copy / "serving"))
  assert served["penguin"].versions == (1,)
  with open(copy / "serving" / "models.config") as f:
    assert str(copy / "serving" / "penguin") in f.read()
  [registration] = identity.registrations(store)
  assert registration.home == str(copy)
  # Clean, and repairs in the copy delete nothing of the original's.
  assert ckptflow("doctor", "--home", str(copy)).returncode == 0
  assert ckptflow("doctor", "--repair", "--home", str(copy)).returncode == 0
  assert snapshot(home.home) == original
  # Idempotent.
  again = ckptflow("doctor", "--relocate", "--home", str(copy))
  assert "nothing to relocate" in again.stdout


def test_relocated_move_keeps_every_record(home, tmp_path):
  ids = sorted(r.id for r in ckpt_records.list_checkpoints(home.store))
  moved = tmp_path / "moved"
  shutil.move(str(home.home), moved)
  one_error_line(ckptflow("doctor", "--repair", "--home", str(moved), check=False),
                 "was moved from")
  ckptflow("doctor", "--relocate", "--home", str(moved))
  assert ckptflow("doctor", "--home", str(moved)).returncode == 0
  store = open_store(str(moved / "metadata.sqlite"), create=False)
  records = ckpt_records.list_checkpoints(store)
  assert sorted(r.id for r in records) == ids and all(r.live for r in records)


def test_relocating_an_old_home_without_identity_infers_where_it_came_from(toy, tmp_path):
  moved = tmp_path / "moved"
  shutil.move(str(toy.home), moved)
  result = ckptflow("doctor", "--relocate", "--home", str(moved))
  assert f"relocating {toy.home} -> {moved}" in result.stdout
  assert read_identity(Home(str(moved))) is not None
  assert ckptflow("doctor", "--home", str(moved)).returncode == 0


def test_relocating_an_incomplete_copy_is_refused_and_writes_nothing(home, tmp_path):
  copy = tmp_path / "copy"
  shutil.copytree(home.home, copy)
  [first, _] = ckpt_records.list_checkpoints(home.store)
  shutil.rmtree(str(first.uri).replace(str(home.home), str(copy)))
  copied = snapshot(copy)
  result = ckptflow("doctor", "--relocate", "--home", str(copy), check=False)
  one_error_line(result, "cannot relocate", "exist under", "copy the whole home")
  assert snapshot(copy) == copied


def test_relocate_with_repair_is_refused(home):
  result = ckptflow("doctor", "--relocate", "--repair", "--home", str(home.home),
                    check=False)
  one_error_line(result, "--relocate and --repair are separate steps")


def test_relocate_in_a_home_that_is_its_own_does_nothing(home):
  before = snapshot(home.home)
  result = ckptflow("doctor", "--relocate", "--home", str(home.home))
  assert "nothing to relocate" in result.stdout
  assert snapshot(home.home) == before


def test_relocation_rewrites_whole_path_prefixes_only():
  rewrite = relocate._rewriter([("/a/home", "/b/copy")])  # pylint: disable=protected-access
  assert rewrite("/a/home") == "/b/copy"
  assert rewrite("/a/home/pipeline_root/x") == "/b/copy/pipeline_root/x"
  assert rewrite('{"base_directory": "/a/home/serving/m"}') == (
      '{"base_directory": "/b/copy/serving/m"}')
  assert rewrite("ckptflow.served:/a/home/serving/m/1") == (
      "ckptflow.served:/b/copy/serving/m/1")
  assert rewrite("/a/home2/x") == "/a/home2/x"
  assert rewrite("/x/a/home/y") == "/x/a/home/y"


# --- every delete path, against records that point outside the home ----------


def test_doctor_repairs_never_delete_outside_the_home(home, tmp_path):
  outside = tmp_path / "elsewhere"
  victims = {
      "checkpoint-staging": outside / "c" / "step-00000100.staging",
      "checkpoint-orphan": outside / "c" / "step-00000200",
      "checkpoint-pruned": outside / "c" / "step-00000300",
      "export-staging": outside / "e" / "export-1.staging",
      "export-orphan": outside / "e" / "export-2",
      "push-staging": outside / "s" / "penguin" / ".staging-2-1",
      "version-unrecorded": outside / "s" / "penguin" / "2",
  }
  for path in victims.values():
    path.mkdir(parents=True)
    (path / "data").write_bytes(b"keep me")
  temp = outside / "s" / ".models.config.tmp-1"
  temp.write_bytes(b"keep me")
  before = snapshot(outside)
  findings = [doctor.Finding(kind, str(path), "planted", "deleted")
              for kind, path in victims.items()]
  findings.append(doctor.Finding("models-config", str(temp), "planted", "deleted"))
  repaired = doctor.repair(home.store, home.where(), findings)
  assert snapshot(outside) == before
  assert all(not f.repaired and "refusing to" in f.refused for f in repaired)
  assert "[not repaired: refusing to" in repaired[0].line()


def test_recovery_in_a_home_whose_store_points_outside_deletes_nothing(toy, tmp_path):
  # An old home's store (no identity) whose records point at another home:
  # `run`'s recovery stops before repairing anything.
  other = ToyHome(tmp_path / "other")
  other.checkpoint(100)
  shutil.copy(other.target, toy.target)
  outside, inside = snapshot(other.home), snapshot(toy.home)
  with pytest.raises(identity.HomeMismatchError):
    doctor.recover(toy.target, toy.where())
  assert snapshot(other.home) == outside
  assert snapshot(toy.home) == inside


def test_push_cleanup_never_follows_a_link_outside_the_serving_root(tmp_path):
  root = tmp_path / "serving"
  outside = tmp_path / "elsewhere"
  (outside / ".staging-7-1").mkdir(parents=True)
  (outside / ".staging-7-1" / "data").write_bytes(b"keep me")
  root.mkdir()
  (root / "penguin").symlink_to(outside, target_is_directory=True)
  before = snapshot(outside)
  source = make_saved_model(tmp_path / "model")
  with pytest.raises(storage.OutsideRootsError, match="refusing to delete"):
    serving.push_saved_model(source, str(root), "penguin")
  after = snapshot(outside)
  after.pop(".lock")  # the push's lock, taken before the cleanup (created, not changed)
  assert after == before
  # models.config's leftover temp files, through a serving root whose
  # models.config directory entry links outside: refused the same way.
  (outside / ".models.config.tmp-1").write_bytes(b"keep me")
  with pytest.raises(storage.OutsideRootsError):
    storage.remove_file(str(root / "penguin" / ".models.config.tmp-1"), [str(root)])
  assert (outside / ".models.config.tmp-1").read_bytes() == b"keep me"


def test_retention_never_deletes_checkpoints_recorded_outside_its_root(tmp_path):
  import tensorflow as tf

  from ckptflow.components.trainer import policies
  from ckptflow.components.trainer.loop import Checkpointer
  from ckptflow.components.trainer.registration import MlmdCheckpointSink

  (tmp_path / "copy").mkdir()
  store = open_store(str(tmp_path / "copy" / "metadata.sqlite"))
  execution_id = start_execution(store)
  # Records of the same training run whose files are another home's.
  original = tmp_path / "original"
  registry = CheckpointRegistry(store, execution_id)
  for step in (100, 200):
    register_checkpoint(registry, write_checkpoint_dir(original, execution_id, step), step)
  before = snapshot(original)
  checkpoint_dir = (tmp_path / "copy" / "pipeline_root" / "CheckpointingTrainer"
                    / "checkpoints" / "run" / f"exec-{execution_id}")
  checkpointer = Checkpointer(
      tf.train.Checkpoint(v=tf.Variable(1.0)), checkpoint_dir=str(checkpoint_dir),
      fingerprint="f", resume_key="k", sink=MlmdCheckpointSink(store, execution_id, "k"),
      retention=policies.KeepLast(1))
  try:
    for step in (300, 400):
      checkpointer.save(step, 0, {"loss": 1.0})
  finally:
    checkpointer.close()
  assert snapshot(original) == before
  by_step = {r.step: r for r in ckpt_records.list_checkpoints(store)}
  assert by_step[100].live and by_step[200].live  # refused: left LIVE
  assert by_step[300].state == "DELETED" and not os.path.exists(by_step[300].uri)
  assert by_step[400].live and os.path.isdir(by_step[400].uri)


# --- a home that uses MySQL remembers its store ------------------------------


@pytest.fixture
def mysql_user(mysql_database):
  user, password = f"u{mysql_database[-10:]}", "s3cret-pw"
  mysql_admin(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'")
  mysql_admin(f"CREATE USER '{user}'@'localhost' IDENTIFIED BY '{password}'")
  mysql_admin(f"GRANT ALL ON `{mysql_database}`.* TO '{user}'@'%'")
  mysql_admin(f"GRANT ALL ON `{mysql_database}`.* TO '{user}'@'localhost'")
  try:
    yield user, password
  finally:
    mysql_admin(f"DROP USER IF EXISTS '{user}'@'%'", check=False)
    mysql_admin(f"DROP USER IF EXISTS '{user}'@'localhost'", check=False)


def test_home_remembers_its_mysql_store_without_the_password(tmp_path, mysql_database,
                                                              mysql_user):
  user, password = mysql_user
  bare = mysql_target(mysql_database).replace("root@", f"{user}@")
  with_password = bare.replace(f"{user}@", f"{user}:{password}@")
  home = tmp_path / "home"
  home.mkdir()
  store = open_store(with_password)
  registry = CheckpointRegistry(store, start_execution(store))
  register_checkpoint(registry, write_checkpoint_dir(home, 1, 100), 100)
  ckptflow("doctor", "--repair", "--home", str(home), "--metadata", with_password)
  assert read_identity(Home(str(home))).metadata == bare
  for path in home.rglob("*"):
    if path.is_file():
      assert password.encode() not in path.read_bytes(), path
  # The home finds its store; the password is asked for by name.
  missing = ckptflow("checkpoints", "--home", str(home), check=False,
                     env={"CKPTFLOW_METADATA": "", "CKPTFLOW_MYSQL_PASSWORD": ""})
  one_error_line(missing, "no password was given", "CKPTFLOW_MYSQL_PASSWORD",
                 f"mysql://{user}:PASSWORD@")
  listed = ckptflow("checkpoints", "--home", str(home), "--json",
                    env={"CKPTFLOW_METADATA": "", "CKPTFLOW_MYSQL_PASSWORD": password})
  [record] = json.loads(listed.stdout)["checkpoints"]
  assert record["step"] == 100


def test_home_with_root_mysql_store_is_found_by_a_plain_checkpoints(tmp_path,
                                                                     mysql_database):
  target = mysql_target(mysql_database)
  home = tmp_path / "home"
  home.mkdir()
  ckptflow("doctor", "--repair", "--home", str(home), "--metadata", target)
  assert read_identity(Home(str(home))).metadata == target
  result = ckptflow("checkpoints", "--home", str(home), env={"CKPTFLOW_METADATA": ""})
  assert result.stdout.startswith("no checkpoints")
  assert not (home / "metadata.sqlite").exists()


def test_a_recorded_target_never_holds_the_password():
  from ckptflow.base import metadata
  assert metadata.without_password("mysql://u:p%40ss@h:3306/db") == "mysql://u@h:3306/db"
  assert metadata.without_password("mysql://u@h/db") == "mysql://u@h/db"
  assert metadata.without_password("/x/m.sqlite") == "/x/m.sqlite"
  where = Home("/x/home")
  assert identity.recordable_target("/x/home/metadata.sqlite", where) is None
  assert identity.recordable_target("mysql://u:p@h:3306/db", where) == "mysql://u@h:3306/db"


def test_the_home_s_recorded_store_comes_after_flag_and_environment(tmp_path, monkeypatch):
  from ckptflow.base import metadata
  from ckptflow.base.home import HomeIdentity, write_identity
  home = tmp_path / "home"
  home.mkdir()
  monkeypatch.delenv(metadata.METADATA_ENV, raising=False)
  assert metadata.resolve_target(None, str(home)) == str(home / "metadata.sqlite")
  write_identity(Home(str(home)), HomeIdentity("abc", "mysql://u@h:3306/db"))
  assert metadata.resolve_target(None, str(home)) == "mysql://u@h:3306/db"
  assert metadata.resolve_target("/y.sqlite", str(home)) == "/y.sqlite"
  monkeypatch.setenv(metadata.METADATA_ENV, "mysql://e@h/db")
  assert metadata.resolve_target(None, str(home)) == "mysql://e@h/db"


def test_a_mysql_password_comes_from_the_target_else_the_environment(monkeypatch):
  from ckptflow.base import metadata
  monkeypatch.setenv(metadata.MYSQL_PASSWORD_ENV, "from-env")
  assert metadata.connection_config("mysql://u@h/db").mysql.password == "from-env"
  assert metadata.connection_config("mysql://u:given@h/db").mysql.password == "given"
  monkeypatch.delenv(metadata.MYSQL_PASSWORD_ENV)
  assert metadata.connection_config("mysql://u@h/db").mysql.password == ""


def test_the_same_home_through_a_symlink_is_not_a_copy(home, tmp_path):
  link = tmp_path / "link"
  link.symlink_to(home.home, target_is_directory=True)
  result = ckptflow("doctor", "--home", str(link))
  assert result.returncode == 0, result.stderr


# --- the serving root a home's runs push to ------------------------------------


def test_commands_given_no_serving_dir_use_the_one_the_home_s_runs_push_to(home, tmp_path):
  from ckptflow.cli import main as cli
  elsewhere = str(tmp_path / "shared-serving")
  identity.remember_serving_dir(Home(str(home.home), elsewhere))
  assert read_identity(str(home.home)).serving_dir == elsewhere
  for argv in (["rollback", "penguin"], ["gc", "--dry-run"], ["doctor"], ["checkpoints"],
               ["promote", "latest"]):
    args = cli.build_parser().parse_args([*argv, "--home", str(home.home)])
    assert cli._where(args).serving_root == elsewhere, argv
  given = str(tmp_path / "given")
  args = cli.build_parser().parse_args(["rollback", "penguin", "--home", str(home.home),
                                        "--serving-dir", given])
  assert cli._where(args).serving_root == given
  # A run that pushes to HOME/serving again makes it the default again.
  identity.remember_serving_dir(Home(str(home.home)))
  assert read_identity(str(home.home)).serving_dir is None
  args = cli.build_parser().parse_args(["rollback", "penguin", "--home", str(home.home)])
  assert cli._where(args).serving_root == str(home.home / "serving")


def test_a_serving_dir_inside_the_home_is_recorded_relative_so_a_copy_uses_its_own(
    home, tmp_path):
  identity.remember_serving_dir(Home(str(home.home), str(home.home / "other-serving")))
  with open(Home(str(home.home)).identity_file) as f:
    assert json.load(f)["serving_dir"] == "other-serving"
  copy = tmp_path / "copy"
  shutil.copytree(home.home, copy)
  assert identity.serving_dir_of(str(copy)) == str(copy / "other-serving")
  original = snapshot(home.home)
  ckptflow("doctor", "--relocate", "--home", str(copy))
  assert identity.serving_dir_of(str(copy)) == str(copy / "other-serving")
  [registration] = identity.registrations(open_store(str(copy / "metadata.sqlite"),
                                                     create=False))
  assert all(not r.startswith(str(home.home)) for r in registration.roots), registration
  assert snapshot(home.home) == original
