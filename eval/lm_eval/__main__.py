"""``python -m eval.lm_eval``: see :mod:`eval.lm_eval.cli`."""

import sys

from compress.errors import run_main
from eval.lm_eval.cli import main

sys.exit(run_main(main))
