"""`python -m ckptflow.cli ARGS` runs the ckptflow command."""

import sys

from ckptflow.cli.main import main

if __name__ == "__main__":
  sys.exit(main())
