"""Analysis kernels against independent float64 numpy versions written here, on hand-checkable
cases, and against the invariances the papers state."""

import keras
import numpy as np
import pytest

from vitops.analysis import (
    AttentionDistance,
    MinibatchCKA,
    attention_heatmaps,
    attention_rollout,
    cls_rollout,
    cls_trajectory,
    distance_matrix,
    linear_cka,
    mean_attention_distance,
    position_similarity,
    projection_filters,
    rbf_cka,
)
from vitops.errors import AnalysisError

np_ = keras.ops.convert_to_numpy


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def random_attention(rng, b=2, h=3, t=17, sharp=3.0):
    return softmax(sharp * rng.standard_normal((b, h, t, t))).astype(np.float32)


# ---- references (float64, loops where the definition is a loop) ----


def ref_distance(rows, cols, p):
    n = rows * cols
    d = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            d[i, j] = p * np.linalg.norm([i // cols - j // cols, i % cols - j % cols])
    return d


def ref_mad(att, p, prefix, rows, cols, renorm=False):
    a = att.astype(np.float64)[..., prefix:, prefix:]
    if renorm:
        a = a / a.sum(-1, keepdims=True)
    return (a * ref_distance(rows, cols, p)).sum(-1).mean(-1)


def ref_fuse(a, fusion, ratio):
    """One sample's (H, T, T) -> (T, T) rollout factor, discarding by explicit indices."""
    f = {"mean": np.mean, "max": np.max, "min": np.min}[fusion](a.astype(np.float64), axis=0)
    t = f.shape[0]
    if ratio > 0:
        cand = [(f[i, j], i, j) for i in range(t) for j in range(1, t)]
        cand.sort()
        for _, i, j in cand[: int(len(cand) * ratio)]:
            f[i, j] = 0.0
    f = f + np.eye(t)
    return f / f.sum(-1, keepdims=True)


def ref_rollout(atts, fusion="mean", ratio=0.0):
    out = []
    for s in range(atts[0].shape[0]):
        joint = np.eye(atts[0].shape[-1])
        for a in atts:
            joint = ref_fuse(a[s], fusion, ratio) @ joint
        out.append(joint)
    return np.stack(out)


def ref_center_gram(gram, unbiased):
    """Kornblith et al.'s centering (their reference code's formulation)."""
    gram = gram.astype(np.float64).copy()
    n = gram.shape[0]
    if unbiased:
        np.fill_diagonal(gram, 0)
        means = gram.sum(0) / (n - 2)
        means -= means.sum() / (2 * (n - 1))
        gram -= means[:, None]
        gram -= means[None, :]
        np.fill_diagonal(gram, 0)
    else:
        means = gram.mean(0)
        means -= means.mean() / 2
        gram -= means[:, None]
        gram -= means[None, :]
    return gram


def ref_cka_gram(gx, gy, debiased):
    gx, gy = ref_center_gram(gx, debiased), ref_center_gram(gy, debiased)
    return gx.ravel() @ gy.ravel() / (np.linalg.norm(gx) * np.linalg.norm(gy))


def ref_linear_cka(x, y, debiased=False):
    x, y = x.reshape(len(x), -1).astype(np.float64), y.reshape(len(y), -1).astype(np.float64)
    return ref_cka_gram(x @ x.T, y @ y.T, debiased)


def ref_rbf_gram(x, sigma):
    x = x.reshape(len(x), -1).astype(np.float64)
    g = x @ x.T
    n = np.diag(g)
    sq = -2 * g + n[:, None] + n[None, :]
    return np.exp(-sq / (2 * sigma**2 * np.median(sq)))


# ---- mean attention distance ----


@pytest.mark.parametrize("grid,p", [((3, 3), 16), ((2, 5), 8), ((4, 1), 14)])
def test_distance_matrix(grid, p):
    np.testing.assert_allclose(np_(distance_matrix(grid, p)), ref_distance(*grid, p), rtol=1e-6)


def test_distance_of_square_int_grid():
    np.testing.assert_allclose(np_(distance_matrix(3, 16)), ref_distance(3, 3, 16), rtol=1e-6)


@pytest.mark.parametrize("prefix,grid,renorm", [(1, None, False), (2, None, True), (1, (3, 5), False)])
def test_mean_attention_distance_random(rng, prefix, grid, renorm):
    rows, cols = grid or (4, 4)
    att = random_attention(rng, t=prefix + rows * cols)
    got = np_(mean_attention_distance(att, 16, num_prefix_tokens=prefix, renormalize=renorm, grid=grid))
    np.testing.assert_allclose(got, ref_mad(att, 16, prefix, rows, cols, renorm), rtol=1e-5)


def test_mean_attention_distance_hand_cases():
    t = 1 + 4  # CLS + 2x2 grid
    identity = np.broadcast_to(np.eye(t, dtype=np.float32), (1, 2, t, t))
    np.testing.assert_allclose(np_(mean_attention_distance(identity, 16)), 0.0, atol=1e-6)
    uniform = np.zeros((1, 1, t, t), np.float32)
    uniform[..., 1:] = 0.25  # every query spreads over the 4 patches
    expected = (0 + 16 + 16 + 16 * np.sqrt(2)) / 4
    np.testing.assert_allclose(np_(mean_attention_distance(uniform, 16)), [[expected]], rtol=1e-6)
    # all mass on the CLS token: with renormalisation off nothing is left on patches
    on_cls = np.zeros((1, 1, t, t), np.float32)
    on_cls[..., 0] = 1.0
    on_cls[..., 1:, 1:] += np.eye(4, dtype=np.float32) * 0  # keep zeros
    np.testing.assert_allclose(np_(mean_attention_distance(on_cls, 16)), 0.0, atol=1e-7)


def test_streaming_distance_equals_batch_mean(rng):
    blocks = [[random_attention(rng, b=3, h=2, t=10) for _ in range(4)] for _ in range(3)]
    acc = AttentionDistance(patch_size=16)
    for batch in blocks:
        acc.update(batch)
    per = np.stack(
        [np.concatenate([ref_mad(batch[i], 16, 1, 3, 3) for batch in blocks]) for i in range(4)]
    )  # (L, images, H)
    res = acc.result()
    assert res["count"] == 9
    np.testing.assert_allclose(res["mean"], per.mean(1), rtol=1e-5)
    np.testing.assert_allclose(res["std"], per.std(1), rtol=1e-3, atol=1e-3)


# ---- rollout ----


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.9])
def test_rollout_matches_reference(rng, fusion, ratio):
    atts = [random_attention(rng, b=2, h=3, t=10) for _ in range(4)]
    expected = ref_rollout(atts, fusion, ratio)
    got = np_(attention_rollout(atts, head_fusion=fusion, discard_ratio=ratio))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)  # rows stay distributions
    cls = np_(cls_rollout(atts, head_fusion=fusion, discard_ratio=ratio, grid=(3, 3)))
    np.testing.assert_allclose(cls, expected[:, 0, 1:].reshape(2, 3, 3), rtol=1e-4, atol=1e-6)


