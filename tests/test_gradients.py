"""Gradients: the backend primitive against finite differences (float64), gradient-weighted
rollout against Chefer et al.'s rule computed with PyTorch autograd on timm, and gradient x
input against autograd on timm.

The timm references use the unfused attention path and capture each block's attention
probabilities (attn_drop's output, the identity in eval mode) with a forward hook, keeping
their gradients: the same dA * A that Chefer et al.'s code takes from its attention hooks.
"""

import keras
import numpy as np
import pytest
from conftest import BACKEND
from helpers.timm_reference import TINY, chefer_relevance, rel_err, timm_twin

import vitops
from vitops.analysis.gradients import gradient_rollout, input_gradients, relevance_for_report
from vitops.backend import compile as _compile
from vitops.backend import grad as _grad

# The reference implementations: without them the module is skipped, not an error.
torch = pytest.importorskip("torch")

np_ = keras.ops.convert_to_numpy
SMALL = {**TINY, "depth": 2}  # two blocks: enough to compose the rule, quick to compile


def converted(tmp_path, name, **kwargs):
    ref, path = timm_twin(tmp_path, name, **SMALL, **kwargs)
    return ref, vitops.load(path)


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("vit_small_patch16_224", {"num_classes": 7}),
        ("deit_tiny_distilled_patch16_224", {"num_classes": 7}),
        ("vit_small_patch16_224.dino", {"num_classes": 5}),
        # registers between the class token and the patches (Darcet et al. 2024)
        ("vit_small_patch16_224", {"num_classes": 7, "reg_tokens": 4, "no_embed_class": True}),
        ("deit3_small_patch16_224", {"num_classes": 7}),
        # no class token: the attention-pool head's query stands in for its row
        ("vit_base_patch16_siglip_224", {"num_classes": 7}),
    ],
)
def test_gradient_rollout_equals_chefer_on_timm(tmp_path, name, kwargs):
    ref, model = converted(tmp_path, name, **kwargs)
    prefix = model.config.num_prefix_tokens
    images = np.random.default_rng(1).standard_normal((3, 64, 48, 3)).astype(np.float32)
    got = np_(gradient_rollout(model, images))
    assert got.shape == (3, 4, 3)
    row, predicted = chefer_relevance(ref, images)
    want = row[:, prefix:].reshape(3, 4, 3)
    assert rel_err(got, want) <= 1e-4
    # the maps differ between images and the prefix tokens are dropped, not a neighbour
    assert rel_err(got[0], got[1]) > 1e-2
    # a class asked per image, other than the predicted one where possible
    asked = (predicted + 1) % kwargs["num_classes"]
    got = np_(gradient_rollout(model, images, class_index=asked))
    row, _ = chefer_relevance(ref, images, classes=asked)
    assert rel_err(got, row[:, prefix:].reshape(3, 4, 3)) <= 1e-4
    # one int for every image
    got = np_(gradient_rollout(model, images, class_index=2))
    row, _ = chefer_relevance(ref, images, classes=[2, 2, 2])
    assert rel_err(got, row[:, prefix:].reshape(3, 4, 3)) <= 1e-4


def test_headless_needs_a_target(tmp_path):
    ref, model = converted(tmp_path, "vit_small_patch16_224.dino", num_classes=0)
    images = np.random.default_rng(2).standard_normal((2, 48, 64, 3)).astype(np.float32)
    with pytest.raises(vitops.AnalysisError, match="no classification head.*target"):
        gradient_rollout(model, images)
    got = np_(gradient_rollout(model, images, target=feature_three))
    row, _ = chefer_relevance(ref, images, score=lambda out: out[:, 3])
    assert rel_err(got, row[:, 1:].reshape(2, 3, 4)) <= 1e-4
    with pytest.raises(vitops.AnalysisError, match="not both"):
        gradient_rollout(model, images, class_index=1, target=feature_three)


