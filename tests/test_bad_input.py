"""Bad input ends with one line naming the problem, exit status 2, and
nothing written: no new file or directory, no changed byte, no new MLMD
artifact, execution, event or context.

Every case runs the real `ckptflow` CLI in a subprocess, against a home that
already holds a store with checkpoints and a served version (so that "no
new record" means something).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import shutil
import socket
import subprocess
import threading
import uuid

import pytest
from ml_metadata.proto import metadata_store_pb2

from ckptflow.components import checkpoint as ckpt_records
from reliability_support import (MYSQL_HOST, MYSQL_PORT, ToyHome, mlmd_counts, mysql_admin,
                                 mysql_target)
from support import ckptflow

HEADER = "species,culmen_length_mm,culmen_depth_mm,flipper_length_mm,body_mass_g"
GOOD_ROWS = ["0,0.25,0.66,0.15,0.29", "1,0.5,0.2,0.6,0.7", "2,0.9,0.4,0.8,0.9"]


def snapshot(*roots: pathlib.Path) -> dict[str, str]:
  """path -> sha256 (files) or "dir", under every root (lock file and
  SQLite journals left out)."""
  listing = {}
  for root in roots:
    if not root.exists():
      continue
    for path in sorted(root.rglob("*")):
      if path.name == ".ckptflow.lock" or path.name.endswith("-journal"):
        continue
      listing[str(path)] = ("dir" if path.is_dir() and not path.is_symlink()
                            else hashlib.sha256(path.read_bytes()).hexdigest())
  return listing


def with_tests_on_path() -> str:
  """PYTHONPATH for a subprocess that imports the test helpers: tests/ first,
  then the caller's own entries (which decide where `ckptflow` comes from)."""
  return os.pathsep.join(filter(None, [str(pathlib.Path(__file__).parent),
                                       os.environ.get("PYTHONPATH")]))


def write_csv(directory: pathlib.Path, lines, name="data.csv", mode="w") -> pathlib.Path:
  directory.mkdir(parents=True, exist_ok=True)
  path = directory / name
  if isinstance(lines, bytes):
    path.write_bytes(lines)
  else:
    path.write_text("".join(line + "\n" for line in lines))
  return directory


@contextlib.contextmanager
def tmpfs(path: pathlib.Path, *, size: str, read_only: bool = False):
  """A real tmpfs mounted at `path` (needs root); skips the test if this
  machine does not allow mounting."""
  path.mkdir(parents=True, exist_ok=True)
  options = f"size={size}" + (",ro" if read_only else "")
  result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True, text=True)
  if result.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
  try:
    yield path
  finally:
    subprocess.run(["umount", "-l", str(path)], check=False)


class Case:
  def __init__(self, case_id, fragment, build, *, command="run", marks=()):
    self.id = case_id
    self.fragment = fragment  # what the one-line error must contain
    self.build = build  # (tmp_path, toy) -> (args, extra roots to snapshot, env)
    self.command = command
    self.marks = marks


def run_with_data(lines_or_files, *extra):
  """A `ckptflow run` case on a data directory holding `lines_or_files`
  (a list of lines for data.csv, or {name: lines})."""
  def build(tmp_path, toy):
    data = tmp_path / "data"
    data.mkdir()
    files = lines_or_files if isinstance(lines_or_files, dict) else {"data.csv": lines_or_files}
    for name, lines in files.items():
      write_csv(data, lines, name=name)
    return ["run", "--home", str(toy.home), "--data", str(data), *extra], [data], {}
  return build


def run_with_flags(*flags, data_lines=None):
  def build(tmp_path, toy):
    data = write_csv(tmp_path / "data", data_lines or [HEADER, *GOOD_ROWS])
    return ["run", "--home", str(toy.home), "--data", str(data), *flags], [data], {}
  return build


def run_with_config(text, *extra, data_lines=None):
  """A `ckptflow run` case with a config file holding `text` (bytes are
  written as they are)."""
  def build(tmp_path, toy):
    data = write_csv(tmp_path / "data", data_lines or [HEADER, *GOOD_ROWS])
    config = tmp_path / "config.toml"
    if isinstance(text, bytes):
      config.write_bytes(text)
    else:
      config.write_text(text)
    return (["run", "--home", str(toy.home), "--data", str(data), "--config", str(config),
             *extra], [data, config], {})
  return build


def run_with_module(source, *, config=None):
  """A `ckptflow run` case whose model module is a .py file holding
  `source` (bytes are written as they are), with a config file holding
  `config` if given."""
  def build(tmp_path, toy):
    data = write_csv(tmp_path / "data", [HEADER, *GOOD_ROWS])
    module = tmp_path / "my_model.py"
    if isinstance(source, bytes):
      module.write_bytes(source)
    else:
      module.write_text(source)
    extra = []
    if config is not None:
      (tmp_path / "config.toml").write_text(config)
      extra = ["--config", str(tmp_path / "config.toml")]
    return (["run", "--home", str(toy.home), "--data", str(data), "--module", str(module),
             *extra], [data, module], {})
  return build


