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
