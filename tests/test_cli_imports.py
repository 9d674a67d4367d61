"""Commands that only read or write metadata import neither TensorFlow nor
TFX (each costs seconds to import): checked in a fresh interpreter per
command, on a real (empty) MLMD SQLite store."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ckptflow.base import metadata

_PROBE = (
    "import json, sys\n"
    "from ckptflow.cli import main as cli\n"
    "try:\n"
    "  rc = cli.main(sys.argv[1:])\n"
    "except SystemExit as e:\n"
    "  rc = e.code\n"
    "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'tfx', 'keras'})\n"
    "print(json.dumps([rc, heavy]))\n")


@pytest.mark.parametrize("command", [
    ["--help"], ["run", "--help"], ["checkpoints"], ["checkpoints", "--json", "--all"],
    ["lineage", "1"], ["lineage", "penguin:1", "--format", "json"], ["rollback", "penguin"],
    ["rollback", "penguin", "--to", "3"], ["doctor"], ["doctor", "--json"],
    ["history", "penguin"], ["history", "penguin", "--json", "--at", "2020-01-01"],
    ["gc"], ["gc", "--dry-run", "--json"], ["rollback", "penguin", "--reason", "r"],
    ["doctor", "--repair"], ["doctor", "--relocate", "--dry-run"], ["doctor", "--relocate"],
], ids=" ".join)
def test_metadata_only_command_imports_neither_tensorflow_nor_tfx(tmp_path, command):
  home = tmp_path / "home"
  home.mkdir()
  metadata.open_store(str(home / "metadata.sqlite"))  # a real, empty store
  args = [*command, "--home", str(home)] if command[0] != "--help" else command
  result = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True,
                          text=True, check=True)
  rc, heavy = json.loads(result.stdout.strip().splitlines()[-1])
  assert heavy == [], f"{' '.join(command)} imported {heavy} (exit {rc})"
