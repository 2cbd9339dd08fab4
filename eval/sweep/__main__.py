"""``python -m eval.sweep recipes/<file>.toml``: see :mod:`eval.sweep`."""

import sys

from compress.cli import run_main
from eval.sweep.cli import main

sys.exit(run_main(main))