def test_cls_rollout_of_unnormalised_maps_uses_the_exact_definition(rng):
    # rows that do not sum to 1 (here: scaled per query) must still be renormalised exactly
    atts = [
        random_attention(rng, b=2, h=3, t=10) * rng.uniform(0.2, 3.0, (1, 1, 10, 1)).astype(np.float32)
        for _ in range(3)
    ]
    expected = ref_rollout(atts)[:, 0, 1:].reshape(2, 3, 3)
    np.testing.assert_allclose(np_(cls_rollout(atts)), expected, rtol=1e-4, atol=1e-6)


def test_cls_rollout_single_read_path_is_taken_for_probabilities_only(rng):
    # the single-read kernel reports how far the CLS query rows are from summing to 1: ~0 for
    # softmax maps (so cls_rollout uses it), clearly not for the scaled maps above
    from vitops.analysis.rollout import _ROW_SUM_TOL, _cls_row_of_probabilities

    atts = [random_attention(rng, b=2, h=3, t=10) for _ in range(3)]
    row, err = _cls_row_of_probabilities(atts)
    assert float(err) <= 1e-5
    np.testing.assert_allclose(np_(row), ref_rollout(atts)[:, 0], rtol=1e-4, atol=1e-6)
    atts[1] = atts[1] * 1.01
    assert float(_cls_row_of_probabilities(atts)[1]) > _ROW_SUM_TOL


def test_rollout_hand_cases():
    t = 5
    eye = [np.broadcast_to(np.eye(t, dtype=np.float32), (1, 2, t, t))] * 3
    np.testing.assert_allclose(np_(attention_rollout(eye))[0], np.eye(t), atol=1e-6)
    uniform = [np.full((1, 2, t, t), 1.0 / t, np.float32)] * 2
    one = (np.full((t, t), 1.0 / t) + np.eye(t)) / 2
    np.testing.assert_allclose(np_(attention_rollout(uniform))[0], one @ one, atol=1e-6)


def test_discard_never_touches_cls_column(rng):
    atts = [random_attention(rng, b=1, h=1, t=10, sharp=0.1)]
    atts[0][..., 0] = 1e-6  # the smallest entries of all, but on the CLS column
    atts[0] /= atts[0].sum(-1, keepdims=True)
    got = np_(attention_rollout(atts, discard_ratio=0.5))[0]
    assert np.all(got[:, 0] > 0)


