"""The `ckptflow` command line.

Every subcommand takes `--home DIR` (default $CKPTFLOW_HOME, else
./ckptflow_home). Listing commands take `--json`: one JSON document on
stdout, logs on stderr. An error the user can fix prints one line
(`ckptflow: error: ...`) and exits 2; a run stopped by SIGINT or SIGTERM
prints one such line too (the step it saved, the command that resumes)
and exits 130 or 143.

Commands that only read or write metadata import neither TensorFlow nor TFX:
they are imported inside the handlers that need them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import sys
import traceback
import warnings
from typing import Callable, Sequence

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before TensorFlow loads

from ckptflow.cli import flags  # noqa: E402
from ckptflow.pipeline.config import PipelineConfig, default_home  # noqa: E402
from ckptflow.base import errors, storage  # noqa: E402
from ckptflow.base.errors import CkptflowError  # noqa: E402
from ckptflow.base.home import Home, shared_lock  # noqa: E402

_log = logging.getLogger("ckptflow")


def _home(args) -> str:
  return os.path.abspath(args.home or default_home())


def _serving_dir(args) -> str | None:
  """--serving-dir if given, else the serving root the home's runs push to
  (recorded in its identity file), else None (HOME/serving)."""
  given = getattr(args, "serving_dir", None)
  if given:
    return given
  from ckptflow.base import identity
  return identity.serving_dir_of(_home(args))


def _where(args) -> Home:
  """The home the command works in, with its serving root (`_serving_dir`)."""
  return Home(_home(args), _serving_dir(args))


def _metadata_target(args) -> str:
  from ckptflow.base import metadata
  return metadata.resolve_target(args.metadata, _home(args))


def _print_json(document) -> None:
  json.dump(document, sys.stdout, indent=2, sort_keys=True, default=str)
  sys.stdout.write("\n")


# --- export, promote, rollback, lineage ----------------------------------------


def _open_existing_store(args):
  from ckptflow.base import metadata
  return metadata.open_store(_metadata_target(args), create=False)


def _open_home_store(args):
  """The store of a command that writes in the home, checked to be this
  home's: a copied or moved home stops here, with one line
  (`base.identity.check`). Once the command has written, `_adopt`."""
  from ckptflow.base import identity, metadata
  target = _metadata_target(args)
  store = metadata.open_store(target, create=False)
  identity.check(store, target, _where(args))
  return store


def _adopt(args, store) -> None:
  """Registers the home in its store (and writes its identity file) if it
  is not yet: after a command has written there, never on bad input."""
  from ckptflow.base import identity
  identity.check(store, _metadata_target(args), _where(args), adopt=True)


def cmd_export(args) -> int:
  from ckptflow.operations import export as checkpoint_export
  store = _open_home_store(args)
  record = checkpoint_export.resolve_checkpoint(store, args.checkpoint)
  where = _where(args)
  with shared_lock(where):  # no repair runs while we write
    exported = checkpoint_export.export_checkpoint(store, record,
                                                   export_root=where.export_root)
  _adopt(args, store)
  if args.json:
    _print_json({"checkpoint": record.as_json(), "export": exported.as_json()})
    return 0
  how = "reused its export" if exported.reused else "exported as"
  print(f"checkpoint {record.id} (step {record.step}): {how} Model "
        f"{exported.model_artifact_id}")
  print(f"saved model: {exported.saved_model_dir}")
  return 0


def cmd_promote(args) -> int:
  from ckptflow.operations import promote
  store = _open_home_store(args)
  result = promote.promote_checkpoint(
      store, args.checkpoint, home=_home(args), label=args.label, force=args.force,
      config_path=args.config, model_name=args.model_name, serving_dir=args.serving_dir,
      reason=args.reason)
  _adopt(args, store)
  if args.json:
    _print_json(result.as_json())
  else:
    for line in result.lines():
      print(line)
  # Not blessed is an outcome (recorded in MLMD), not an error: exit 1, not 2.
  return 0 if result.pushed else 1


def cmd_rollback(args) -> int:
  from ckptflow.base.names import validate_model_name
  model = validate_model_name(args.model)
  from ckptflow.components import promotion
  store = _open_home_store(args)
  where = _where(args)
  with shared_lock(where):  # no repair runs while we write
    previous, current = promotion.rollback(store, where.serving_root, model, args.to,
                                           user_reason=args.reason)
  _adopt(args, store)
  labels = promotion.current_labels(store, model)
  if args.json:
    _print_json({"model_name": model, "label": promotion.STABLE,
                 "previous_version": previous, "version": current, "labels": labels,
                 "models_config": where.models_config})
  elif previous == current:
    print(f"{model}: stable is already version {current}; models.config rewritten")
  else:
    print(f"{model}: stable moved from version {previous} to version {current}; "
          f"models.config rewritten ({where.models_config})")
  return 0


def cmd_history(args) -> int:
  from ckptflow.base.names import validate_model_name
  model = validate_model_name(args.model)
  from ckptflow.operations import history
  at = history.parse_time(args.at) if args.at is not None else None
  store = _open_existing_store(args)
  entries = history.history(store, model)
  if at is not None:
    state = history.labels_at(store, model, at, entries)
    if args.json:
      _print_json(state.as_json())
    elif not state.labels and state.newest_version is None:
      print(f"{model} at {state.at}: nothing was served yet")
    else:
      labels = ", ".join(f"{k}=version {v}" for k, v in state.labels.items()) or "no labels"
      print(f"{model} at {state.at}: {labels}; newest version {state.newest_version}")
    return 0
  if args.json:
    _print_json({"model_name": model, "history": [e.as_json() for e in entries]})
  else:
    for entry in entries:
      print(entry.line())
  return 0


def cmd_gc(args) -> int:
  from ckptflow.operations import gc
  gc.check_settings(args.keep_versions, args.keep_exports)  # before opening anything
  store = _open_home_store(args)
  result = gc.collect(store, _where(args), keep_versions=args.keep_versions,
                      keep_exports=args.keep_exports, dry_run=args.dry_run)
  if not args.dry_run:
    _adopt(args, store)
  if args.json:
    _print_json(result.as_json())
  else:
    for line in result.lines():
      print(line)
  return 0


def _write_output(path: str, text: str) -> None:
  """Replaces `path` with `text` atomically (temp file + rename)."""
  from ckptflow.base import storage
  try:
    storage.atomic_write(os.path.abspath(path), text)
  except OSError as e:
    raise CkptflowError(f"cannot write {path!r}: {e.strerror or e}") from e


def cmd_lineage(args) -> int:
  from ckptflow.operations import lineage
  store = _open_existing_store(args)
  graph = lineage.lineage(store, args.target, max_nodes=args.max_nodes)
  fmt = "json" if args.json else args.format
  if fmt == "json":
    text = json.dumps(lineage.to_json(graph), indent=2, sort_keys=True, default=str) + "\n"
  elif fmt == "dot":
    text = lineage.to_dot(graph)
  elif fmt == "svg":
    text = lineage.to_svg(graph)
  else:
    text = lineage.to_text(graph)
  if args.out:
    _write_output(args.out, text)
    print(f"wrote {fmt} lineage of {graph.target} ({len(graph.nodes)} nodes) to "
          f"{os.path.abspath(args.out)}", file=sys.stderr)
  else:
    sys.stdout.write(text)
  return 0


def _add_serving_commands(commands) -> None:
  export = commands.add_parser(
      "export", help="export a checkpoint as a SavedModel Model artifact",
      parents=flags.parents(flags.json_flag()),
      description="Rebuild the model from the module and hyperparameters its Trainer "
      "recorded, restore CHECKPOINT, write a SavedModel (signatures serving_default "
      "on serialized tf.Example and serving_raw on features) and record a Model "
      "artifact whose execution has the Checkpoint as INPUT. An earlier export of "
      "the same checkpoint is reused. The checkpoint is protected from pruning.")
  export.add_argument("checkpoint", metavar="CHECKPOINT",
                      help="a Checkpoint artifact id, step:N (latest run), best or latest")
  export.set_defaults(handler=cmd_export)

  promote = commands.add_parser(
      "promote", help="export, evaluate and push a checkpoint to TF Serving",
      parents=flags.parents(flags.serving_dir_flag(), flags.reason_flag(), flags.json_flag()),
      description="Export CHECKPOINT (or reuse its export), evaluate it with the "
      "pipeline's TFMA EvalConfig against the version labelled stable (recorded as "
      "a ModelBlessing), and push it as the next version with the label if blessed, "
      "or with --force. Exit 0 when pushed; 1 when not blessed (recorded in MLMD, "
      "nothing pushed); 2 on bad input.")
  promote.add_argument("checkpoint", metavar="CHECKPOINT",
                       help="a Checkpoint artifact id, step:N (latest run), best or latest")
  promote.add_argument("--label", choices=("stable", "canary"), default="stable",
                       help="version label the push assigns (default: stable)")
  promote.add_argument("--force", action="store_true",
                       help="push even if not blessed (recorded as forced)")
  promote.add_argument("--config", help="TOML config for the blessing rule and model "
                       "name (default: what the checkpoint's pipeline run recorded)")
  promote.add_argument("--model-name", help="served model name (default: the run's)")
  promote.set_defaults(handler=cmd_promote)

  rollback = commands.add_parser(
      "rollback", help="move a model's stable label back",
      parents=flags.parents(flags.serving_dir_flag(), flags.reason_flag(), flags.json_flag()),
      description="Move the stable label of MODEL back to the previous stable "
      "version (or --to VERSION), recorded as an MLMD execution, and rewrite "
      "models.config.")
  rollback.add_argument("model", metavar="MODEL", help="served model name")
  rollback.add_argument("--to", type=int, metavar="VERSION",
                        help="the served version to roll back to")
  rollback.set_defaults(handler=cmd_rollback)

  history = commands.add_parser(
      "history", help="every push, label change and removal of a model, with who and why",
      parents=flags.parents(flags.json_flag()),
      description="List every push, label change (rollback, re-promotion) and gc "
      "removal of MODEL in the order MLMD recorded them: time, version, label, the "
      "checkpoint and run it came from, forced or blessed, user, host and reason. "
      "With --at TIME: which version held each label at that time.")
  history.add_argument("model", metavar="MODEL", help="served model name")
  history.add_argument("--at", metavar="TIME", help="an ISO 8601 time (local, or with "
                       "Z / an offset), e.g. 2026-11-29T14:00")
  history.set_defaults(handler=cmd_history)

  gc = commands.add_parser(
      "gc", help="remove served versions, exports and checkpoint files nothing needs",
      parents=flags.parents(flags.serving_dir_flag(), flags.json_flag()),
      description="Remove served versions that hold no label and are not among the "
      "newest N of their model (unlisted from models.config first, then deleted, then "
      "marked DELETED in MLMD), exports no kept version or explicit export needs, and "
      "files of pruned checkpoints. Never a labelled version, the newest version, or "
      "anything outside the home's roots.")
  gc.add_argument("--keep-versions", type=int, default=3, metavar="N",
                  help="keep the newest N versions of each model besides the labelled "
                  "ones (N >= 1; default: 3)")
  gc.add_argument("--keep-exports", type=int, default=0, metavar="N",
                  help="also keep the newest N exports that nothing needs (default: 0)")
  gc.add_argument("--dry-run", action="store_true",
                  help="list what would go and the bytes it would free; change nothing")
  gc.set_defaults(handler=cmd_gc)

  lineage = commands.add_parser(
      "lineage", help="where a served model or artifact came from",
      parents=flags.parents(),
      description="Walk MLMD events upstream from TARGET: served version -> "
      "PushedModel -> Model -> Checkpoint -> Trainer execution -> Examples/Schema "
      "-> ExampleGen.")
  lineage.add_argument("target", metavar="TARGET",
                       help="a served MODEL:VERSION, or an artifact id")
  lineage.add_argument("--format", choices=("text", "json", "dot", "svg"), default="text",
                       help="svg is drawn by Graphviz `dot` (default: text)")
  lineage.add_argument("--json", action="store_true", help="same as --format json")
  lineage.add_argument("--out", metavar="FILE", help="write to FILE instead of stdout")
  lineage.add_argument("--max-nodes", type=int, default=500,
                       help="stop the walk after this many nodes (default: 500)")
  lineage.set_defaults(handler=cmd_lineage)


# --- run -------------------------------------------------------------------


def _config_from_args(args, command: str) -> PipelineConfig:
  """The config of `run` or `compile`: the config file, flags over it, and
  one default for the data: without a data path, the generated sample
  dataset in the home (written if missing). `compile` given only
  `--features` needs no local data (data_root is then chosen per run)."""
  config = PipelineConfig.from_toml(args.config) if args.config else PipelineConfig()
  overrides = flags.config_overrides(args, command)
  if args.home is not None or not args.config:
    overrides.setdefault("run", {})["home"] = _home(args)
  if command == flags.RUN and args.metadata is not None:
    overrides.setdefault("run", {})["metadata"] = args.metadata
  config = config.replace(**{k: v for k, v in overrides.items() if v})
  if command == flags.RUN and not config.serving.serving_dir:
    from ckptflow.base import identity
    recorded = identity.serving_dir_of(config.home)  # where this home's runs push
    if recorded:
      config = config.replace(serving={"serving_dir": recorded})
  from ckptflow.pipeline import runner
  runner.check_module(config)  # before the sample data is written into the home
  sample_data = not (command == flags.COMPILE and config.data.features)
  if not config.data.path and sample_data:
    from ckptflow.pipeline.sample_data import write_sample_data
    sample_dir = config.home_layout.sample_data_dir
    # The directories this command creates for the sample, outermost
    # first: a run whose checks then fail takes them away again.
    args.created_for_sample = [d for d in (config.home, os.path.dirname(sample_dir), sample_dir)
                               if not os.path.exists(d)]
    sample_dir = write_sample_data(sample_dir)
    # The run says so when it starts (pipeline/runner.py execute).
    _log.debug("no --data given: using the generated sample dataset in %s", sample_dir)
    config = config.replace(data={"path": sample_dir})
  return config


def _resume_command(args, home: str) -> str:
  """The command line that resumes an interrupted run: the same one, with
  the home spelled out."""
  argv = list(args.argv)
  rest = argv[argv.index("run") + 1:] if "run" in argv else []
  before = argv[:argv.index("run")] if "run" in argv else []
  kept, skip = [], False
  for token in rest:
    if skip:
      skip = False
    elif token == "--home":
      skip = True
    elif not token.startswith("--home="):
      kept.append(token)
  return shlex.join(["ckptflow", *before, "run", "--home", home, *kept])


def _stop_on_sigterm(signum, frame):  # pylint: disable=unused-argument
  raise errors.Interrupted("stopped by SIGTERM", signum)


def _remove_unused_sample(created: list[str]) -> None:
  """Removes the sample dataset this command wrote, when the run failed
  before writing anything else (a bad config, a copied home): the
  outermost directory it created holds nothing but the sample's path."""
  if not created:
    return
  outer, sample_dir = created[0], created[-1]
  inner = os.path.relpath(sample_dir, outer).split(os.sep)
  level = outer
  for name in inner if inner != ["."] else []:
    if os.listdir(level) != [name]:
      return  # something else was written beside it: keep everything
    level = os.path.join(level, name)
  from ckptflow.base import storage
  storage.remove_tree(outer, (os.path.dirname(os.path.abspath(outer)),))