def module_file_missing(tmp_path, toy):
  return run_with_flags("--module", str(tmp_path / "my_model.py"))(tmp_path, toy)


def run_on_new_home(*flags):
  """A `ckptflow run` case on a home that does not exist yet: nothing may
  appear there (no store, no sample data, no directories)."""
  def build(tmp_path, toy):
    data = write_csv(tmp_path / "data", [HEADER, *GOOD_ROWS])
    home = tmp_path / "new-home"
    return ["run", "--home", str(home), "--data", str(data), *flags], [data, home], {}
  return build


def checkpoint_id(toy, index=0) -> int:
  return ckpt_records.list_checkpoints(toy.store)[index].id


def warm_start_pruned(tmp_path, toy):
  record = ckpt_records.list_checkpoints(toy.store)[0]
  ckpt_records.set_states(toy.store, [record.id], metadata_store_pb2.Artifact.DELETED)
  shutil.rmtree(record.uri)
  return run_with_flags("--warm-start", str(record.id))(tmp_path, toy)


def warm_start_corrupted(tmp_path, toy):
  record = ckpt_records.list_checkpoints(toy.store)[0]
  with open(os.path.join(record.uri, "ckpt.data-00000-of-00001"), "r+b") as f:
    f.write(b"\xff\xfe")
  return run_with_flags("--warm-start", str(record.id))(tmp_path, toy)


def warm_start_latest_on_new_home(tmp_path, toy):
  data = write_csv(tmp_path / "data", [HEADER, *GOOD_ROWS])
  home = tmp_path / "fresh"
  return ["run", "--home", str(home), "--data", str(data), "--warm-start", "latest"], \
      [data, home], {}


def home_under_a_file(tmp_path, toy):
  data = write_csv(tmp_path / "data", [HEADER, *GOOD_ROWS])
  blocker = tmp_path / "not-a-dir"
  blocker.write_text("a file")
  return ["run", "--home", str(blocker / "home"), "--data", str(data)], [data, blocker], {}


def corrupted_sqlite(tmp_path, toy):
  home = tmp_path / "corrupt"
  home.mkdir()
  (home / "metadata.sqlite").write_bytes(b"this is not a database" * 100)
  data = write_csv(tmp_path / "data", [HEADER, *GOOD_ROWS])
  return ["run", "--home", str(home), "--data", str(data)], [home, data], {}


def corrupted_sqlite_listing(tmp_path, toy):
  args, roots, env = corrupted_sqlite(tmp_path, toy)
  return ["checkpoints", "--home", args[2]], roots, env


def unreachable_mysql(tmp_path, toy):
  data = write_csv(tmp_path / "data", [HEADER, *GOOD_ROWS])
  home = tmp_path / "mysql-home"
  # Port 9 (discard) on localhost: nothing listens, the connection is refused.
  return ["run", "--home", str(home), "--data", str(data), "--metadata",
          f"mysql://root@{MYSQL_HOST}:9/ckptflow_unreachable"], [home, data], {}


def unreachable_mysql_from_environment(tmp_path, toy):
  args, roots, env = unreachable_mysql(tmp_path, toy)
  target = args.pop()
  args.pop()  # --metadata: the run must find the target in CKPTFLOW_METADATA
  return args, roots, {"CKPTFLOW_METADATA": target}


def not_a_mysql_server(answer: bytes):
  """A case whose metadata target is a real TCP server on 127.0.0.1 that
  accepts connections, sends `answer` instead of a MySQL greeting (as
  another service on a mistyped port would), and closes them."""
  return lambda tmp_path, toy: _serve_and_run(answer, tmp_path, toy)


def _serve_and_run(answer: bytes, tmp_path, toy):
  server = socket.socket()
  server.bind(("127.0.0.1", 0))
  server.listen(8)

  def serve():
    while True:
      try:
        connection, _ = server.accept()
      except OSError:
        return
      if answer:
        connection.sendall(answer)
      connection.close()

  threading.Thread(target=serve, daemon=True).start()
  port = server.getsockname()[1]
  return run_on_new_home("--metadata", f"mysql://root@127.0.0.1:{port}/ckptflow")(
      tmp_path, toy)


def unknown_metadata_scheme(tmp_path, toy):
  return ["checkpoints", "--home", str(toy.home), "--metadata", "postgres://x/y"], [], {}


def missing_store(tmp_path, toy):
  return ["checkpoints", "--home", str(tmp_path / "nowhere")], [tmp_path / "nowhere"], {}


def on_toy(*args):
  """A case running `ckptflow ARGS --home HOME` on the toy home."""
  return lambda tmp_path, toy: ([*args, "--home", str(toy.home)], [], {})


