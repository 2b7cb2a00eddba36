"""Test set-up. One process per backend: Keras picks its backend at import (KERAS_BACKEND)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# PyTorch before TensorFlow when both live in one environment, and no TF32: float32 results
# must match across backends and against timm.
import timm  # noqa: F401  (pulls in torch._dynamo and triton, which crash if loaded after TF)
import torch
import transformers  # noqa: F401  (the same, for its torch extensions)

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.set_float32_matmul_precision("highest")

import keras
import numpy as np
import pytest

BACKEND = keras.config.backend()


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend {BACKEND}"


@pytest.fixture
def rng():
    return np.random.default_rng(0)