def cmd_run(args) -> int:
  # --metadata is in config.run.metadata; config.metadata_target applies
  # the same rule as every other subcommand (metadata.resolve_target).
  config = _config_from_args(args, flags.RUN)
  from ckptflow.operations import run as run_operation
  # SIGTERM outside training ends the run like Ctrl-C does (the Trainer
  # installs its own handler while it trains: save, register, stop).
  previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
  try:
    summary = run_operation.run(config)
  except (errors.Interrupted, KeyboardInterrupt) as e:
    stopped = (e if isinstance(e, errors.Interrupted)
               else errors.Interrupted("interrupted", signal.SIGINT))
    resume = _resume_command(args, config.home)
    step = getattr(e, "step", None)
    if step is None:
      raise errors.Interrupted(f"interrupted by {stopped.signal_name} before training "
                               f"saved a checkpoint; run again with: {resume}",
                               stopped.signum) from e
    raise errors.Interrupted(f"interrupted by {stopped.signal_name} at step {step}: the "
                             f"checkpoint of step {step} is saved and registered; resume "
                             f"with: {resume}", stopped.signum) from e
  except errors.CkptflowError:
    _remove_unused_sample(getattr(args, "created_for_sample", []))
    raise
  finally:
    signal.signal(signal.SIGTERM, previous)
  for line in summary.lines():
    print(line)
  return 0