def on_pruned_checkpoint(command):
  def build(tmp_path, toy):
    record = ckpt_records.list_checkpoints(toy.store)[0]
    ckpt_records.set_states(toy.store, [record.id], metadata_store_pb2.Artifact.DELETED)
    shutil.rmtree(record.uri)
    return [command, str(record.id), "--home", str(toy.home)], [], {}
  return build


CASES = [
    # --- data ---------------------------------------------------------------
    Case("csv-unterminated-quote", "is not valid CSV",
         run_with_data([HEADER, GOOD_ROWS[0], '1,"0.5,0.2,0.6,0.7'])),
    Case("csv-row-with-extra-field", "line 3 has 6 fields. Expected 5",
         run_with_data([HEADER, GOOD_ROWS[0], "1,0.5,0.2,0.6,0.7,9"])),
    Case("csv-row-with-missing-field", "line 2 has 4 fields. Expected 5",
         run_with_data([HEADER, "1,0.5,0.2,0.6", GOOD_ROWS[1]])),
    Case("csv-blank-line", "line 3 is blank",
         run_with_data([HEADER, GOOD_ROWS[0], "", GOOD_ROWS[1]])),
    Case("csv-empty-file", "is empty (no header row)", run_with_data([])),
    Case("csv-header-only", "holds no data rows", run_with_data([HEADER])),
    Case("csv-duplicate-column", "names column 'culmen_depth_mm' twice",
         run_with_data([HEADER + ",culmen_depth_mm", GOOD_ROWS[0] + ",0.1"])),
    Case("csv-headers-disagree", "has header",
         run_with_data({"a.csv": [HEADER, GOOD_ROWS[0]],
                        "b.csv": [HEADER.replace("body_mass_g", "mass"), GOOD_ROWS[1]]})),
    Case("csv-not-utf8", "is not UTF-8 text",
         lambda tmp_path, toy: (["run", "--home", str(toy.home), "--data",
                                 str(write_csv(tmp_path / "data", b"\xff\xfe\x00garbage\n"))],
                                [tmp_path / "data"], {})),
    Case("missing-feature-column", "data.features column 'wingspan' is not in the data",
         run_with_flags("--features", "culmen_length_mm,wingspan")),
    Case("missing-label-column", "data.label column 'island' is not in the data",
         run_with_flags("--label", "island")),
    Case("extra-text-column", "feature 'island' is 'Biscoe'. Expected a finite number",
         run_with_data([HEADER + ",island", GOOD_ROWS[0] + ",Biscoe"])),
    Case("label-is-text", "label 'species' is 'Adelie'. Expected an integer class id",
         run_with_data([HEADER, GOOD_ROWS[0], "Adelie,0.5,0.2,0.6,0.7"])),
    Case("label-is-fractional", "label 'species' is '1.5'",
         run_with_data([HEADER, "1.5,0.5,0.2,0.6,0.7"])),
    Case("label-above-configured-num-classes",
         "line 3: label 'species' is 7, but training.hyperparameters.num_classes is 3. "
         "Set [training] hyperparameters.num_classes = 8",
         run_with_config("[training]\nhyperparameters = { num_classes = 3 }\n",
                         data_lines=[HEADER, GOOD_ROWS[0], "7,0.5,0.2,0.6,0.7", GOOD_ROWS[1]])),
    Case("data-with-a-single-class", "label 'species' is 0 on all 2 rows. Expected at "
         "least two classes", run_with_data([HEADER, GOOD_ROWS[0], "0,0.5,0.2,0.6,0.7"])),
    Case("feature-nan", "feature 'culmen_depth_mm' is 'nan'. Expected a finite number",
         run_with_data([HEADER, GOOD_ROWS[0], "1,0.5,nan,0.6,0.7"])),
    Case("feature-inf", "feature 'body_mass_g' is '-inf'",
         run_with_data([HEADER, "1,0.5,0.2,0.6,-inf"])),
    Case("feature-empty", "feature 'flipper_length_mm' is empty",
         run_with_data([HEADER, "1,0.5,0.2,,0.7"])),
    Case("feature-with-underscore", "feature 'culmen_length_mm' is '1_5'",
         run_with_data([HEADER, GOOD_ROWS[0], "1,1_5,0.2,0.6,0.7"])),
    Case("single-feature-not-a-number", "feature 'body_mass_g' is 'heavy'",
         run_with_data([HEADER, GOOD_ROWS[0], "1,x,y,z,heavy"], "--features", "body_mass_g")),
    Case("data-dir-missing", "does not exist or is not a directory",
         lambda tmp_path, toy: (["run", "--home", str(toy.home), "--data",
                                 str(tmp_path / "no-such-dir")], [], {})),
    Case("data-dir-without-csv", "holds no *.csv file",
         run_with_data({"data.txt": [HEADER, GOOD_ROWS[0]]})),
    # --- config -------------------------------------------------------------
    Case("config-wrong-type", "training.train_steps is invalid. Received: 'ten'",
         run_with_config('[training]\ntrain_steps = "ten"\n')),
    Case("config-unknown-field", "unknown field training.epochs",
         run_with_config("[training]\nepochs = 3\n")),
    Case("config-unknown-section", "unknown section [model]",
         run_with_config("[model]\nlayers = 3\n")),
    Case("config-not-toml", "is not valid TOML", run_with_config("[training\n")),
    Case("config-file-missing", "does not exist",
         lambda tmp_path, toy: (["run", "--home", str(toy.home), "--config",
                                 str(tmp_path / "none.toml")], [], {})),
    Case("flag-zero-checkpoint-interval", "training.checkpoint_every is invalid. Received: 0",
         run_with_flags("--checkpoint-every", "0")),
    Case("flag-bad-warm-start", "training.warm_start is invalid. Received: 'sometimes'",
         run_with_flags("--warm-start", "sometimes")),
    # --- names and paths ------------------------------------------------------
    Case("model-name-path-traversal", "serving.model_name is invalid. Received: '../../etc'",
         run_with_flags("--model-name", "../../etc")),
    Case("model-name-with-slash", "serving.model_name is invalid. Received: 'a/b'",
         run_with_flags("--model-name", "a/b")),
    Case("home-under-a-file", "is a file. Expected a directory path", home_under_a_file),
    # --- ids ----------------------------------------------------------------
    Case("warm-start-unknown-id", "warm_start: no Checkpoint artifact with id 987654",
         run_with_flags("--warm-start", "987654")),
    Case("warm-start-pruned-checkpoint", "is DELETED", warm_start_pruned),
    Case("warm-start-corrupted-checkpoint", "is corrupted: its files do not match",
         warm_start_corrupted),
    Case("warm-start-latest-without-checkpoints", "holds no live checkpoint",
         warm_start_latest_on_new_home),
    Case("promote-unknown-id", "no artifact with id 987654", on_toy("promote", "987654")),
    Case("promote-pruned-checkpoint", "is DELETED: its files are gone",
         on_pruned_checkpoint("promote")),
    Case("export-pruned-checkpoint", "is DELETED: its files are gone",
         on_pruned_checkpoint("export")),
    Case("export-malformed-id", "checkpoint 'step:abc' is not valid",
         on_toy("export", "step:abc")),
    Case("promote-model-name-traversal", "model name '../../x' is not valid",
         on_toy("promote", "1", "--model-name", "../../x")),
    Case("rollback-to-unserved-version", "cannot roll back 'penguin' to version 99",
         on_toy("rollback", "penguin", "--to", "99")),
    Case("rollback-model-name-traversal", "model name '../x' is not valid",
         on_toy("rollback", "../x")),
    Case("rollback-with-one-version", "has only one served version (1), so there is "
         "nothing to roll back to", on_toy("rollback", "penguin")),
    Case("history-unknown-model", "model 'nomodel' has no pushes or labels",
         on_toy("history", "nomodel")),
    Case("history-at-in-the-future", "is in the future",
         on_toy("history", "penguin", "--at", "2999-01-01T00:00")),
    Case("history-at-unparsable", "--at 'yesterday' is not a time",
         on_toy("history", "penguin", "--at", "yesterday")),
    Case("history-model-name-traversal", "model name '../x' is not valid",
         on_toy("history", "../x")),
    Case("gc-keep-versions-zero", "--keep-versions is 0. Expected an integer >= 1",
         on_toy("gc", "--keep-versions", "0")),
    Case("gc-keep-versions-negative", "--keep-versions is -2. Expected an integer >= 1",
         on_toy("gc", "--keep-versions=-2")),
    Case("gc-keep-exports-negative", "--keep-exports is -1. Expected an integer >= 0",
         on_toy("gc", "--keep-exports=-1")),
    Case("lineage-unknown-version", "model 'nomodel' has no served version 3",
         on_toy("lineage", "nomodel:3")),
    Case("lineage-unknown-id", "no artifact with id 99999", on_toy("lineage", "99999")),
    # --- metadata store -------------------------------------------------------
    Case("grpc-server-unreachable",
         "cannot reach the metadata gRPC server at 127.0.0.1:1: Connection refused",
         run_on_new_home("--metadata", "grpc://127.0.0.1:1")),
    Case("grpc-target-with-a-path", "metadata target 'grpc://127.0.0.1:1/mlmd' is not "
         "grpc://HOST:PORT", run_on_new_home("--metadata", "grpc://127.0.0.1:1/mlmd")),
    Case("mysql-database-name-with-spaces",
         "database name 'my store' is not valid. Expected 1 to 64 letters, digits and '_'",
         run_on_new_home("--metadata", f"mysql://root@{MYSQL_HOST}:{MYSQL_PORT}/my store")),
    Case("mysql-database-name-with-a-dash", "database name 'ml-md' is not valid",
         run_on_new_home("--metadata", f"mysql://root@{MYSQL_HOST}:{MYSQL_PORT}/ml-md")),
    Case("mysql-database-name-digits-only", "database name '2024' is not valid",
         on_toy("checkpoints", "--metadata", f"mysql://root@{MYSQL_HOST}:{MYSQL_PORT}/2024")),
    Case("mysql-port-that-closes-at-once", "MySQL error 2013 at 127.0.0.1:",
         not_a_mysql_server(b"")),
    Case("mysql-port-of-another-service", "is not a MySQL server (its answer is not the "
         "MySQL protocol", not_a_mysql_server(b"HTTP/1.0 400 Bad Request\r\n\r\n")),
    Case("mysql-unknown-host", "MySQL error 2005: unknown MySQL server host "
         "'no-such-host.invalid'",
         run_on_new_home("--metadata", "mysql://root@no-such-host.invalid:3306/ckptflow")),
    Case("corrupted-sqlite-run", "cannot open metadata store", corrupted_sqlite),
    Case("corrupted-sqlite-listing", "cannot open metadata store", corrupted_sqlite_listing),
    Case("unknown-metadata-scheme", "has unknown scheme 'postgres'", unknown_metadata_scheme),
    Case("missing-store", "no metadata store at", missing_store),
    Case("mysql-refused", f"MySQL error 2003: connection to {MYSQL_HOST}:9 refused",
         unreachable_mysql),
    Case("mysql-refused-from-environment",
         f"MySQL error 2003: connection to {MYSQL_HOST}:9 refused",
         unreachable_mysql_from_environment),
    # --- the model module, its hyperparameters and metric names ----------------
    # Found before anything is written (and before TensorFlow is imported).
    Case("hyperparameter-of-the-wrong-type",
         "training.hyperparameters.learning_rate is invalid. Received: 'fast'. Expected "
         "a number (default 0.01, declared in ckptflow.pipeline.model HYPERPARAMETERS)",
         run_with_config('[training]\nhyperparameters = { learning_rate = "fast" }\n')),
    Case("hyperparameter-unknown-key", "training.hyperparameters has unknown key "
         "'learnin_rate': ckptflow.pipeline.model declares head_learning_rate,",
         run_with_config("[training]\nhyperparameters = { learnin_rate = 0.1 }\n")),
    Case("hyperparameter-list-of-strings", "training.hyperparameters.hidden_units is "
         "invalid. Received: ['wide', 8]. Expected a list of integers",
         run_with_config('[training]\nhyperparameters = { hidden_units = ["wide", 8] }\n')),
    Case("hyperparameter-bool-for-a-number", "learning_rate is invalid. Received: True. "
         "Expected a number",
         run_with_config("[training]\nhyperparameters = { learning_rate = true }\n")),
    Case("hyperparameter-nan", "learning_rate is invalid. Received: nan. Expected a "
         "finite number",
         run_with_config("[training]\nhyperparameters = { learning_rate = nan }\n")),
    Case("num-classes-not-an-integer", "training.hyperparameters.num_classes is invalid. "
         "Received: 'three'. Expected an integer",
         run_with_config('[training]\nhyperparameters = { num_classes = "three" }\n')),
    Case("num-classes-zero", "training.hyperparameters.num_classes is invalid. Received: 0. "
         "Expected a positive integer",
         run_with_config("[training]\nhyperparameters = { num_classes = 0 }\n")),
    Case("config-not-utf8", "is not UTF-8 text (byte 29). Expected a TOML file saved as UTF-8",
         run_with_config(b'[serving]\nmodel_name = "pingu\xefn"\n')),
    Case("config-utf16", "is not UTF-8 text (byte 0)",
         run_with_config("[training]\ntrain_steps = 10\n".encode("utf-16"))),
    Case("module-not-importable", "training.module 'no.such.module' cannot be imported",
         run_with_flags("--module", "no.such.module")),
    Case("module-not-in-package", "training.module 'ckptflow.pipeline.no_such_model' cannot "
         "be imported: no such module", run_with_flags("--module",
                                                      "ckptflow.pipeline.no_such_model")),
    Case("module-not-a-module-path", "training.module 'my-model' is not a module path",
         run_with_flags("--module", "my-model")),
    Case("module-file-missing", "my_model.py' does not exist",
         module_file_missing),
    Case("module-syntax-error", "has a syntax error at line 2",
         run_with_module("def build_training(spec):\n  return (\n")),
    Case("module-not-utf8", "is not UTF-8 text (byte 2)",
         run_with_module(b"# \xff\ndef build_training(spec):\n  pass\n")),
    Case("module-imports-a-missing-package", "imports 'no_such_package' (line 2), which "
         "is not installed",
         run_with_module("import os\nfrom no_such_package.layers import Dense\n"
                         "def build_training(spec):\n  pass\n")),
    Case("module-without-build-training", "does not define build_training(spec), which "
         "training.style = 'loop' calls", run_with_module("def build(spec):\n  pass\n")),
    Case("module-for-the-other-style", "does not define build_keras_model(spec), which "
         "training.style = 'fit' calls (see components/trainer/contract.py); it defines "
         "build_training, set training.style = 'loop'",
         run_with_module("def build_training(spec):\n  pass\n",
                         config='[training]\nstyle = "fit"\n')),
    Case("module-declaration-not-a-literal", "declares HYPERPARAMETERS with a value that "
         "is not a literal (line 1)",
         run_with_module("HYPERPARAMETERS = dict(rate=0.1)\ndef build_training(spec):\n"
                         "  pass\n")),
    Case("best-metric-unknown-with-keep-best",
         "training.best_metric is invalid (used by keep_best). Received: 'no_such_metric'. "
         "Expected a metric ckptflow.pipeline.model's checkpoints carry with training.style "
         "= 'loop': loss, accuracy, running_loss, running_accuracy",
         run_with_config('[training]\nkeep_best = 1\nbest_metric = "no_such_metric"\n')),
    Case("best-metric-of-the-other-style", "Received: 'accuracy'. Expected a metric "
         "ckptflow.pipeline.model's checkpoints carry with training.style = 'fit': loss, "
         "sparse_categorical_accuracy",
         run_with_config('[training]\nstyle = "fit"\nkeep_best = 2\n'
                         'best_metric = "accuracy"\n')),
    Case("best-metric-eval-without-eval-every", "Received: 'eval_loss'. Expected a metric",
         run_with_config('[training]\nkeep_best = 1\nbest_metric = "eval_loss"\n')),
    Case("best-metric-unknown-with-warm-start-best",
         "training.best_metric is invalid (used by warm_start = 'best'). Received: 'acc'",
         run_with_config('[training]\nwarm_start = "best"\nbest_metric = "acc"\n')),
    Case("evaluation-metric-not-offered", "evaluation.metric is invalid. Received: "
         "'Accuracyy'. Expected a metric ckptflow.pipeline.model declares for evaluation: "
         "SparseCategoricalAccuracy", run_with_config('[evaluation]\nmetric = "Accuracyy"\n')),
    Case("compile-module-not-importable", "training.module 'no.such.module' cannot be "
         "imported", lambda tmp_path, toy: (
             ["compile", "--home", str(toy.home), "--image", "registry.example.com/c:1",
              "--module", "no.such.module"], [], {})),
]


