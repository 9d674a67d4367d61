"""Tests for atomic, versioned pushes and models.config."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from ckptflow.components.pusher import serving
from ckptflow.base.errors import ServingError
from ckptflow.base.names import validate_model_name


def make_saved_model(path, marker="m", n_variable_files=3, size=4096):
  """A directory shaped like a SavedModel (enough for the copy logic)."""
  os.makedirs(os.path.join(path, "variables"))
  os.makedirs(os.path.join(path, "assets"))
  with open(os.path.join(path, "saved_model.pb"), "wb") as f:
    f.write(b"pb:" + marker.encode())
  with open(os.path.join(path, "fingerprint.pb"), "wb") as f:
    f.write(b"fp")
  with open(os.path.join(path, "assets", "vocab.txt"), "w") as f:
    f.write(marker)
  for i in range(n_variable_files):
    with open(os.path.join(path, "variables", f"variables.data-{i:05d}"), "wb") as f:
      f.write(marker.encode() * size)
  return str(path)


def tree(path):
  """{relative path: bytes} of every file under `path`."""
  found = {}
  for root, _, files in os.walk(path):
    for name in files:
      full = os.path.join(root, name)
      with open(full, "rb") as f:
        found[os.path.relpath(full, path)] = f.read()
  return found


def run_python(code, env_extra=None, timeout=60):
  env = dict(os.environ, **(env_extra or {}))
  env.pop("CKPTFLOW_FAULT_AFTER", None)
  return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("name", [
    "", "a/b", "a\\b", "..", "a..b", ".hidden", "has space", "tab\tname",
    "new\nline", "caf\u00e9", "semi;colon", "x" * 256,
])
def test_validate_model_name_rejects_unsafe_name_naming_it(name):
  with pytest.raises(ServingError) as raised:
    validate_model_name(name)
  message = str(raised.value)
  assert "\n" not in message
  assert repr(name) in message
  assert "Expected" in message


@pytest.mark.parametrize("name", ["penguin", "my-model_2", "v1.2", "A"])
def test_validate_model_name_accepts_safe_name(name):
  assert validate_model_name(name) == name


def test_first_push_publishes_version_1_with_identical_files(tmp_path):
  source = make_saved_model(tmp_path / "export")
  root = tmp_path / "serving"

  served = serving.push_saved_model(source, str(root), "penguin")

  assert served == serving.ServedVersion("penguin", 1, str(root / "penguin" / "1"))
  assert tree(served.path) == tree(source)
  assert serving.list_versions(str(root), "penguin") == [1]
  assert (root / "penguin" / ".last_version").read_text().strip() == "1"
  assert not [n for n in os.listdir(root / "penguin") if n.startswith(".staging-")]


def test_pushes_get_increasing_versions_and_never_overwrite(tmp_path):
  root = str(tmp_path / "serving")
  first = serving.push_saved_model(make_saved_model(tmp_path / "a", "a"), root, "m")
  second = serving.push_saved_model(make_saved_model(tmp_path / "b", "b"), root, "m")

  assert (first.version, second.version) == (1, 2)
  assert tree(first.path)["saved_model.pb"] == b"pb:a"
  assert tree(second.path)["saved_model.pb"] == b"pb:b"


def test_deleted_version_number_is_not_reused(tmp_path):
  root = str(tmp_path / "serving")
  source = make_saved_model(tmp_path / "export")
  serving.push_saved_model(source, root, "m")
  second = serving.push_saved_model(source, root, "m")
  shutil.rmtree(second.path)

  third = serving.push_saved_model(source, root, "m")

  assert third.version == 3
  assert serving.list_versions(root, "m") == [1, 3]


def test_reserved_versions_and_foreign_numeric_dirs_raise_next_version(tmp_path):
  root = tmp_path / "serving"
  source = make_saved_model(tmp_path / "export")
  os.makedirs(root / "m" / "7")

  served = serving.push_saved_model(source, str(root), "m", reserved_versions=[4, 11])

  assert served.version == 12
  assert os.listdir(root / "m" / "7") == []


def test_push_of_non_savedmodel_fails_and_writes_nothing(tmp_path):
  source = tmp_path / "not_a_model"
  os.makedirs(source / "variables")
  root = tmp_path / "serving"

  with pytest.raises(ServingError, match="saved_model.pb"):
    serving.push_saved_model(str(source), str(root), "m")
  assert not root.exists()


def test_push_of_missing_source_fails_and_writes_nothing(tmp_path):
  root = tmp_path / "serving"
  with pytest.raises(ServingError, match="does not exist"):
    serving.push_saved_model(str(tmp_path / "nope"), str(root), "m")
  assert not root.exists()


@pytest.mark.parametrize("name", ["../escape", ".staging-1-1", "a b", ""])
def test_push_with_bad_model_name_fails_and_writes_nothing(tmp_path, name):
  source = make_saved_model(tmp_path / "export")
  root = tmp_path / "serving"
  os.makedirs(root)

  with pytest.raises(ServingError, match="model name"):
    serving.push_saved_model(source, str(root), name)
  assert os.listdir(root) == []
  assert sorted(os.listdir(tmp_path)) == ["export", "serving"]


def test_push_under_a_regular_file_fails_and_writes_nothing(tmp_path):
  # Root ignores permission bits, but no one can make a directory inside a
  # regular file (ENOTDIR), so this root is really unwritable.
  source = make_saved_model(tmp_path / "export")
  blocker = tmp_path / "blocker"
  blocker.write_bytes(b"keep me")
  before = sorted(os.listdir(tmp_path))

  with pytest.raises(ServingError, match="not a directory") as raised:
    serving.push_saved_model(source, str(blocker / "serving"), "m")

  assert "\n" not in str(raised.value)
  assert sorted(os.listdir(tmp_path)) == before
  assert blocker.read_bytes() == b"keep me"


def test_push_to_serving_root_that_is_a_file_fails_and_writes_nothing(tmp_path):
  source = make_saved_model(tmp_path / "export")
  root = tmp_path / "serving"
  root.write_bytes(b"")

  with pytest.raises(ServingError):
    serving.push_saved_model(source, str(root), "m")
  assert root.read_bytes() == b""


def test_push_of_source_with_fifo_fails_and_removes_staging(tmp_path):
  source = make_saved_model(tmp_path / "export")
  os.mkfifo(os.path.join(source, "variables", "pipe"))
  root = tmp_path / "serving"

  with pytest.raises(ServingError, match="not a regular file"):
    serving.push_saved_model(source, str(root), "m")
  assert serving.list_versions(str(root), "m") == []
  assert [n for n in os.listdir(root / "m") if n.startswith(".staging-")] == []


def test_processes_racing_get_distinct_versions_and_nothing_is_overwritten(tmp_path):
  root = tmp_path / "serving"
  go = tmp_path / "go"
  pushers, pushes_each = ("p0", "p1", "p2"), 6
  sources = {p: make_saved_model(tmp_path / f"src-{p}", p, n_variable_files=8,
                                 size=64 * 1024) for p in pushers}
  code = """
      import os, sys, time
      from ckptflow.components.pusher import serving
      source, root, go = sys.argv[1:4]
      while not os.path.exists(go):  # start together
        time.sleep(0.002)
      for _ in range({n}):
        print(serving.push_saved_model(source, root, "m").version, flush=True)
  """.format(n=pushes_each)
  env = {k: v for k, v in os.environ.items() if not k.startswith("CKPTFLOW_FAULT")}
  procs = {p: subprocess.Popen(
      [sys.executable, "-c", textwrap.dedent(code), src, str(root), str(go)],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for p, src in sources.items()}
  go.write_text("go")
  outputs = {p: proc.communicate(timeout=120) for p, proc in procs.items()}

  for p, proc in procs.items():
    assert proc.returncode == 0, outputs[p][1]
  versions = {p: [int(v) for v in out.split()] for p, (out, _) in outputs.items()}
  all_versions = [v for p in pushers for v in versions[p]]
  assert sorted(all_versions) == list(range(1, len(pushers) * pushes_each + 1))
  assert serving.list_versions(str(root), "m") == sorted(all_versions)
  for p, pushed in versions.items():
    assert pushed == sorted(pushed)
    for version in pushed:  # each version holds exactly the files its pusher sent
      assert tree(root / "m" / str(version)) == tree(sources[p])


def _push_in_subprocess(source, root, fault):
  return run_python(f"""
      from ckptflow.components.pusher import serving
      serving.push_saved_model({str(source)!r}, {str(root)!r}, "m")
  """, env_extra={"CKPTFLOW_FAULT": fault})


@pytest.mark.parametrize("fault", ["push-copy", "push-rename"])
def test_push_killed_midway_leaves_no_partial_version_and_next_push_takes_next_number(
    tmp_path, fault):
  source = make_saved_model(tmp_path / "export", "v", n_variable_files=5)
  root = tmp_path / "serving"
  first = serving.push_saved_model(source, str(root), "m")

  killed = _push_in_subprocess(source, root, fault)

  assert killed.returncode == -signal.SIGKILL, killed.stderr
  assert serving.list_versions(str(root), "m") == [1]
  stale = serving.stale_staging_dirs(str(root), "m")
  assert [os.path.basename(p).split("-")[1] for p in stale] == ["2"]
  assert tree(first.path) == tree(source)

  second = serving.push_saved_model(source, str(root), "m")

  assert second.version == 2
  assert tree(second.path) == tree(source)
  assert serving.stale_staging_dirs(str(root), "m") == []
  assert not [n for n in os.listdir(root / "m") if n.startswith(".staging-")]


def test_push_copy_fault_fires_after_a_file_is_copied_but_before_saved_model_pb(tmp_path):
  source = make_saved_model(tmp_path / "export")
  root = tmp_path / "serving"

  killed = _push_in_subprocess(source, root, "push-copy")

  assert killed.returncode == -signal.SIGKILL
  [staging] = serving.stale_staging_dirs(str(root), "m")
  copied = tree(staging)
  assert copied  # midway: at least one file is there
  assert "saved_model.pb" not in copied


def test_stale_staging_dirs_excludes_a_push_in_progress(tmp_path):
  root = tmp_path / "serving"
  base = root / "m"
  os.makedirs(base / f".staging-3-{os.getpid()}")  # this process: alive
  os.makedirs(base / ".staging-2-999999999")  # no such process
  code = f"""
      import fcntl, os, sys, time
      fd = os.open({str(base / '.lock')!r}, os.O_RDWR | os.O_CREAT)
      fcntl.flock(fd, fcntl.LOCK_EX)
      print("locked", flush=True)
      sys.stdin.read()
  """
  holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    busy = serving.stale_staging_dirs(str(root), "m")
  finally:
    holder.communicate("", timeout=30)

  assert [os.path.basename(p) for p in busy] == [".staging-2-999999999"]
  assert len(serving.stale_staging_dirs(str(root), "m")) == 2


def test_models_config_round_trips_and_parses_with_tf_serving_proto(tmp_path):
  root = tmp_path / "serving"
  states = {
      "penguin": serving.ModelServingState(versions=(5, 3), labels={"stable": 3, "canary": 5}),
      "other": serving.ModelServingState(versions=(1,), labels={}),
  }

  path = serving.write_models_config(str(root), states)

  assert serving.read_models_config(str(root)) == states
  config = text_format.Parse(open(path).read(), model_server_config_pb2.ModelServerConfig())
  by_name = {c.name: c for c in config.model_config_list.config}
  assert sorted(by_name) == ["other", "penguin"]
  penguin = by_name["penguin"]
  assert penguin.base_path == str(root / "penguin")
  assert os.path.isabs(penguin.base_path)
  assert penguin.model_platform == "tensorflow"
  assert list(penguin.model_version_policy.specific.versions) == [3, 5]
  assert dict(penguin.version_labels) == {"canary": 5, "stable": 3}
  assert [n for n in os.listdir(root) if n.startswith(".models.config.tmp")] == []


def test_label_on_unloaded_version_is_rejected(tmp_path):
  with pytest.raises(ServingError, match="not loaded"):
    serving.ModelServingState(versions=(1, 2), labels={"stable": 3})


def test_write_models_config_under_a_regular_file_fails_and_writes_nothing(tmp_path):
  blocker = tmp_path / "blocker"
  blocker.write_bytes(b"x")
  with pytest.raises(ServingError):
    serving.write_models_config(str(blocker / "serving"),
                                {"m": serving.ModelServingState(versions=(1,))})
  assert sorted(os.listdir(tmp_path)) == ["blocker"]


def test_models_config_writer_killed_before_replace_leaves_old_config_whole(tmp_path):
  root = tmp_path / "serving"
  old = {"m": serving.ModelServingState(versions=(1,), labels={"stable": 1})}
  serving.write_models_config(str(root), old)

  killed = run_python(f"""
      from ckptflow.components.pusher import serving
      serving.write_models_config({str(root)!r}, {{
          "m": serving.ModelServingState(versions=(1, 2), labels={{"stable": 2}})}})
  """, env_extra={"CKPTFLOW_FAULT": "models-config-replace"})

  assert killed.returncode == -signal.SIGKILL, killed.stderr
  assert serving.read_models_config(str(root)) == old
  new = {"m": serving.ModelServingState(versions=(2,), labels={"stable": 2})}
  serving.write_models_config(str(root), new)
  assert serving.read_models_config(str(root)) == new
  assert [n for n in os.listdir(root) if n.startswith(".models.config.tmp")] == []


def test_read_models_config_rejects_garbage_with_one_line_error(tmp_path):
  (tmp_path / "models.config").write_text("model_config_list { nonsense: 1 }")
  with pytest.raises(ServingError, match="not a ModelServerConfig") as raised:
    serving.read_models_config(str(tmp_path))
  assert "\n" not in str(raised.value)


def test_read_models_config_of_empty_root_is_empty(tmp_path):
  assert serving.read_models_config(str(tmp_path)) == {}


def test_pushed_real_savedmodel_loads_from_version_dir(tmp_path, monkeypatch):
  monkeypatch.setenv("TF_USE_LEGACY_KERAS", "1")
  tf = pytest.importorskip("tensorflow")

  class Doubler(tf.Module):

    def __init__(self):
      super().__init__()
      self.factor = tf.Variable(2.0)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def __call__(self, x):
      return x * self.factor

  export = str(tmp_path / "export")
  tf.saved_model.save(Doubler(), export)

  served = serving.push_saved_model(export, str(tmp_path / "serving"), "doubler")

  loaded = tf.saved_model.load(served.path)
  assert loaded(tf.constant([1.5, 3.0])).numpy().tolist() == [3.0, 6.0]
  assert sorted(os.listdir(served.path)) == sorted(os.listdir(export))
