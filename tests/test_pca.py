"""PCA of patch features: the in-forward statistics streamed over batches and merged shards
equal numpy's eigen-decomposition of all the patch tokens at once (float64), and DINOv2's
feature maps follow their definition."""

import keras
import numpy as np
import pytest
from helpers.timm_reference import TINY, timm_twin

import vitops
from vitops.analysis import Covariance, feature_maps
from vitops.analysis.accumulate import load_states, save_states
from vitops.analysis.reductions import Reductions
from vitops.errors import AnalysisError

np_ = keras.ops.convert_to_numpy


def _layer_norm(x, scale, bias, eps):
    x = np.asarray(x, np.float64)
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * scale + bias


@pytest.mark.parametrize(
    "name,step",
    [
        ("vit_small_patch14_reg4_dinov2", -1),
        ("vit_small_patch14_reg4_dinov2", 2),
        ("deit_tiny_distilled_patch16_224", 0),
    ],
    ids=["dinov2-reg-last", "dinov2-reg-block2", "deit-distilled-embeddings"],
)
def test_streamed_pca_equals_numpy_eigh(tmp_path, name, step):
    _, path = timm_twin(tmp_path, name, seed=5, **dict(TINY, patch_size=16), num_classes=4)
    model = vitops.load(path)
    c, p = model.config, model.get_params()
    rng = np.random.default_rng(2)
    images = rng.standard_normal((11, 48, 64, 3)).astype(np.float32)  # 3 x 4 patches
    spec = Reductions(pca=True, pca_step=step)
    shards = [Covariance(c.dim), Covariance(c.dim)]
    got_tokens = []
    for k, (a, b) in enumerate([(0, 4), (4, 5), (5, 9), (9, 11)]):  # batches of 4, 1, 4, 2
        red = model.infer(images[a:b], reductions=spec)["reductions"]
        got_tokens.append(np_(red["pca_tokens"]))
        n = (b - a) * 12
        shards[k // 2].update_scatter(n, np_(red["pca_mean"]), np_(red["pca_scatter"]))
    save_states(tmp_path / "shard.safetensors", {"s": shards[1]})
    (second,) = load_states(tmp_path / "shard.safetensors")[0].values()
    got = shards[0].merge(second).result()
    # numpy: every patch token of that step after the final norm, all images at once
    hidden = model(images, return_hidden=True)["hidden"][step]
    ref = _layer_norm(np_(hidden), p["norm.scale"], p["norm.bias"], c.layer_norm_eps)[
        :, c.num_prefix_tokens :
    ]
    np.testing.assert_allclose(np.concatenate(got_tokens), ref, rtol=1e-4, atol=1e-5)
    flat = ref.reshape(-1, c.dim)
    values, vectors = np.linalg.eigh(np.cov(flat, rowvar=False, bias=True))
    values, vectors = values[::-1], vectors[:, ::-1]
    assert got["count"] == len(flat) == 11 * 12
    np.testing.assert_allclose(got["mean"], flat.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["variance"][:20], values[:20], rtol=1e-4, atol=1e-6 * values[0])
    np.testing.assert_allclose(got["ratio"].sum(), 1.0, rtol=1e-9)
    for i in range(3):  # the leading components, up to sign (their eigenvalues are apart)
        assert abs(got["components"][:, i] @ vectors[:, i]) == pytest.approx(1.0, abs=1e-4)


def test_covariance_merge_is_exact_and_invariant():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)) * [5, 3, 2, 1, 0.5, 0.1] + 1e4  # a large mean: no cancellation
    whole, parts = Covariance(6), [Covariance(6) for _ in range(3)]
    whole.update(x)
    for part, rows in zip(parts, np.array_split(x, 3)):
        part.update(rows)
    merged = parts[2].merge(parts[0]).merge(parts[1]).result()  # any order
    ref = np.cov(x, rowvar=False, bias=True)
    np.testing.assert_allclose(merged["variance"], np.linalg.eigvalsh(ref)[::-1], rtol=1e-8)
    np.testing.assert_allclose(merged["variance"], whole.result()["variance"], rtol=1e-10)
    # a rotation of the data rotates the components and keeps the variances
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    rotated = Covariance(6)
    rotated.update(x @ q)
    r = rotated.result()
    np.testing.assert_allclose(r["variance"], merged["variance"], rtol=1e-8)
    assert abs(r["components"][:, 0] @ (q.T @ merged["components"][:, 0])) == pytest.approx(1.0, abs=1e-8)
    with pytest.raises(AnalysisError, match="PCA statistics must be"):
        whole.update_scatter(3, np.zeros(5), np.zeros((6, 6)))
    with pytest.raises(AnalysisError, match="different settings"):
        whole.merge(Covariance(5))
    broken = Covariance(6)  # a batch of NaN images: NaN results, not a LinAlgError
    broken.update(np.full((4, 6), np.nan))
    assert np.isnan(broken.result()["variance"]).all()


def test_feature_maps_foreground_and_second_pca():
    """A synthetic image: a centre object whose patches differ from the background along one
    direction; the first component finds it, oriented so that the border is background."""
    rng = np.random.default_rng(3)
    grid, d = (6, 6), 16
    obj = np.zeros(grid, bool)
    obj[2:4, 1:5] = True
    tokens = rng.normal(scale=0.1, size=(2, 36, d))
    direction = rng.normal(size=d)
    direction /= np.linalg.norm(direction)
    tokens[:, obj.ravel()] += 5 * direction  # (S, N, D)
    tokens[:, obj.ravel(), 3] += rng.normal(scale=2.0, size=(2, obj.sum()))  # within-object variation
    acc = Covariance(d)
    acc.update(tokens)
    maps = feature_maps(tokens, acc.result(), grid)
    np.testing.assert_array_equal(maps["foreground"], np.broadcast_to(obj, (2, *grid)))
    assert maps["rgb"].shape == (2, 6, 6, 3) and maps["rgb"].min() >= 0 and maps["rgb"].max() <= 1
    assert (maps["foreground_rgb"][:, ~obj] == 0).all()
    assert maps["foreground_ratio"][0] > 0.5  # the object's own variation: along axis 3
    flipped = feature_maps(tokens, dict(acc.result(), components=-acc.result()["components"]), grid)
    np.testing.assert_array_equal(flipped["foreground"], maps["foreground"])  # whatever the sign
    with pytest.raises(AnalysisError, match="do not fill"):
        feature_maps(tokens, acc.result(), (5, 6))