# --- checkpoints -------------------------------------------------------------


def checkpoint_table(records, served_as) -> list[str]:
  """The lines `ckptflow checkpoints` prints: one column per metric (named
  in full, as wide as its name or widest value), then what the checkpoint is
  behind (`served_as`: id -> ["penguin:1 (stable)", ...]) or kept for, then
  its uri."""
  names = sorted({name for r in records for name in r.metrics})
  cells = [[f"{r.metrics[n]:.4g}" if n in r.metrics else "-" for n in names]
           for r in records]
  notes = []
  for r in records:
    note = [f"served {', '.join(served_as[r.id])}"] if served_as.get(r.id) else []
    if r.protected:
      note.append(f"[{r.protected}]")
    notes.append(" ".join(note))
  widths = [max([len(n)] + [len(row[k]) for row in cells]) for k, n in enumerate(names)]
  note_width = max([len("served")] + [len(n) for n in notes])
  def line(first: str, values: list[str], note: str, uri: str) -> str:
    metrics = " ".join(v.rjust(w) for v, w in zip(values, widths))
    return f"{first} {metrics} {note.ljust(note_width)} {uri}".rstrip()
  lines = [line(f"{'id':>6} {'step':>7} {'state':<9}", names, "served", "uri")]
  for r, values, note in zip(records, cells, notes):
    lines.append(line(f"{r.id:>6} {r.step:>7} {r.state:<9}", values, note, r.uri))
  return lines