def test_explain_skips_a_model_without_a_head(tmp_path):
    from vitops.app.commands import analyze
    from vitops.hub.shipped import samples as shipped_samples

    _, path = timm_twin(tmp_path, "vit_small_patch16_224.dino", **SMALL, num_classes=0)
    summary = analyze(
        [str(path), "digits_vit"],
        [str(p) for p in shipped_samples()[:2]],
        tmp_path / "out",
        show=2,
        explain=True,
        progress=False,
    )
    dino, digits = summary["models"].values()
    assert all("relevance" not in s for s in dino["samples"].values())
    assert all(s["relevance"]["class"] == s["predictions"][0]["class"] for s in digits["samples"].values())


def feature_three(out):
    return out["features"][:, 3]


def test_input_gradients_equal_autograd_on_timm(tmp_path):
    ref, model = converted(tmp_path, "deit_tiny_distilled_patch16_224", num_classes=6)
    rng = np.random.default_rng(3)
    images = rng.standard_normal((2, 32, 48, 3)).astype(np.float32)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).requires_grad_(True)
    out = ref(x)
    classes = out.argmax(-1)
    out.gather(1, classes[:, None])[:, 0].sum().backward()
    gx = (x.grad * x).sum(1).detach().numpy()  # (B, H, W)
    want = gx.reshape(2, 2, 16, 3, 16).mean(axis=(2, 4))
    got = np_(input_gradients(model, images))
    assert got.shape == (2, 2, 3)
    assert rel_err(got, want) <= 1e-4
    # SmoothGrad: the mean of the maps of noisy copies, noise drawn from the seed with numpy,
    # every copy explaining the clean image's predicted class
    smooth = np_(input_gradients(model, images, smoothgrad=3, noise=0.2, seed=5))
    again = np_(input_gradients(model, images, smoothgrad=3, noise=0.2, seed=5))
    np.testing.assert_array_equal(smooth, again)
    draw = np.random.default_rng(5)
    sigma = 0.2 * (images.max(axis=(1, 2, 3)) - images.min(axis=(1, 2, 3)))
    maps = [
        np_(
            input_gradients(
                model,
                images + sigma[:, None, None, None] * draw.standard_normal(images.shape).astype(np.float32),
                class_index=classes.numpy(),
            )
        )
        for _ in range(3)
    ]
    assert rel_err(smooth, np.mean(maps, axis=0)) <= 1e-5
    assert rel_err(smooth, got) > 1e-3


def test_bad_requests_are_named(tmp_path):
    _, model = converted(tmp_path, "vit_small_patch16_224", num_classes=4)
    images = np.zeros((2, 32, 32, 3), np.float32)
    with pytest.raises(vitops.AnalysisError, match=r"class_index must be in \[0, 4\)"):
        gradient_rollout(model, images, class_index=4)
    with pytest.raises(vitops.AnalysisError, match="3 entries for 2 images"):
        gradient_rollout(model, images, class_index=[0, 1, 2])
    with pytest.raises(vitops.AnalysisError, match="class_index must be an int"):
        gradient_rollout(model, images, class_index=1.5)
    with pytest.raises(vitops.AnalysisError, match="smoothgrad"):
        input_gradients(model, images, smoothgrad=-1)
    with pytest.raises(vitops.AnalysisError, match="one score per image"):
        gradient_rollout(model, images, target=whole_features)
    with pytest.raises(vitops.AnalysisError, match="model must be"):
        gradient_rollout(42, images)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        gradient_rollout(model, np.zeros((1, 30, 32, 3), np.float32))


def whole_features(out):
    return out["features"]


# ---- the primitive against central finite differences, float64 ----


def float64_model(seed=0):
    """A tiny random vitops model, weights drawn here (not timm's), in float64."""
    config = vitops.ViTConfig(
        image_size=(16, 16),
        patch_size=8,
        dim=16,
        depth=3,
        num_heads=2,
        mlp_dim=24,
        num_classes=3,
        distilled=True,
    )
    rng = np.random.default_rng(seed)
    params = {
        k: (rng.standard_normal(s) / (np.sqrt(s[0]) if len(s) > 1 else 2)).astype(np.float64)
        for k, s in vitops.param_shapes(config).items()
    }
    return config, params


