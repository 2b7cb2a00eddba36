"""MLP units: activation maps against timm's own GELU outputs, feature visualisation on the
shipped digits ViT (it excites the unit, is reproducible, and takes the same first step on
every backend), and the streaming top-k accumulator against sorting everything at once."""

import itertools
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from helpers.timm_reference import TINY, rel_err, timm_twin

import vitops
from vitops.analysis.accumulate import load_states, save_states
from vitops.analysis.features import (
    TopK,
    _ascent_step,
    feature_activation_map,
    total_variation,
    unit_activations,
    visualize_feature,
)
from vitops.backend import grad as _grad

# The reference implementations: without them the module is skipped, not an error.
torch = pytest.importorskip("torch")

np_ = keras.ops.convert_to_numpy
BACKENDS = ("jax", "torch", "tensorflow")
WORKER = Path(__file__).with_name("parity_features_worker.py")


@pytest.fixture(scope="module")
def digits():
    return vitops.load("digits_vit")


def test_unit_maps_equal_timm_gelu_outputs(tmp_path):
    ref, path = timm_twin(tmp_path, "deit_tiny_distilled_patch16_224", **{**TINY, "depth": 2}, num_classes=5)
    model = vitops.load(path)
    images = np.random.default_rng(0).standard_normal((2, 48, 64, 3)).astype(np.float32)
    hidden = []
    hooks = [
        blk.mlp.act.register_forward_hook(lambda m, i, o: hidden.append(o.detach().numpy()))
        for blk in ref.blocks
    ]
    with torch.no_grad():
        ref(torch.from_numpy(images).permute(0, 3, 1, 2))
    for h in hooks:
        h.remove()
    pairs = [(0, 5), (1, 300), (0, 0), (1, 5)]
    scores, maps = unit_activations(model, images, pairs)
    scores, maps = np_(scores), np_(maps)
    assert scores.shape == (2, 4) and maps.shape == (2, 4, 3, 4)
    for j, (b, u) in enumerate(pairs):
        want = hidden[b][:, 2:, u]  # the patch tokens (after CLS and distillation)
        assert rel_err(maps[:, j].reshape(2, 12), want) <= 1e-4, (b, u)
        assert rel_err(scores[:, j], want.mean(axis=1)) <= 1e-4, (b, u)
    one = np_(feature_activation_map(model, images, 1, 300))
    assert one.shape == (2, 3, 4)
    np.testing.assert_allclose(one, maps[:, 1], rtol=1e-6, atol=1e-6)
    several = np_(feature_activation_map(model, images, 1, [300, 5]))
    np.testing.assert_allclose(several, maps[:, [1, 3]], rtol=1e-6, atol=1e-6)
    with pytest.raises(vitops.AnalysisError, match=r"block must be an int in \[0, 2\)"):
        unit_activations(model, images, [(2, 0)])
    with pytest.raises(vitops.AnalysisError, match=r"unit must be an int in \[0, 384\)"):
        feature_activation_map(model, images, 0, 384)


def test_visualize_feature_excites_the_unit_and_is_reproducible(digits):
    units = [3, 30, 90]
    start, a0 = visualize_feature(digits, 1, units, steps=0, seed=3)
    # steps=0 is the starting noise: grey plus noise, and its activation measured as usual
    assert start.shape == (3, 32, 32, 3) and start.dtype == np.float32
    np.testing.assert_allclose(
        a0, np.diag(np_(unit_activations(digits, start, [(1, u) for u in units])[0])), rtol=1e-5, atol=1e-6
    )
    seen = []
    x, a = visualize_feature(digits, 1, units, steps=40, seed=3, callback=lambda s, v: seen.append((s, v)))
    assert [s for s, _ in seen] == list(range(1, 41)) and seen[-1][1].shape == (3,)
    assert (a > 0).all() and (a >= 5 * np.abs(a0)).all(), (a0, a)
    # the reported activation is the unit's on the returned image
    np.testing.assert_allclose(
        a, np.diag(np_(unit_activations(digits, x, [(1, u) for u in units])[0])), rtol=1e-5, atol=1e-6
    )
    # each image serves its own unit: swapping them lowers both units' activations
    swapped = np_(unit_activations(digits, x[[1, 0]], [(1, 3), (1, 30)])[0])
    assert swapped[0, 0] < a[0] and swapped[1, 1] < a[1]
    # pixels stay displayable: the normalised images of [0, 1]
    assert x.min() >= -1 - 1e-6 and x.max() <= 1 + 1e-6
    # the same seed gives the same images; another seed others
    short, a_short = visualize_feature(digits, 1, units, steps=8, seed=3)
    again, a_again = visualize_feature(digits, 1, units, steps=8, seed=3)
    np.testing.assert_array_equal(again, short)
    np.testing.assert_array_equal(a_again, a_short)
    other, _ = visualize_feature(digits, 1, units, steps=8, seed=4)
    assert np.abs(other - short).max() > 0.1