def cmd_checkpoints(args) -> int:
  from ckptflow.components.checkpoint import list_checkpoints
  from ckptflow.base import metadata
  from ckptflow.operations import lineage
  store = metadata.open_store(_metadata_target(args), create=False)
  records = list_checkpoints(store)
  if not args.all:
    records = [r for r in records if r.live]
  served_as = lineage.served_checkpoints(store, _where(args).serving_root) if records else {}
  if args.json:
    _print_json({"checkpoints": [r.as_json() | {"served_as": served_as.get(r.id, [])}
                                 for r in records]})
    return 0
  if not records:
    print("no checkpoints" + ("" if args.all else " (use --all to include pruned ones)"))
    return 0
  for text in checkpoint_table(records, served_as):
    print(text)
  return 0


# --- doctor ------------------------------------------------------------------


def cmd_relocate(args) -> int:
  from ckptflow.operations import relocate
  where = _where(args)
  plan = relocate.relocate(_metadata_target(args), where, dry_run=args.dry_run)
  if args.json:
    _print_json(plan.as_json())
  else:
    for line in plan.lines():
      print(line)
  return 0


def cmd_doctor(args) -> int:
  from ckptflow.operations import doctor
  if args.dry_run and not args.relocate:
    raise CkptflowError("--dry-run goes with --relocate")
  if args.relocate:
    if args.repair:
      raise CkptflowError("--relocate and --repair are separate steps: relocate "
                          "first, then run doctor --repair")
    return cmd_relocate(args)
  where = _where(args)
  findings, busy = doctor.diagnose(_metadata_target(args), where, fix=args.repair,
                                   verify_checksums=not args.no_checksums)
  remaining = [f for f in findings if not f.repaired]
  if args.json:
    _print_json({"home": where.home, "serving_root": where.serving_root,
                 "findings": [f.as_json() for f in findings],
                 "remaining": len(remaining), "other_command_running": busy})
  else:
    for finding in findings:
      print(finding.line())
    if busy:
      print("note: another ckptflow command is writing in this home; findings "
            "may be its work in progress")
    if not findings:
      print("no findings: checkpoint files, served versions, models.config and "
            "MLMD agree")
    else:
      print(f"{len(findings)} finding(s), {len(findings) - len(remaining)} repaired"
            + ("" if args.repair or not remaining else "; run with --repair to fix them"))
  return 1 if remaining else 0