def assert_fails_cleanly(result, fragment: str) -> str:
  assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("ckptflow: error: "), result.stderr[-2000:]
  assert fragment in last, last
  assert "Traceback" not in result.stderr, result.stderr[-2000:]
  return last


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_with_one_line_and_writes_nothing(case, tmp_path, toy):
  args, roots, env = case.build(tmp_path, toy)
  roots = [toy.home, *roots]
  before_files = snapshot(*roots)
  before_mlmd = mlmd_counts(toy.target)
  result = ckptflow(*args, env=env, check=False, timeout=300)
  assert_fails_cleanly(result, case.fragment)
  assert snapshot(*roots) == before_files
  assert mlmd_counts(toy.target) == before_mlmd


def test_home_on_a_read_only_file_system_fails_and_writes_nothing(tmp_path, toy):
  data = write_csv(tmp_path / "data", [HEADER, *GOOD_ROWS])
  with tmpfs(tmp_path / "ro", size="128m", read_only=True) as ro:
    result = ckptflow("run", "--home", str(ro / "home"), "--data", str(data), check=False)
    assert os.listdir(ro) == []
  assert_fails_cleanly(result, "is not writable")


def test_home_on_a_full_file_system_fails_before_writing(tmp_path, toy):
  data = write_csv(tmp_path / "data", [HEADER, *GOOD_ROWS])
  with tmpfs(tmp_path / "tiny", size="2m") as tiny:
    (tiny / "filler").write_bytes(b"\0" * (1 << 20))
    result = ckptflow("run", "--home", str(tiny / "home"), "--data", str(data), check=False)
    assert os.listdir(tiny) == ["filler"]
  assert_fails_cleanly(result, "not enough free space")