def test_visualize_feature_rejects_bad_settings(digits):
    for kwargs, match in [
        (dict(block=4, unit=0), r"block must be an int in \[0, 4\)"),
        (dict(block=0, unit=128), r"unit must be an int in \[0, 128\)"),
        (dict(block=0, unit=[]), "no unit"),
        (dict(block=0, unit=1, steps=-1), "steps"),
        (dict(block=0, unit=1, lr=float("nan")), "lr"),
        (dict(block=0, unit=1, image_size=(30, 32)), "multiple of the patch size"),
    ]:
        with pytest.raises(vitops.AnalysisError, match=match):
            visualize_feature(digits, **kwargs)


def test_ascent_gradient_equals_finite_differences():
    """The optimised objective (gathered jitter, colour shift, MLP unit, total variation) has the
    gradient the backend gives, in float64: a wrong scatter or sign in any part fails."""
    config = vitops.ViTConfig(
        image_size=(8, 8), patch_size=4, dim=16, depth=2, num_heads=2, mlp_dim=20, num_classes=0
    )
    rng = np.random.default_rng(0)
    params = {
        k: rng.standard_normal(s) / (np.sqrt(s[0]) if len(s) > 1 else 2)
        for k, s in vitops.param_shapes(config).items()
    }
    u, k = 2, 3
    image = rng.standard_normal((u, 8, 8, 3))
    index = rng.integers(0, u * 64, (u * k, 8, 8)).astype(np.int32)  # any gather, not only shifts
    scale, shift = np.exp(rng.uniform(-1, 1, (u * k, 3))), rng.uniform(-1, 1, (u * k, 3))
    selector = np.zeros((u * k, 20))
    selector[np.arange(u * k), [4, 4, 4, 11, 11, 11]] = 1
    f64 = lambda a: keras.ops.convert_to_tensor(a, "float64")
    with _grad.float64():
        p = {key: f64(v) for key, v in params.items()}
        args = (p, index, f64(scale), f64(shift), f64(selector), f64(0.3))
        kw = dict(config=config, block=1, ensemble=k, compute_dtype="float64")
        (value, act), grad = _ascent_step(f64(image), *args, **kw)
        assert act.shape == (u * k,)
        grad = np_(grad)
        assert np.abs(grad).max() > 1e-3
        for _ in range(3):
            v = rng.standard_normal(image.shape)
            eps = 1e-5
            plus = float(_ascent_step(f64(image + eps * v), *args, **kw)[0][0])
            minus = float(_ascent_step(f64(image - eps * v), *args, **kw)[0][0])
            assert float(np.sum(grad * v)) == pytest.approx((plus - minus) / (2 * eps), rel=1e-6)
    # total variation by hand
    x = rng.standard_normal((2, 5, 4, 3)).astype(np.float32)
    want = np.square(np.diff(x, axis=1)).mean(axis=(1, 2, 3)) + np.square(np.diff(x, axis=2)).mean(
        axis=(1, 2, 3)
    )
    np.testing.assert_allclose(np_(total_variation(x)), want, rtol=1e-5)


@pytest.mark.parity
def test_first_step_is_the_same_on_every_backend(tmp_path):
    results = {}
    for backend in BACKENDS:
        out = tmp_path / f"{backend}.npz"
        proc = subprocess.run(
            [sys.executable, str(WORKER), str(out)],
            capture_output=True,
            text=True,
            env={**os.environ, "KERAS_BACKEND": backend},
        )
        assert proc.returncode == 0, f"{backend} worker failed:\n{proc.stderr[-3000:]}"
        results[backend] = dict(np.load(out))
        assert str(results[backend]["backend"]) == backend
    start = results["jax"]["start"]
    for a, b in itertools.combinations(BACKENDS, 2):
        np.testing.assert_array_equal(results[a]["start"], results[b]["start"])  # numpy on the host
        # one step moves pixels by about lr = 0.05; the backends agree far below that
        assert np.abs(results[a]["step"] - results[b]["step"]).max() <= 1e-4, (a, b)
        np.testing.assert_allclose(results[a]["activation"], results[b]["activation"], rtol=1e-4, atol=1e-5)
    assert np.abs(results["jax"]["step"] - start).max() > 0.01  # the step did move the image


# ---- top-k ----


def brute_force(scores, ids, k):
    """Per pair: all images sorted by score (descending), then id (ascending); the first k."""
    out = []
    for j in range(scores.shape[1]):
        order = sorted(range(len(ids)), key=lambda i: (-scores[i, j], ids[i]))[:k]
        out.append(order)
    return np.array(out)