# --- compile / submit (Kubeflow) ---------------------------------------------


def _kubeflow_dir(args) -> str:
  return _where(args).kubeflow_dir


def cmd_compile(args) -> int:
  from ckptflow.kubeflow import compile as kfp_compile
  image = kfp_compile.resolve_image(args.image)  # before any slow import
  # --metadata names the store the tasks use (CKPTFLOW_METADATA in their pods).
  env = kfp_compile.parse_env(list(args.env) + (
      [f"CKPTFLOW_METADATA={args.metadata}"] if args.metadata else []))
  config = _config_from_args(args, flags.COMPILE)
  features = None if config.data.path else config.data.features
  overrides = {"serving": {"serving_dir": args.serving_dir}} if args.serving_dir else {}
  if args.pipeline_name:
    overrides["run"] = {"pipeline_name": args.pipeline_name}
  config = config.replace(**overrides)
  compiled = kfp_compile.compile_pipeline(
      config, args.out or _kubeflow_dir(args), image=image, target=args.target,
      feature_keys=features, pipeline_root=args.pipeline_root,
      trainer_retries=args.trainer_retries, env=env)
  print(f"compiled {len(compiled.tasks)} tasks for {compiled.target}: "
        f"{compiled.json_path} and {compiled.yaml_path} (image {compiled.image})")
  return 0


