"""The test harness. One process per backend: Keras picks its backend at import (KERAS_BACKEND).

The reference implementations (torch, timm, transformers) are optional here: a contributor with
only JAX installed collects the suite, and the modules that compare against them are skipped.
When they are installed, PyTorch is imported before TensorFlow (timm pulls in torch._dynamo and
triton, transformers its torch extensions, which crash if loaded after TensorFlow), and TF32 is
off, so float32 results match across backends and against timm.
"""

import importlib.util
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

if importlib.util.find_spec("torch") is not None:
    import torch

    for _module in ("timm", "transformers"):
        if importlib.util.find_spec(_module) is not None:
            __import__(_module)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")

import keras
import numpy as np
import pytest
from helpers.server import serving

BACKEND = keras.config.backend()


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend {BACKEND}"


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def file_server():
    """A local HTTP server: (base URL, files). Put bytes in files[NAME]; GET /files/NAME serves
    them, /drop/NAME stops half-way, /slow/NAME trickles (helpers/server.py)."""
    files: dict[str, bytes] = {}
    with serving(files) as url:
        yield url, files


@pytest.fixture(scope="module")
def module_file_server():
    """`file_server`, shared by a module's tests."""
    files: dict[str, bytes] = {}
    with serving(files) as url:
        yield url, files


# The modules that take longest (a minute or more on a 2-core machine) are handed out first, so
# that pytest-xdist's workers (`-n`, whole modules each: `--dist loadfile`) finish together
# rather than one of them running a long module alone at the end. Only the order changes.
LONG_MODULES = (
    "test_study.py",
    "test_report.py",
    "test_fuzz.py",
    "test_robust_output.py",
    "test_families.py",
    "test_reductions.py",
)


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = item.path.name
        return LONG_MODULES.index(name) if name in LONG_MODULES else len(LONG_MODULES)

    items.sort(key=rank)  # stable: the order within a module is kept
