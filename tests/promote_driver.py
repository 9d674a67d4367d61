"""Promotes a Model of a home in a process of its own, for tests that kill
it at a fault point (CKPTFLOW_FAULT) or run several at once.

Like a ckptflow command, it holds the home's shared lock while it writes.
Without --model-id it promotes the newest Model artifact, with the newest
ModelBlessing.

  python promote_driver.py --home H [--metadata T] [--model-name N]
      [--label L] [--model-id ID] [--saved-model DIR] [--require-signature S]

Prints one JSON line: the served record. Exits 2 with a one-line error on a
CkptflowError, as the CLI does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ckptflow.components import promotion
from ckptflow.base import metadata
from ckptflow.base.home import shared_lock
from ckptflow.base.errors import CkptflowError


def newest(store, type_name: str):
  artifacts = store.get_artifacts_by_type(type_name)
  return max(artifacts, key=lambda a: a.id) if artifacts else None


def main() -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument("--home", required=True)
  parser.add_argument("--metadata")
  parser.add_argument("--serving-dir")
  parser.add_argument("--model-name", default="penguin")
  parser.add_argument("--label", default="stable")
  parser.add_argument("--model-id", type=int)
  parser.add_argument("--saved-model")
  parser.add_argument("--require-signature", default="serving_default",
                      help="refuse a SavedModel without it ('' to skip)")
  args = parser.parse_args()
  home = os.path.abspath(args.home)
  target = args.metadata or os.path.join(home, "metadata.sqlite")
  try:
    store = metadata.open_store(target, create=False)
    blessing = None
    if args.model_id is None:
      model = newest(store, "Model")
      blessing = newest(store, "ModelBlessing")
      model_id = model.id
      saved_model = args.saved_model or os.path.join(model.uri, "Format-Serving")
    else:
      model_id = args.model_id
      saved_model = args.saved_model
    with shared_lock(home):
      record = promotion.promote(
          store, saved_model_dir=saved_model,
          serving_root=args.serving_dir or os.path.join(home, "serving"),
          model_name=args.model_name, model_artifact_id=model_id, label=args.label,
          forced=blessing is None, blessing_artifact_id=blessing.id if blessing else None,
          required_signature=args.require_signature or None)
  except CkptflowError as e:
    print("ckptflow: error: " + " ".join(str(e).split()), file=sys.stderr)
    return e.exit_code
  print(json.dumps(record.as_json()), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