def cmd_submit(args) -> int:
  from ckptflow.kubeflow import submit as kfp_submit
  from ckptflow.base.names import parse_assignments
  params = parse_assignments(args.param, flag="--param")
  run = kfp_submit.submit(args.spec or _kubeflow_dir(args), host=args.host,
                          experiment=args.experiment, params=params,
                          pipeline_root=args.pipeline_root, run_name=args.run_name)
  print(f"started run {run.run_id} in experiment {run.experiment!r}: {run.url}")
  return 0


def _add_kubeflow_commands(commands) -> None:
  compile_ = commands.add_parser(
      "compile", help="compile the pipeline to a Kubeflow Pipelines v2 spec",
      parents=flags.parents(flags.config_flags(flags.COMPILE), flags.serving_dir_flag(
          "TF Serving root the Pusher writes to, reachable from every task "
          "(default: the config's)")),
      description="Compile create_pipeline(config) with TFX's KubeflowV2DagRunner into "
      "OUT/pipeline.json (PipelineJob) and OUT/pipeline.yaml (PipelineSpec). The data "
      "location (parameter data_root) and the pipeline root are chosen per run.")
  compile_.add_argument("--target", choices=("kubeflow", "vertex"), default="kubeflow",
                        help="kubeflow: open-source KFP v2, no Resolver nodes (default); "
                        "vertex: Vertex AI Pipelines, with the Resolver")
  compile_.add_argument("--out", help="output directory (default: HOME/kubeflow)")
  compile_.add_argument("--image", help="container image every task runs, built from "
                        "kubeflow/Dockerfile (default: $CKPTFLOW_IMAGE)")
  compile_.add_argument("--pipeline-root", help="default pipeline root written into "
                        "pipeline.json (default: none; KFP's own)")
  compile_.add_argument("--pipeline-name", help="pipeline name (default: the config's)")
  compile_.add_argument("--env", action="append", default=[],
                        help="NAME=VALUE in every task's environment, e.g. "
                        "CKPTFLOW_METADATA=grpc://metadata-grpc-service.kubeflow:8080 "
                        "(repeatable; no passwords)")
  compile_.add_argument("--trainer-retries", type=int, default=3,
                        help="KFP retries of a failed (preempted) Trainer task; each "
                        "resumes from the last checkpoint (default: 3)")
  compile_.set_defaults(handler=cmd_compile)

  submit = commands.add_parser(
      "submit", help="upload a compiled spec to Kubeflow Pipelines and start a run",
      parents=flags.parents(),
      description="Check the compiled spec, then start a run of it with kfp.Client.")
  submit.add_argument("--host", required=True, help="KFP API endpoint, e.g. "
                      "http://localhost:8080")
  submit.add_argument("--spec", help="compiled pipeline.yaml/.json or its directory "
                      "(default: HOME/kubeflow)")
  submit.add_argument("--experiment", help="experiment name (default: Default)")
  submit.add_argument("--param", action="append", default=[],
                      help="a pipeline parameter NAME=VALUE, e.g. data_root=gs://b/csv "
                      "(repeatable)")
  submit.add_argument("--pipeline-root", help="where the run's outputs go (default: "
                      "the spec's, else KFP's)")
  submit.add_argument("--run-name", help="display name of the run")
  submit.set_defaults(handler=cmd_submit)