def test_value_and_grad_equals_finite_differences_per_block():
    """d logit / d (each block's attention) and d logit / d image, against central differences
    of the forward pass in float64: a dropped block, a flipped sign or a wrong entry fails."""
    config, params = float64_model()
    rng = np.random.default_rng(1)
    b, t, h = 2, config.num_prefix_tokens + 4, config.num_heads  # a 2 x 2 grid
    images = rng.standard_normal((b, 16, 16, 3))
    eps = 1e-5

    def objective(deltas, images, params):
        out = vitops.forward(params, config, images, return_attention=True, attention_delta=deltas)
        return keras.ops.sum(out["logits"][:, 1]), out["attention"]

    # Speed only: eager JAX dispatches (and compiles) op by op, slow for these many small
    # calls, while XLA compiles float64 TensorFlow graphs slowly; both ways are checked
    # (gradient_rollout's compiled path by the next test).
    fast = BACKEND == "jax"

    @(_compile.compiled if fast else (lambda f: f))
    def logits(params, deltas, images):
        return vitops.forward(params, config, images, attention_delta=deltas)["logits"][:, 1]

    def logit(deltas, images):  # (B,) per image, no gradient
        return np_(logits(p, deltas, images))

    with _grad.float64():
        # float64 tensors made explicitly: Keras turns numpy float64 into float32 on jax and torch
        p = {k: keras.ops.convert_to_tensor(v, "float64") for k, v in params.items()}
        x = keras.ops.convert_to_tensor(images, "float64")
        zeros = [keras.ops.zeros((b, h, t, t), "float64") for _ in range(config.depth)]
        grad = _grad.value_and_grad(objective, (0, 1), has_aux=True, compile=fast)
        (value, attention), (d_deltas, d_images) = grad(zeros, x, p)
        assert keras.backend.standardize_dtype(d_images.dtype) == "float64"
        assert float(value) == pytest.approx(float(logit(zeros, x).sum()), rel=1e-12)
        assert len(attention) == config.depth and attention[0].shape == (b, h, t, t)
        # every entry of every block's dA: all perturbations of both images at once, as a batch
        n = h * t * t
        basis = np.tile(np.eye(n).reshape(n, h, t, t), (b, 1, 1, 1))  # (B * n, H, T, T)
        xs = keras.ops.convert_to_tensor(np.repeat(images, n, axis=0), "float64")
        for i in range(config.depth):
            plus = [keras.ops.zeros((b * n, h, t, t), "float64") for _ in range(config.depth)]
            minus = list(plus)
            plus[i] = keras.ops.convert_to_tensor(eps * basis, "float64")
            minus[i] = keras.ops.convert_to_tensor(-eps * basis, "float64")
            want = ((logit(plus, xs) - logit(minus, xs)) / (2 * eps)).reshape(b, h, t, t)
            got = np_(d_deltas[i])
            assert np.abs(want).max() > 1e-3, "block without gradient: the test cannot tell"
            assert np.abs(got - want).max() <= 1e-7 * max(1.0, np.abs(want).max()), i
        # the image gradient along random directions
        for _ in range(3):
            v = rng.standard_normal(images.shape)
            v = keras.ops.convert_to_tensor(v, "float64")
            fd = (logit(zeros, x + eps * v).sum() - logit(zeros, x - eps * v).sum()) / (2 * eps)
            assert float(np.sum(np_(d_images) * np_(v))) == pytest.approx(fd, rel=1e-7, abs=1e-10)


def test_value_and_grad_contract():
    """Structure of the result, zeros for unused inputs, aux passed through, and gradients
    even inside torch.inference_mode (where autograd records nothing by default)."""

    def f(a, b, c):
        return keras.ops.sum(a["w"] * b), {"twice": 2 * b}

    a = {"w": np.array([1.0, 2.0, 3.0], np.float32)}
    b = np.array([4.0, 5.0, 6.0], np.float32)
    c = np.ones(2, np.float32)
    for compile_ in (True, False):
        g = _grad.value_and_grad(f, (0, 2), has_aux=True, compile=compile_)
        with torch.inference_mode():
            (value, aux), (da, dc) = g(a, b, c)
        assert float(value) == pytest.approx(32.0)
        np.testing.assert_allclose(np_(aux["twice"]), 2 * b)
        np.testing.assert_allclose(np_(da["w"]), b)
        np.testing.assert_array_equal(np_(dc), np.zeros(2))
    value, db = _grad.value_and_grad(lambda a, b: keras.ops.sum(a * b * b), 1)(b, b)
    np.testing.assert_allclose(np_(db), 2 * b * b)