def test_push_onto_a_full_file_system_fails_and_leaves_no_version_or_record(tmp_path, toy):
  # The copy itself runs out of space (ENOSPC mid-write): a real tiny file
  # system, a SavedModel larger than what is left on it.
  source = tmp_path / "big_model"
  (source / "variables").mkdir(parents=True)
  (source / "saved_model.pb").write_bytes(b"pb")
  (source / "variables" / "variables.data-00000-of-00001").write_bytes(os.urandom(3 << 20))
  with tmpfs(tmp_path / "tiny", size="2m") as tiny:
    code = (
        "import sys\n"
        "from ckptflow.components import promotion\n"
        "from ckptflow.cli import main as cli\n"
        "from ckptflow.base import metadata\n"
        "from ckptflow.base.errors import CkptflowError\n"
        "from reliability_support import put_model\n"
        "store = metadata.open_store(sys.argv[1])\n"
        "model = int(sys.argv[4])\n"
        "try:\n"
        "  promotion.promote(store, saved_model_dir=sys.argv[2], serving_root=sys.argv[3],\n"
        "                    model_name='penguin', model_artifact_id=model)\n"
        "except CkptflowError as e:\n"
        "  print('ckptflow: error: ' + ' '.join(str(e).split()), file=sys.stderr)\n"
        "  sys.exit(e.exit_code)\n")
    from reliability_support import put_model
    model_id = put_model(toy.store, str(source))
    before = mlmd_counts(toy.target)
    env = os.environ | {"PYTHONPATH": with_tests_on_path()}
    result = subprocess.run(
        [os.sys.executable, "-c", code, toy.target, str(source), str(tiny / "serving"),
         str(model_id)], capture_output=True, text=True, env=env, timeout=120)
    leftovers = sorted(str(p.relative_to(tiny)) for p in tiny.rglob("*")
                       if p.name not in (".lock", ".models.config.lock"))
  assert_fails_cleanly(result, "No space left on device")
  assert leftovers == ["serving", "serving/penguin"]
  assert mlmd_counts(toy.target) == before