# --- report ------------------------------------------------------------------


def cmd_report(args) -> int:
  from ckptflow.base import metadata
  from ckptflow.operations import report
  store = _open_existing_store(args)
  where = _where(args)
  out_dir = os.path.abspath(args.out or where.report_dir)
  index = report.write_report(store, out_dir, serving_root=where.serving_root,
                              title_target=metadata.describe(_metadata_target(args)))
  print(f"report: {index}")
  return 0


def _add_report_command(commands) -> None:
  report = commands.add_parser(
      "report", help="write an HTML report with plots of checkpoints, served versions "
      "and lineage", parents=flags.parents(flags.serving_dir_flag()),
      description="Write DIR/index.html (default HOME/report): metrics by step with "
      "every checkpoint marked (pruned, kept, exported, promoted, served), served "
      "versions over time, and the lineage graph of each stable version. The page "
      "uses only files beside it, so it opens without network access.")
  report.add_argument("--out", metavar="DIR", help="where to write (default: HOME/report)")
  report.set_defaults(handler=cmd_report)


# --- parser ------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="ckptflow", parents=[flags.verbose_flag(top_level=True)],
      description="Train, track and serve TensorFlow models in a TFX pipeline whose "
      "every checkpoint is an ML Metadata artifact.")
  commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

  run = commands.add_parser("run", help="run the pipeline end to end",
                            parents=flags.parents(flags.config_flags(flags.RUN)),
                            description="Run ExampleGen -> ... -> Trainer -> Evaluator -> "
                            "Pusher on this machine. Flags override the config file.")
  run.set_defaults(handler=cmd_run)

  checkpoints = commands.add_parser(
      "checkpoints", help="list checkpoints recorded in MLMD",
      parents=flags.parents(flags.serving_dir_flag(), flags.json_flag()),
      description="List checkpoints: id, step, state, each metric, the served "
      "versions (and labels) whose model came from the checkpoint, uri.")
  checkpoints.add_argument("--all", action="store_true", help="include pruned checkpoints")
  checkpoints.set_defaults(handler=cmd_checkpoints)

  doctor = commands.add_parser(
      "doctor", help="check that MLMD and the files of a home agree (and repair)",
      parents=flags.parents(flags.serving_dir_flag(), flags.json_flag()),
      description="Report disagreements between MLMD and the files of a home: "
      "checkpoint directories without artifacts and the reverse, served versions "
      "without records and the reverse, leftovers of killed writes, a stale "
      "models.config. Exit 0 when clean, 1 when findings remain.")
  doctor.add_argument("--repair", action="store_true",
                      help="fix what is found (refused while another ckptflow "
                      "command writes in the home)")
  doctor.add_argument("--no-checksums", action="store_true",
                      help="do not re-hash LIVE checkpoints (only check they exist)")
  doctor.add_argument("--relocate", action="store_true",
                      help="make a copied or moved home a home of its own: rewrite "
                      "its store's paths from the old home to this one, after "
                      "checking the files are here (the old home is not touched)")
  doctor.add_argument("--dry-run", action="store_true",
                      help="with --relocate: show what would be rewritten, write nothing")
  doctor.set_defaults(handler=cmd_doctor)
  _add_serving_commands(commands)
  _add_kubeflow_commands(commands)
  _add_report_command(commands)
  return parser