def test_top_k_streams_merges_and_breaks_ties_by_id(tmp_path):
    rng = np.random.default_rng(0)
    n, p, k = 40, 3, 5
    scores = rng.integers(0, 6, (n, p)).astype(np.float64)  # many ties
    ids = rng.permutation(1000)[:n]
    maps = rng.standard_normal((n, p, 2, 3)).astype(np.float32)
    want = brute_force(scores, ids, k)  # (P, k) row indices
    one = TopK([(0, 1), (1, 2), (2, 3)], k=k)
    for start in range(0, n, 7):
        one.update_scores(scores[start : start + 7], ids[start : start + 7], maps[start : start + 7])
    got = one.result()
    assert got["count"] == n
    for j in range(p):
        np.testing.assert_array_equal(got["ids"][j], ids[want[j]])
        np.testing.assert_array_equal(got["scores"][j], scores[want[j], j])
        np.testing.assert_array_equal(got["maps"][j], maps[want[j], j])
    # shards in another order, merged, equal the single run; so does a save / load round trip
    order = rng.permutation(n)
    shards = [TopK([(0, 1), (1, 2), (2, 3)], k=k) for _ in range(3)]
    for s, part in zip(shards, np.array_split(order, 3)):
        s.update_scores(scores[part], ids[part], maps[part])
    shards[1].save(tmp_path / "s1.safetensors")
    merged = TopK([(0, 1), (1, 2), (2, 3)], k=k)
    merged.merge(shards[2]).merge(TopK.load(tmp_path / "s1.safetensors")).merge(shards[0])
    for key in ("ids", "scores", "maps"):
        np.testing.assert_array_equal(merged.result()[key], got[key])
    assert merged.result()["count"] == n
    save_states(tmp_path / "both.safetensors", {"a": merged, "b": shards[0]}, {"model": "x"})
    states, meta = load_states(tmp_path / "both.safetensors")
    np.testing.assert_array_equal(states["a"].result()["ids"], got["ids"])
    assert meta == {"model": "x"}
    # fewer images than k: all of them, best first
    few = TopK([(0, 1)], k=10, maps=False)
    few.update_scores([[1.0], [3.0], [3.0]], [7, 9, 2])
    np.testing.assert_array_equal(few.result()["ids"], [[2, 9, 7]])
    assert few.result()["maps"] is None


def test_top_k_refuses_what_cannot_combine():
    a = TopK([(0, 1)], k=3)
    with pytest.raises(vitops.AnalysisError, match="k: 3 != 4"):
        a.merge(TopK([(0, 1)], k=4))
    with pytest.raises(vitops.AnalysisError, match="pairs"):
        a.merge(TopK([(0, 2)], k=3))
    with pytest.raises(vitops.AnalysisError, match="pass maps"):
        a.update_scores([[1.0]], [0])
    with pytest.raises(vitops.AnalysisError, match=r"scores must be \(images, 1\)"):
        a.update_scores([[1.0, 2.0]], [0], np.zeros((1, 2, 1, 1)))
    with pytest.raises(vitops.AnalysisError, match="ids repeat"):
        a.update_scores([[1.0], [2.0]], [5, 5], np.zeros((2, 1, 1, 1)))
    with pytest.raises(vitops.AnalysisError, match="NaN"):
        a.update_scores([[np.nan]], [0], np.zeros((1, 1, 1, 1)))
    with pytest.raises(vitops.AnalysisError, match="integers"):
        a.update_scores([[1.0]], [0.5], np.zeros((1, 1, 1, 1)))
    with pytest.raises(vitops.AnalysisError, match="nothing was added"):
        a.result()
    with pytest.raises(vitops.AnalysisError, match="k must be"):
        TopK([(0, 1)], k=0)


def test_top_k_over_the_shipped_digits(digits):
    from vitops.hub.shipped import samples as shipped_samples
    from vitops.preprocess import preprocess

    images = preprocess([str(p) for p in shipped_samples()], size=(32, 32), family="vit", crop_pct=1.0)
    pairs = [(1, 30), (3, 7)]
    acc = TopK(pairs, k=3)
    for start in range(0, len(images), 4):
        acc.update(digits, images[start : start + 4], np.arange(start, start + 4))
    scores, maps = (np_(a) for a in unit_activations(digits, images, pairs))
    got = acc.result()
    for j in range(len(pairs)):
        best = np.lexsort((np.arange(len(images)), -scores[:, j]))[:3]
        np.testing.assert_array_equal(got["ids"][j], best)
        np.testing.assert_allclose(got["maps"][j], maps[best, j], rtol=1e-5, atol=1e-5)  # batch 4 vs 8