@pytest.mark.mysql
def test_wrong_mysql_password_fails_with_one_line_and_writes_nothing(
    tmp_path, mysql_database):
  user = f"ckptflow_pw_{uuid.uuid4().hex[:8]}"
  mysql_admin(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'right-password'; "
              f"GRANT ALL ON `{mysql_database}`.* TO '{user}'@'%'")
  try:
    data = write_csv(tmp_path / "data", [HEADER, *GOOD_ROWS])
    home = tmp_path / "home"
    target = f"mysql://{user}:wrong-password@{MYSQL_HOST}:{MYSQL_PORT}/{mysql_database}"
    result = ckptflow("run", "--home", str(home), "--data", str(data),
                      "--metadata", target, check=False)
    tables = mysql_admin(f"SHOW TABLES FROM `{mysql_database}`").stdout.split()
  finally:
    mysql_admin(f"DROP USER IF EXISTS '{user}'@'%'", check=False)
  last = assert_fails_cleanly(result, "cannot open metadata store")
  assert f"MySQL error 1045 at {MYSQL_HOST}:{MYSQL_PORT}: the server refused user " \
      f"{user!r}: wrong password" in last
  assert "wrong-password" not in result.stderr  # the password is masked
  assert not home.exists()
  assert tables == []


@pytest.mark.mysql
def test_missing_mysql_database_is_not_created_by_a_listing(mysql_database):
  absent = mysql_database + "_absent"
  result = ckptflow("checkpoints", "--metadata", mysql_target(absent), check=False)
  assert_fails_cleanly(result, f"MySQL error 1049 at {MYSQL_HOST}:{MYSQL_PORT}: database "
                       f"{absent!r} does not exist")
  databases = mysql_admin("SHOW DATABASES").stdout.split()
  assert absent not in databases