def test_gradient_rollout_in_float64_equals_the_rule_from_finite_differences():
    """gradient_rollout on a float64 Keras model equals Chefer et al.'s rule written in numpy
    over dA from finite differences: the whole chain, independent of any autograd."""
    config, params = float64_model(seed=4)
    images = np.random.default_rng(5).standard_normal((2, 16, 16, 3))
    with _grad.float64():
        model = vitops.VisionTransformer(config, params, dtype="float64")
        assert model.compute_dtype == "float64"
        params = {
            k: keras.ops.convert_to_tensor(v, "float64")  # what the model holds
            for k, v in model.get_params().items()
        }
        got = np_(gradient_rollout(model, keras.ops.convert_to_tensor(images, "float64"), class_index=[0, 2]))
        assert got.dtype == np.float64
        out = vitops.forward(
            params, config, keras.ops.convert_to_tensor(images, "float64"), return_attention=True
        )
        atts = [np_(a) for a in out["attention"]]
        h, t = config.num_heads, atts[0].shape[-1]
        n, eps = h * t * t, 1e-6
        basis = np.eye(n).reshape(n, h, t, t)
        rows = []
        for j, cls in enumerate([0, 2]):
            xs = keras.ops.convert_to_tensor(np.repeat(images[j : j + 1], n, axis=0), "float64")

            def logit(deltas, xs=xs, cls=cls):  # (n,): one perturbation per row of the batch
                return np_(vitops.forward(params, config, xs, attention_delta=deltas)["logits"][:, cls])

            r = np.eye(t)
            for i in range(config.depth):
                plus = [np.zeros((n, h, t, t)) for _ in range(config.depth)]
                minus = [np.zeros((n, h, t, t)) for _ in range(config.depth)]
                plus[i], minus[i] = eps * basis, -eps * basis
                plus = [keras.ops.convert_to_tensor(d, "float64") for d in plus]
                minus = [keras.ops.convert_to_tensor(d, "float64") for d in minus]
                da = ((logit(plus) - logit(minus)) / (2 * eps)).reshape(h, t, t)
                r = r + np.maximum(da * atts[i][j], 0).mean(0) @ r
            rows.append(r[0, 2:])
    want = np.stack(rows).reshape(2, 2, 2)
    assert np.abs(got - want).max() <= 1e-7 * np.abs(want).max()


def test_relevance_for_report_on_shipped_digits():
    from vitops.hub.shipped import samples as shipped_samples
    from vitops.preprocess import preprocess

    model = vitops.load("digits_vit")
    config = model.config
    images = preprocess(
        [str(p) for p in shipped_samples()], size=config.image_size, family=config.family, crop_pct=1.0
    )
    maps, classes = relevance_for_report(model, images, batch_size=4)
    assert maps.shape == (len(images), 8, 8) and maps.dtype == np.float32
    np.testing.assert_array_equal(classes, np.argmax(np_(model(images)), axis=-1))
    for start in (0, 4):  # batch by batch, as one call on each batch gives
        assert (
            rel_err(maps[start : start + 4], np_(gradient_rollout(model, images[start : start + 4]))) <= 1e-6
        )
    # relevance is not uniform: the digit's patches stand out from the empty border
    assert (maps.max(axis=(1, 2)) > 3 * np.median(maps, axis=(1, 2))).all()