# Quiet by default: the log lines a user sees come from ckptflow's loggers;
# other libraries' records show from ERROR up. --verbose shows everything.
_OWN_LOGGER = "ckptflow"
_QUIET_LEVEL = logging.ERROR


def _own_lines_only(record: logging.LogRecord) -> bool:
  own = record.name == _OWN_LOGGER or record.name.startswith(_OWN_LOGGER + ".")
  return own or record.levelno >= _QUIET_LEVEL


def _configure_logging(verbose: bool) -> None:
  """Sets up standard error before anything imports TensorFlow: one handler
  that keeps the live progress line intact, and, unless `verbose`, no
  Python warnings, no TensorFlow C++ log below FATAL (it prints "Unable to
  register cuFFT factory" and other ERROR-level notices on a CPU machine),
  and no other library's INFO/WARNING records. The environment carries the
  first two to subprocesses (Beam workers); TF_CPP_MIN_LOG_LEVEL and
  PYTHONWARNINGS set by the user win."""
  from ckptflow.base import progress
  handler = progress.ProgressAwareHandler(sys.stderr)
  handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(name)s: %(message)s"))
  root = logging.getLogger()
  for old in [h for h in root.handlers if isinstance(h, progress.ProgressAwareHandler)]:
    root.removeHandler(old)  # main() called again in one process
  root.addHandler(handler)
  root.setLevel(logging.INFO)
  if verbose:
    return
  handler.addFilter(_own_lines_only)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # read when TensorFlow loads
  os.environ.setdefault("PYTHONWARNINGS", "ignore")  # read by each new interpreter
  warnings.simplefilter("ignore")
  # Fewer records to make and drop; "absl" stays at INFO: the local runner
  # reads the TFX runners' stage records from it (pipeline/runner.py).
  for noisy in ("apache_beam", "tensorflow"):
    logging.getLogger(noisy).setLevel(_QUIET_LEVEL)


def main(argv: Sequence[str] | None = None) -> int:
  parser = build_parser()
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parser.parse_args(argv)
  args.argv = argv
  _configure_logging(args.verbose)
  handler: Callable = args.handler
  try:
    status = handler(args)
    sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
  except BrokenPipeError:
    # The reader of stdout went away (`ckptflow checkpoints --json | head`):
    # stop quietly with SIGPIPE's status, as `cat` does; stdout is pointed at
    # /dev/null so the interpreter's final flush cannot fail again.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    status = 128 + signal.SIGPIPE
  except CkptflowError as e:
    message = " ".join(str(e).split())
    print(f"ckptflow: error: {message}", file=sys.stderr)
    status = e.exit_code
  except KeyboardInterrupt:
    print("ckptflow: error: interrupted by SIGINT", file=sys.stderr)
    status = 128 + signal.SIGINT
  except Exception:
    if not storage.remote_touched():
      raise
    traceback.print_exc()
    status = 1
  if storage.remote_touched():
    # tensorflow-io's S3 client aborts the interpreter's exit (SIGABRT):
    # leave with the real status instead.
    storage.exit_process(status)
  return status


if __name__ == "__main__":
  sys.exit(main())