def test_distilled_cls_rollout_drops_both_prefix_tokens(rng):
    atts = [random_attention(rng, b=2, h=2, t=2 + 6) for _ in range(3)]
    cls = np_(cls_rollout(atts, num_prefix_tokens=2, grid=(2, 3)))
    np.testing.assert_allclose(cls, ref_rollout(atts)[:, 0, 2:].reshape(2, 2, 3), rtol=1e-5, atol=1e-7)


# ---- heat maps ----


def ref_dino_masks(att, prefix, threshold):
    """DINO visualize_attention.py: sort, normalise, cumulative sum, unsort."""
    a = att[:, :, 0, prefix:].astype(np.float64)
    out = np.zeros(a.shape, bool)
    for b in range(a.shape[0]):
        for h in range(a.shape[1]):
            idx = np.argsort(a[b, h])
            val = a[b, h][idx] / a[b, h].sum()
            th = np.cumsum(val) > (1 - threshold)
            out[b, h] = th[np.argsort(idx)]
    return out


@pytest.mark.parametrize("threshold", [None, 0.6, 0.9])
def test_heatmaps(rng, threshold):
    att = random_attention(rng, b=2, h=3, t=1 + 12)
    got = np_(attention_heatmaps([att * 0, att], grid=(3, 4), threshold=threshold))
    if threshold is None:
        np.testing.assert_allclose(got, att[:, :, 0, 1:].reshape(2, 3, 3, 4), rtol=1e-6)
    else:
        expected = ref_dino_masks(att, 1, threshold).reshape(2, 3, 3, 4)
        np.testing.assert_array_equal(got, expected)
        kept = (att[:, :, 0, 1:].reshape(2, 3, 3, 4) * got).sum((-1, -2)) / att[:, :, 0, 1:].sum(-1)
        assert np.all(kept >= threshold - 1e-6)


# ---- CKA ----


@pytest.mark.parametrize("debiased", [False, True])
def test_linear_and_rbf_cka_match_reference(rng, debiased):
    x = rng.standard_normal((40, 5, 6)).astype(np.float32) + 3.0
    y = (x.reshape(40, -1) @ rng.standard_normal((30, 20)) + rng.standard_normal((40, 20))).astype(np.float32)
    np.testing.assert_allclose(
        float(np_(linear_cka(x, y, debiased))), ref_linear_cka(x, y, debiased), rtol=1e-4
    )
    for sigma in (0.5, 2.0):
        expected = ref_cka_gram(ref_rbf_gram(x, sigma), ref_rbf_gram(y, sigma), debiased)
        np.testing.assert_allclose(float(np_(rbf_cka(x, y, sigma, debiased))), expected, rtol=1e-4)


def test_cka_invariances(rng):
    x = rng.standard_normal((60, 12)).astype(np.float32)
    y = np.tanh(x @ rng.standard_normal((12, 9))).astype(np.float32)
    q, _ = np.linalg.qr(rng.standard_normal((9, 9)))
    y2 = (3.7 * y @ q + 5.0).astype(np.float32)  # rotation, isotropic scaling, translation
    for debiased in (False, True):
        assert abs(float(np_(linear_cka(x, x, debiased))) - 1.0) < 1e-5
        assert abs(float(np_(rbf_cka(x, x, 0.5, debiased))) - 1.0) < 1e-5
        a, b = float(np_(linear_cka(x, y, debiased))), float(np_(linear_cka(x, y2, debiased)))
        assert abs(a - b) < 1e-4 and 0.05 < a < 0.99
        a, b = float(np_(rbf_cka(x, y, 0.8, debiased))), float(np_(rbf_cka(x, y2, 0.8, debiased)))
        assert abs(a - b) < 1e-4


