"""Position-embedding resampling against PyTorch's own interpolate, in float64."""

import itertools

import keras
import numpy as np
import pytest
import torch.nn.functional as F

from vitops.core.posemb import dino_matrix, resample_pos_embed, timm_matrix

# The reference implementations: without them the module is skipped, not an error.
torch = pytest.importorskip("torch")

SIZES = [1, 2, 3, 7, 14, 16, 24, 37]


@pytest.mark.parametrize("a,b", list(itertools.product(SIZES, SIZES)))
def test_matrices_reproduce_torch(a, b):
    x = torch.from_numpy(np.random.default_rng(a * 100 + b).standard_normal((1, 3, a, a)))
    ref = F.interpolate(x, size=(b, b), mode="bicubic", antialias=True, align_corners=False)[0].numpy()
    m = timm_matrix(a, b)
    np.testing.assert_allclose(np.einsum("ai,bj,cij->cab", m, m, x[0].numpy()), ref, atol=1e-12)
    ref = F.interpolate(x, scale_factor=((b + 0.1) / a,) * 2, mode="bicubic")[0].numpy()
    m = dino_matrix(a, b)
    np.testing.assert_allclose(np.einsum("ai,bj,cij->cab", m, m, x[0].numpy()), ref, atol=1e-12)


def test_rows_sum_to_one():
    for a, b in itertools.product(SIZES, SIZES):
        np.testing.assert_allclose(timm_matrix(a, b).sum(1), 1.0, atol=1e-12)
        np.testing.assert_allclose(dino_matrix(a, b).sum(1), 1.0, atol=1e-12)


@pytest.mark.parametrize("mode", ["timm", "dino"])
def test_backend_resample_matches_numpy(mode):
    rng = np.random.default_rng(0)
    pos = rng.standard_normal((2 + 7 * 7, 5)).astype(np.float32)
    out = keras.ops.convert_to_numpy(resample_pos_embed(pos, (7, 7), (4, 11), 2, mode))
    mh, mw = (
        (timm_matrix if mode == "timm" else dino_matrix)(7, 4),
        (timm_matrix if mode == "timm" else dino_matrix)(7, 11),
    )
    grid = np.einsum("ai,bj,ijd->abd", mh, mw, pos[2:].reshape(7, 7, 5).astype(np.float64))
    expected = np.concatenate([pos[:2], grid.reshape(44, 5)])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    same = keras.ops.convert_to_numpy(resample_pos_embed(pos, (7, 7), (7, 7), 2, mode))
    np.testing.assert_array_equal(same, pos)
