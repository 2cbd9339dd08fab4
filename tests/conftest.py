import atexit
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# dense references of the tests' tiny models (eval.benchmark.reference) stay out of the
# user's cache
if "COMPRESS_DENSE_CACHE" not in os.environ:
    os.environ["COMPRESS_DENSE_CACHE"] = tempfile.mkdtemp(prefix="dense-reference-")
    atexit.register(shutil.rmtree, os.environ["COMPRESS_DENSE_CACHE"], True)

import torch  # noqa: E402

# Tiny models gain nothing from threads; one thread keeps tests fast and steady
# on a shared 2-core machine.
torch.set_num_threads(1)


import pytest  # noqa: E402

from compress import registry  # noqa: E402


@pytest.fixture(autouse=True)
def _forget_recipes_registered_inside_a_test():
    """Recipes a test registers from a function body (``<locals>`` handlers) are test-scoped:
    drop them afterwards, so the report, sweep and registry tests of later tests see only
    recipes registered by modules (the suite's own, ``sweep_helpers``, ``toy_recipe``)."""
    before = set(registry._RECIPES)
    yield
    for name in set(registry._RECIPES) - before:
        if "<locals>" in registry._RECIPES[name].handler.__qualname__:
            del registry._RECIPES[name]


@pytest.fixture
def call_main(capsys):
    """Run a command's ``main(argv)`` in this process: ``(exit status, stdout, stderr)``.

    The error paths of the command-line entry points (``run_main``: one ``error:`` line,
    status 2; argparse: status 2; ``--help``: status 0) are the same in process as under
    ``python -m``; each suite CLI keeps one real subprocess test for the module path, and
    the rest skip the seconds of importing torch again in a new interpreter."""
    def call(main, *argv) -> tuple[int, str, str]:
        threads = torch.get_num_threads()
        capsys.readouterr()
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse: --help, unknown flags
            rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        finally:
            torch.set_num_threads(threads)
        out, err = capsys.readouterr()
        return rc, out, err

    return call