@contextlib.contextmanager
def port_that_never_answers():
  """A real TCP port on 127.0.0.1 whose listen queue is full and never
  accepted: the kernel drops further connection attempts (SYNs), so a
  client's connect times out, as with a host behind a dropping firewall."""
  server = socket.socket()
  server.bind(("127.0.0.1", 0))
  server.listen(0)
  port = server.getsockname()[1]
  fillers = []
  try:
    for _ in range(4):
      filler = socket.socket()
      filler.setblocking(False)
      try:
        filler.connect(("127.0.0.1", port))
      except BlockingIOError:
        pass
      fillers.append(filler)
    probe = socket.socket()
    probe.settimeout(1)
    try:
      probe.connect(("127.0.0.1", port))
      pytest.fail("the listen queue did not fill: a connection was accepted")
    except TimeoutError:
      pass
    finally:
      probe.close()
    yield port
  finally:
    for filler in fillers:
      filler.close()
    server.close()


def test_mysql_connect_timeout_is_named_as_a_timeout_not_a_password(tmp_path):
  data = write_csv(tmp_path / "data", [HEADER, *GOOD_ROWS])
  home = tmp_path / "home"
  with port_that_never_answers() as port:
    result = ckptflow("run", "--home", str(home), "--data", str(data), "--metadata",
                      f"mysql://root:secret@127.0.0.1:{port}/ckptflow", check=False)
  last = assert_fails_cleanly(result, f"MySQL error 2003: no answer from 127.0.0.1:{port} "
                              "within 10 s (connect timeout)")
  assert "password" not in last and "secret" not in result.stderr
  assert not home.exists()


_IMPORT_PROBE = (
    "import json, sys\n"
    "from ckptflow.cli import main as cli\n"
    "rc = cli.main(sys.argv[1:])\n"
    "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'tfx', 'keras'})\n"
    "print(json.dumps([rc, heavy]))\n")