def test_minibatch_cka(rng):
    layers_a = [rng.standard_normal((64, 8)).astype(np.float32) for _ in range(3)]
    layers_a[1] = np.tanh(layers_a[0] @ rng.standard_normal((8, 5))).astype(np.float32)
    layers_b = [layers_a[0] * 2.0 + 1.0, rng.standard_normal((64, 2, 3)).astype(np.float32)]
    one = MinibatchCKA()
    one.update(layers_a, layers_b)
    expected = np.array([[ref_linear_cka(a, b, debiased=True) for b in layers_b] for a in layers_a])
    np.testing.assert_allclose(one.result(), expected, rtol=1e-4, atol=1e-6)

    # batch order does not matter; the self matrix is symmetric with a unit diagonal
    batches = [slice(0, 16), slice(16, 40), slice(40, 64)]
    fwd, rev = MinibatchCKA(), MinibatchCKA()
    for s in batches:
        fwd.update([a[s] for a in layers_a])
    for s in reversed(batches):
        rev.update([a[s] for a in layers_a])
    np.testing.assert_allclose(fwd.result(), rev.result(), rtol=1e-6)
    np.testing.assert_allclose(np.diag(fwd.result()), 1.0, rtol=1e-6)
    np.testing.assert_allclose(fwd.result(), fwd.result().T, rtol=1e-6)

    # and equals the reference's sum of per-batch unbiased HSICs
    def hsic(a, b):
        ga, gb = ref_center_gram(a @ a.T, True), ref_center_gram(b @ b.T, True)
        n = len(a)
        return ga.ravel() @ gb.ravel() / (n * (n - 3))  # the unbiased estimator of each batch

    sums = lambda a, b: sum(hsic(a[s].astype(np.float64), b[s].astype(np.float64)) for s in batches)
    ref01 = sums(layers_a[0], layers_a[1]) / np.sqrt(
        sums(layers_a[0], layers_a[0]) * sums(layers_a[1], layers_a[1])
    )
    np.testing.assert_allclose(fwd.result()[0, 1], ref01, rtol=1e-4)


# ---- embeddings and CLS ----


def test_position_similarity(rng):
    pos = rng.standard_normal((1, 2 + 9, 16)).astype(np.float32)
    got = np_(position_similarity(pos, num_prefix_tokens=2))
    p = pos[0, 2:].astype(np.float64)
    p /= np.linalg.norm(p, axis=-1, keepdims=True)
    np.testing.assert_allclose(got, p @ p.T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.diag(got), 1.0, rtol=1e-6)


def test_projection_filters(rng):
    kernel = rng.standard_normal((4, 4, 3, 5)).astype(np.float32)
    got = np_(projection_filters({"patch_embed.kernel": kernel}))
    assert got.shape == (5, 4, 4, 3)
    for d in range(5):
        f = kernel[..., d]
        np.testing.assert_allclose(got[d], (f - f.min()) / (f.max() - f.min()), rtol=1e-5, atol=1e-6)


def test_cls_trajectory(rng):
    hidden = [rng.standard_normal((2, 5, 8)).astype(np.float32) for _ in range(4)]
    tokens, cos = cls_trajectory(hidden)
    cls = np.stack([h[:, 0] for h in hidden], 1).astype(np.float64)
    np.testing.assert_allclose(np_(tokens), cls, rtol=1e-6)
    unit = cls / np.linalg.norm(cls, axis=-1, keepdims=True)
    np.testing.assert_allclose(np_(cos), (unit * unit[:, -1:]).sum(-1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np_(cos)[:, -1], 1.0, rtol=1e-6)


# ---- bad input ----


def test_bad_inputs_are_named(rng):
    att = random_attention(rng, t=10)
    with pytest.raises(ValueError, match="rank 4"):
        mean_attention_distance(att[0], 16)
    with pytest.raises(ValueError, match="not 1 prefix token.*square grid"):
        mean_attention_distance(random_attention(rng, t=11), 16)
    with pytest.raises(ValueError, match="3x4 grid"):
        attention_heatmaps(att, grid=(3, 4))
    with pytest.raises(ValueError, match="discard_ratio must be a number in"):
        attention_rollout([att], discard_ratio=1.0)
    with pytest.raises(ValueError, match="discard_ratio must be a number in"):
        cls_rollout([att], discard_ratio=-0.1)
    with pytest.raises(AnalysisError, match="discard_ratio must be a number in"):
        cls_rollout([att], discard_ratio="0.1")
    with pytest.raises(ValueError, match="head_fusion"):
        attention_rollout([att], head_fusion="median")
    with pytest.raises(ValueError, match="different shapes"):
        attention_rollout([att, random_attention(rng, t=5)])
    x = rng.standard_normal((3, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="at least 4 examples"):
        linear_cka(x, x, debiased=True)
    with pytest.raises(ValueError, match="same examples"):
        linear_cka(x, rng.standard_normal((5, 4)))
    with pytest.raises(ValueError, match="at least 4 examples"):
        MinibatchCKA().update([x])
    with pytest.raises(ValueError, match="different numbers of examples"):
        MinibatchCKA().update([rng.standard_normal((8, 2))], [rng.standard_normal((9, 2))])
    with pytest.raises(ValueError, match="threshold"):
        attention_heatmaps(att, threshold=1.5)
    with pytest.raises(ValueError, match="call update"):
        MinibatchCKA().result()
