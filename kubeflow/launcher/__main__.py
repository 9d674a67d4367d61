"""`python -m ckptflow.kubeflow.launcher SPEC ...`: see `command.main`."""

import sys

from ckptflow.kubeflow.launcher.command import main

sys.exit(main())