@pytest.mark.parametrize("case_id", [
    "hyperparameter-of-the-wrong-type", "module-not-importable", "module-syntax-error",
    "best-metric-unknown-with-keep-best", "label-above-configured-num-classes",
    "config-not-utf8", "grpc-server-unreachable"])
def test_a_run_that_fails_validation_imports_neither_tensorflow_nor_tfx(
    case_id, tmp_path, toy):
  [case] = [c for c in CASES if c.id == case_id]
  args, _, env = case.build(tmp_path, toy)
  result = subprocess.run([os.sys.executable, "-c", _IMPORT_PROBE, *args],
                          capture_output=True, text=True, env=os.environ | env, timeout=300)
  rc, heavy = json.loads(result.stdout.strip().splitlines()[-1])
  assert rc == 2, result.stderr[-2000:]
  assert heavy == [], f"{case_id}: a run that failed validation imported {heavy}"


SAVED_MODEL_WITHOUT_SIGNATURE = """
import sys
import tensorflow as tf

class Model(tf.Module):
  def __init__(self):
    self.w = tf.Variable(tf.ones([4, 3]))

  @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
  def predict(self, x):
    return tf.matmul(x, self.w)

model = Model()
# A signature under another name only: TF Serving's clients and TFMA ask
# for serving_default.
tf.saved_model.save(model, sys.argv[1], signatures={"predict": model.predict})
"""


def test_saved_model_without_serving_default_signature_is_refused_and_nothing_written(
    tmp_path, toy):
  source = tmp_path / "no_signature"
  subprocess.run([os.sys.executable, "-c", SAVED_MODEL_WITHOUT_SIGNATURE, str(source)],
                 check=True, capture_output=True, timeout=300)
  from reliability_support import put_model
  model_id = put_model(toy.store, str(source))
  before_files = snapshot(toy.home)
  before_mlmd = mlmd_counts(toy.target)
  driver = pathlib.Path(__file__).parent / "promote_driver.py"
  result = subprocess.run(
      [os.sys.executable, str(driver), "--home", str(toy.home), "--model-id",
       str(model_id), "--saved-model", str(source)],
      capture_output=True, text=True, timeout=120,
      env=os.environ | {"PYTHONPATH": with_tests_on_path()})
  last = assert_fails_cleanly(result, "has no 'serving_default' signature (it has: predict)")
  assert str(source) in last
  assert snapshot(toy.home) == before_files
  assert mlmd_counts(toy.target) == before_mlmd


def test_gc_on_a_read_only_home_fails_and_changes_nothing(tmp_path):
  toy = ToyHome(tmp_path / "rw" / "home")
  for marker in ("v1", "v2", "v3"):
    toy.promote(marker=marker)
  view = tmp_path / "ro"
  view.mkdir()
  # A read-only bind mount of the home's parent: the same files, not writable
  # even for root.
  mounted = subprocess.run(["mount", "--bind", str(tmp_path / "rw"), str(view)],
                           capture_output=True, text=True)
  if mounted.returncode != 0:
    pytest.skip(f"cannot bind-mount here: {mounted.stderr.strip()}")
  try:
    subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True)
    before = snapshot(tmp_path / "rw")
    result = ckptflow("gc", "--home", str(view / "home"), "--keep-versions", "1",
                      check=False)
    assert snapshot(tmp_path / "rw") == before
  finally:
    subprocess.run(["umount", "-l", str(view)], check=False)
  assert_fails_cleanly(result, "is not writable")
  assert serving_versions(toy) == [1, 2, 3]


def serving_versions(toy):
  from ckptflow.components.pusher import serving
  return serving.list_versions(str(toy.serving), "penguin")


def test_a_run_without_data_that_fails_its_checks_takes_back_the_sample_it_wrote(tmp_path):
  """No --data: the sample dataset is written into the home before the
  store is opened; an unreachable store then fails the run, and the home
  this command created is gone again (nothing written)."""
  home = tmp_path / "new-home"
  with socket.socket() as listener:
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]  # closed below: nothing listens there
  result = ckptflow("run", "--home", str(home), "--metadata",
                    f"mysql://root@127.0.0.1:{port}/ckptflow_none", check=False)
  assert result.returncode == 2
  [line] = result.stderr.strip().splitlines()
  assert line.startswith("ckptflow: error: ") and "refused" in line
  assert not home.exists()


def test_a_failed_run_in_an_existing_home_removes_only_the_sample_it_created(tmp_path):
  home = tmp_path / "home"
  (home / "notes").mkdir(parents=True)
  with socket.socket() as listener:
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
  result = ckptflow("run", "--home", str(home), "--metadata",
                    f"mysql://root@127.0.0.1:{port}/ckptflow_none", check=False)
  assert result.returncode == 2
  # The home and what it held stay; the sample this run wrote is gone.
  assert sorted(p.name for p in home.iterdir()) == ["notes"]