@pytest.mark.parametrize("baseline", ["zeros", "image"], ids=["zero-baseline", "given-baseline"])
def test_integrated_gradients_equal_a_riemann_sum_of_input_gradients(tmp_path, baseline):
    """With baseline x0 and the path x0 + a (x - x0), the gradient at a point p dotted with
    (x - x0) is input_gradients' gradient x input at p, taken with p's own input replaced:
    for x0 = 0, p = a x, so grad(p) . x = (grad x input at p) / a. Integrated gradients is the
    midpoint mean of that; its completeness error shrinks with more steps."""
    from vitops.analysis.gradients import integrated_gradients

    _, model = converted(tmp_path, "vit_small_patch16_224", num_classes=7, seed=8)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 64, 64, 3)).astype(np.float32)
    classes = np.array([3, 5], np.int32)
    steps = 8
    if baseline == "zeros":
        maps, comp = integrated_gradients(model, x, classes, steps=steps, return_completeness=True)
        ref = np.zeros((2, 4, 4))
        for k in range(steps):
            a = (k + 0.5) / steps
            ref += np_(input_gradients(model, a * x, classes)).astype(np.float64) / a
        ref /= steps
        np.testing.assert_allclose(np_(maps), ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
    else:
        x0 = rng.standard_normal((64, 64, 3)).astype(np.float32) * 0.1
        maps, comp = integrated_gradients(
            model, x, classes, steps=steps, baseline=x0, return_completeness=True
        )
    # completeness: the attributions add up to the score's change, to the sum's error
    logits = lambda z: np_(model(z)).astype(np.float64)[np.arange(2), classes]
    start = np.zeros_like(x) if baseline == "zeros" else np.broadcast_to(x0, x.shape)
    np.testing.assert_allclose(comp["difference"], logits(x) - logits(start), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(comp["total"], np_(maps).astype(np.float64).sum((1, 2)) * 16 * 16, rtol=1e-4)
    fine = integrated_gradients(
        model, x, classes, steps=64, baseline=None if baseline == "zeros" else x0, return_completeness=True
    )[1]
    assert (fine["error"] < comp["error"]).all() and (fine["error"] < 1e-2).all()


@pytest.mark.parametrize("name", ["vit_small_patch16_224", "deit_tiny_distilled_patch16_224"])
def test_deletion_insertion_equal_the_protocol_run_with_timm(tmp_path, name):
    """RISE's deletion and insertion (Petsiuk et al. 2018) written here again from its
    definition and run on the timm twin: patches ranked by the map, removed to (or inserted
    from) the baseline in equal steps, the class's softmax probability, trapezoid areas."""
    from helpers.timm_reference import nchw

    from vitops.analysis import deletion_insertion

    ref, model = converted(tmp_path, name, num_classes=7, seed=9)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 64, 48, 3)).astype(np.float32)  # 4 x 3 patches
    maps = rng.random((3, 4, 3))
    steps, baseline = 5, rng.standard_normal((64, 48, 3)).astype(np.float32) * 0.2
    got = deletion_insertion(model, x, maps, steps=steps, baseline=baseline, batch_size=7)

    def prob(images):
        with torch.no_grad():
            return torch.softmax(ref(nchw(images)).double(), -1).numpy()

    classes = prob(x).argmax(-1)
    np.testing.assert_array_equal(got["classes"], classes)
    for i in range(3):
        order = np.argsort(-maps[i].ravel(), kind="stable")
        for curve, (start, end) in (("deletion", (x[i], baseline)), ("insertion", (baseline, x[i]))):
            want = []
            for s in range(steps + 1):
                img = start.copy()
                for patch in order[: int(round(s * 12 / steps))]:
                    r, c = divmod(int(patch), 3)
                    img[r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16] = end[
                        r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16
                    ]
                want.append(prob(img[None])[0, classes[i]])
            np.testing.assert_allclose(got[curve][i], want, rtol=1e-4, atol=1e-6)
            auc = sum((want[s] + want[s + 1]) / 2 for s in range(steps)) / steps
            assert got[f"{curve}_auc"][i] == pytest.approx(auc, rel=1e-4)
    # the ends: nothing removed is the image itself, everything removed is the baseline
    np.testing.assert_allclose(got["deletion"][:, 0], got["insertion"][:, -1], rtol=1e-6)
    np.testing.assert_allclose(got["deletion"][:, -1], got["insertion"][:, 0], rtol=1e-6)
