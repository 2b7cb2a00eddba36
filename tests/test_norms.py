"""Token norms over a data set and the logit lens scores, against float64 numpy on all the
values at once: the histogram's percentiles within one bin, its merge exact, the scores as
defined."""

import numpy as np
import pytest

from vitops.analysis import NormHistogram, lens_scores
from vitops.analysis.accumulate import load_states, save_states
from vitops.analysis.norms import FENCE, NORM_EDGES, PERCENTILES
from vitops.errors import AnalysisError

BIN = NORM_EDGES[1] / NORM_EDGES[0]  # the ratio of a bin's edges


def _norms(rng, b, blocks, t, outliers=0, first=0):
    """(b, blocks, t) positive norms spread over two decades, some patches 50x larger."""
    v = np.exp(rng.normal(2.0, 0.6, (b, blocks, t)))
    if outliers:
        idx = rng.choice(t - first, outliers, replace=False) + first  # among the patches
        v[:, -1, idx] *= 50.0
    return v


@pytest.mark.parametrize("num_class,num_reg", [(1, 0), (2, 0), (1, 4), (0, 0)])
def test_histogram_equals_numpy_over_batches_and_merged_shards(num_class, num_reg, tmp_path):
    rng = np.random.default_rng(num_class * 10 + num_reg)
    blocks, t = 5, num_class + num_reg + 30
    batches = [_norms(rng, b, blocks, t, outliers=2, first=num_class + num_reg) for b in (3, 1, 4, 2)]
    a, b = NormHistogram(blocks, num_class, num_reg), NormHistogram(blocks, num_class, num_reg)
    for v in batches[:2]:
        a.update(v)
    for v in batches[2:]:
        b.update(v)
    save_states(tmp_path / "b.safetensors", {"b": b})  # a shard written and read back
    (b,) = load_states(tmp_path / "b.safetensors")[0].values()
    got = a.merge(b).result()
    allv = np.concatenate(batches)  # (B, blocks, T) float64
    cut = num_class + num_reg
    groups = [
        g
        for g, part in zip(
            ("class", "registers", "patches"), (slice(0, num_class), slice(num_class, cut), slice(cut, None))
        )
        if allv[:, :, part].size
    ]
    assert got["groups"] == groups
    parts = {"class": slice(0, num_class), "registers": slice(num_class, cut), "patches": slice(cut, None)}
    for j, g in enumerate(groups):
        w = allv[:, :, parts[g]].transpose(1, 0, 2).reshape(blocks, -1)  # (blocks, values)
        np.testing.assert_array_equal(got["count"][:, j], w.shape[1])
        np.testing.assert_allclose(got["mean"][:, j], w.mean(1), rtol=1e-12)
        np.testing.assert_allclose(got["max"][:, j], w.max(1), rtol=1e-12)
        for q in PERCENTILES:  # within one bin of the value of rank ceil(q n / 100)
            ref = np.percentile(w, q, axis=1, method="inverted_cdf")
            ratio = got[f"p{q}"][:, j] / ref
            assert (ratio < BIN * 1.0001).all() and (ratio > 1 / (BIN * 1.0001)).all(), (g, q, ratio)
    # the far fence from the last block's patch quartiles, and the outliers above it
    w = allv[:, -1, cut:].ravel()
    q1, q3 = np.percentile(w, [25, 75])
    assert got["threshold"] == pytest.approx(q3 + FENCE * (q3 - q1), rel=2 * (BIN - 1))
    # counted by bins: every value above the threshold, and those sharing its bin
    above = got["above_threshold"][-1, -1]
    assert (w > got["threshold"]).sum() <= above <= (w > got["threshold"] / BIN).sum()
    assert got["above_threshold"][-1, -1] >= 2 * len(allv)  # every planted outlier
    given = NormHistogram(blocks, num_class, num_reg)
    for v in batches:
        given.update(v)
    assert given.result(threshold=1e9)["above_threshold"].sum() == 0


def test_histogram_refuses_bad_input():
    h = NormHistogram(3, 1, 0)
    with pytest.raises(AnalysisError, match="token norms must be"):
        h.update(np.ones((2, 4, 10)))
    with pytest.raises(AnalysisError, match="nothing was added"):
        h.result()
    with pytest.raises(AnalysisError, match="different settings"):
        h.merge(NormHistogram(3, 1, 4))
    # an image of NaNs is counted and shows as NaN (null in metrics.json), not an abort
    h.update(np.full((2, 3, 10), np.nan))
    r = h.result()
    assert np.isnan(r["mean"]).all() and (r["count"] == [2, 18]).all()
    # tokens all below the first bin: no percentile above their maximum
    tiny = NormHistogram(1, 0, 0)
    tiny.update(np.full((1, 1, 4), 1e-6))
    assert tiny.result()["p50"][0, 0] == pytest.approx(1e-6)


def test_lens_scores_classifier_and_headless():
    rng = np.random.default_rng(1)
    lens = rng.normal(size=(4, 6, 7)) * 3
    got = lens_scores(lens, has_head=True)
    final = lens[:, -1].argmax(-1)
    for i in range(4):
        for s in range(6):
            p = np.exp(lens[i, s] - lens[i, s].max())
            p /= p.sum()
            assert got[i, s, 0] == float(lens[i, s].argmax() == final[i])
            assert got[i, s, 1] == pytest.approx(p[final[i]], rel=1e-12)
    np.testing.assert_array_equal(got[:, -1, 0], 1.0)  # the last step is the prediction
    feats = rng.normal(size=(3, 5, 8))
    cos = lens_scores(feats, has_head=False)[..., 0]
    ref = (feats * feats[:, -1:]).sum(-1) / (
        np.linalg.norm(feats, axis=-1) * np.linalg.norm(feats[:, -1:], axis=-1)
    )
    np.testing.assert_allclose(cos, ref, rtol=1e-12)
    # invariant to a positive scale of the features; a zero vector has cosine 0
    np.testing.assert_allclose(lens_scores(feats * 7.5, has_head=False)[..., 0], ref, rtol=1e-12)
    feats[0, 2] = 0
    assert lens_scores(feats, has_head=False)[0, 2, 0] == 0.0
