"""What one MLP unit responds to: per-patch activation maps, and images optimised to excite it.

Ghiasi et al. (2022, "What do Vision Transformers Learn? A Visual Exploration") find that the
units worth visualising in a ViT are those of each block's MLP hidden layer (after the GELU),
not the keys, queries or values; a unit's score on an image is its activation averaged over
the patch tokens, and the per-patch activations form a map that stays local even in deep
blocks. `visualize_feature` maximises that score by gradient ascent on the image, from noise,
with the regularisers they use (after Plug-In Inversion, Ghiasi et al. 2021, and the feature
visualisation literature): a total-variation penalty, random jitter, colour shifts, an
ensemble of augmented copies per step, and Gaussian smoothing.

Optimiser: normalised gradient ascent, x <- x + lr * g / rms(g) per image. The step is a
continuous function of the gradient (Adam's first steps are sign(g) * lr, where a gradient
entry at the rounding level could go either way), so the same start gives the same step on
every backend; its size is set in pixels of the normalised image whatever the gradient scale.
Randomness (start noise, augmentations) comes from numpy on the host, the same on every backend.
Shapes as in vitops/__init__.py: U units (one image each), K augmented copies per image, B
images, T tokens (P prefix + N patches), M MLP hidden width, Y x X pixels.
"""

from __future__ import annotations

import operator

import numpy as np
from keras import ops

from ..backend.compile import compiled
from ..backend.grad import value_and_grad
from ..core.config import LIMITS
from ..core.ops import matmul, mean  # float64 stays float64 (numerical checks)
from ..core.vit import block as vit_block
from ..core.vit import check_images, embed, rope
from ..errors import AnalysisError, clip
from ..preprocess import Preprocessing
from ._model import as_images, cast_params, check_block, check_units, model_parts, resolve
from .accumulate import Accumulator

# Bounds on what a caller's numbers make vitops allocate: one batch of U units x K copies.
MAX_BATCH = 1024
MAX_STEPS = 100_000


def mlp_hidden_states(params, config, images, blocks) -> dict:
    """{block: (B, T, M) MLP hidden activations after their nonlinearity} for the given blocks;
    the blocks after the last one asked for are not run."""
    x = embed(params, config, images)
    tables = rope(config, check_images(images, config))
    wanted, out = set(blocks), {}
    for i in range(max(wanted) + 1):
        if i in wanted:
            x, _, out[i] = vit_block(params, config, i, x, return_mlp_hidden=True, rope=tables)
        else:
            x, _ = vit_block(params, config, i, x, rope=tables)
    return out


def _unit_maps(params, images, *, config, pairs, compute_dtype):
    """(B, len(pairs), N) float32: each (block, unit)'s activation on every patch token."""
    hidden = mlp_hidden_states(cast_params(params, compute_dtype), config, images, {b for b, _ in pairs})
    p = config.num_prefix_tokens
    return ops.stack([ops.cast(hidden[b][:, p:, u], "float32") for b, u in pairs], axis=1)


_compiled_unit_maps = compiled(
    _unit_maps, static_argnames=("config", "pairs", "compute_dtype"), inference=True
)


def check_pairs(pairs, config) -> tuple[tuple[int, int], ...]:
    """[(block, unit), ...] checked against the model: a tuple of int pairs."""
    try:
        pairs = [tuple(p) for p in pairs]
    except TypeError:
        raise AnalysisError(f"pairs must be a list of (block, unit), got {pairs!r}") from None
    if not pairs or any(len(p) != 2 for p in pairs):
        raise AnalysisError(f"pairs must be a non-empty list of (block, unit), got {pairs!r}")
    return tuple((check_block(b, config), check_units(u, config)[0]) for b, u in pairs)


def unit_activations(model, images, pairs):
    """Scores and per-patch maps of (block, unit) pairs on images, in one forward pass.

    pairs: [(block, unit), ...], unit an index into that block's MLP hidden layer. Returns
    (scores (B, pairs), maps (B, pairs, I, J)) as float32 backend tensors; a
    score is the unit's activation averaged over the patch tokens (Ghiasi et al. 2022), the
    map is that activation at each patch. Blocks after the deepest one asked for are not run.
    """
    return _unit_activations(model_parts(model), images, pairs)


def _unit_activations(parts, images, pairs):
    params, config, dtype = parts
    pairs = check_pairs(pairs, config)
    x = as_images(images, config, dtype)
    gh, gw = check_images(x, config)
    maps = _compiled_unit_maps(params, x, config=config, pairs=pairs, compute_dtype=dtype)
    return ops.mean(maps, axis=-1), ops.reshape(maps, (-1, len(pairs), gh, gw))


def feature_activation_map(model, images, block: int, unit):
    """A unit's activation at every patch: (B, I, J) float32, or (B, U, I, J) when
    unit is a list. Ghiasi et al. (2022) show such maps stay local, saliency-like."""
    parts = model_parts(model)
    units = check_units(unit, parts[1])
    _, maps = _unit_activations(parts, images, [(check_block(block, parts[1]), u) for u in units])
    return maps[:, 0] if len(units) == 1 and not isinstance(unit, (list, tuple)) else maps


# ---- feature visualisation ----


def total_variation(x):
    """(U, H, W, C) -> (U,): mean squared difference of vertically and of horizontally adjacent
    pixels (the beta = 2 total variation of Mahendran & Vedaldi 2015), so a smooth image costs
    little and pixel noise much; independent of the image size."""
    dv = mean(ops.square(x[:, 1:] - x[:, :-1]), (1, 2, 3))
    dh = mean(ops.square(x[:, :, 1:] - x[:, :, :-1]), (1, 2, 3))
    return dv + dh


def _objective(
    image, params, index, scale, shift, selector, tv_weight, *, config, block, ensemble, compute_dtype
):
    """Sum over units of (mean activation over the K augmented copies - tv_weight * TV): a scalar,
    with each copy's activation (U * K,) as aux.

    image (U, Y, X, 3); index (U * K, Y, X) int32 into the U * Y * X pixels (the jitter, as a
    gather: its gradient is the matching scatter-add on every backend); scale, shift
    (U * K, 3) the colour shift; selector (U * K, M) one-hot of each copy's unit.
    """
    u, h, w, c = image.shape
    x = ops.take(ops.reshape(image, (u * h * w, c)), index, axis=0)  # (U * K, Y, X, 3)
    x = x * scale[:, None, None, :] + shift[:, None, None, :]
    hidden = mlp_hidden_states(
        cast_params(params, compute_dtype), config, ops.cast(x, compute_dtype), (block,)
    )[block]  # (U * K, T, M)
    patches = ops.cast(hidden[:, config.num_prefix_tokens :], image.dtype)  # (U * K, N, M)
    act = mean(matmul(patches, selector[:, :, None])[:, :, 0], 1)  # (U * K,)
    per_unit = mean(ops.reshape(act, (u, ensemble)), 1)  # (U,)
    return ops.sum(per_unit - tv_weight * total_variation(image)), act


_ascent_step = value_and_grad(
    _objective, 0, has_aux=True, static_argnames=("config", "block", "ensemble", "compute_dtype")
)


def _gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """(U, H, W, C) blurred along H and W with a Gaussian of sigma pixels (reflected edges),
    on the host: the same numbers on every backend."""
    if sigma <= 0:
        return x
    radius = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k = (k / k.sum()).astype(x.dtype)
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (radius, radius)
        xp = np.pad(x, pad, mode="reflect" if x.shape[axis] > radius else "edge")
        n = x.shape[axis]
        x = sum(k[i] * np.take(xp, np.arange(i, i + n), axis=axis) for i in range(len(k)))
    return x


def _augmentations(rng, units: int, size, ensemble: int, jitter: int, colour: float):
    """One step's random augmentations for U images x K copies: the gather index of a circular
    shift by up to `jitter` pixels each way, and a colour shift x * exp(s) + m with s, m drawn
    per channel from U(-colour, colour) (Plug-In Inversion's ColorShift)."""
    h, w = size
    n = units * ensemble
    dy = rng.integers(-jitter, jitter + 1, n)
    dx = rng.integers(-jitter, jitter + 1, n)
    unit = np.repeat(np.arange(units), ensemble)
    rows = (np.arange(h)[None, :] - dy[:, None]) % h  # (U * K, H): np.roll's source rows
    cols = (np.arange(w)[None, :] - dx[:, None]) % w
    index = (unit[:, None, None] * h * w + rows[:, :, None] * w + cols[:, None, :]).astype(np.int32)
    scale = np.exp(rng.uniform(-colour, colour, (n, 3))).astype(np.float32)
    shift = rng.uniform(-colour, colour, (n, 3)).astype(np.float32)
    return index, scale, shift


def _image_size(value) -> tuple[int, int]:
    """(Y, X) from a caller's image_size, or an AnalysisError."""
    try:
        h, w = (int(operator.index(s)) for s in value)
    except (TypeError, ValueError):
        raise AnalysisError(f"image_size must be (height, width) integers, got {clip(value)}") from None
    return h, w


def _decay(step: int, steps: int, floor: float = 0.1) -> float:
    """Cosine decay of the step size from 1 to `floor` (Loshchilov & Hutter 2017): large steps
    find the pattern, small ones settle it instead of hopping around the optimum."""
    return floor + (1 - floor) * 0.5 * (1 + np.cos(np.pi * step / max(steps - 1, 1)))


def visualize_feature(
    model,
    block: int,
    unit,
    *,
    steps: int = 200,
    seed: int = 0,
    lr: float = 0.05,
    ensemble: int = 4,
    jitter: int | None = None,
    colour_shift: float = 0.1,
    tv_weight: float = 0.5,
    blur: float | None = None,
    init_std: float = 0.1,
    image_size=None,
    callback=None,
):
    """Images that maximise MLP units of one block (Ghiasi et al. 2022): one image per unit,
    all optimised together in one batch.

    model: a vitops model (or a name or path `vitops.load` accepts); block: its index;
    unit: an int or a list of U ints in [0, mlp_dim). Returns (images (U, Y, X, 3) float32 in
    the model's normalised input space, `preprocess.denormalize` shows them; activation (U,)
    float64: each unit's activation averaged over the patch tokens on its final image,
    without augmentation). steps=0 returns the starting noise and its activation.

    The image starts as grey (0.5) plus Gaussian pixel noise of init_std, drawn from seed.
    Each step draws `ensemble` augmented copies per image (a circular shift of up to `jitter`
    pixels, default H / 32; a colour shift of strength colour_shift), ascends the mean of
    their activations minus tv_weight * total variation by lr * g / rms(g) (lr in normalised
    units), keeps pixels in [0, 1] and blurs with a Gaussian whose sigma falls linearly from
    `blur` pixels (default H / 64) to 0 over the steps (Yosinski et al. 2015). callback(step,
    activations (U,)) is called after each step with the mean activation over the copies.
    image_size: (Y, X), default the model's; multiples of the patch size.
    """
    model = resolve(model)
    params, config, dtype = model_parts(model)
    block = check_block(block, config)
    units = check_units(unit, config)
    for label, v, low, high in (("steps", steps, 0, MAX_STEPS), ("ensemble", ensemble, 1, MAX_BATCH)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not low <= v <= high:
            raise AnalysisError(f"{label} must be an int in [{low}, {high}], got {clip(v)}")
    if len(units) * ensemble > MAX_BATCH:
        raise AnalysisError(
            f"{len(units)} units x {ensemble} copies make a batch of {len(units) * ensemble} "
            f"images, more than {MAX_BATCH}: fewer units per call, or a smaller ensemble"
        )
    h, w = config.image_size if image_size is None else _image_size(image_size)
    side = LIMITS["image_side"][1]
    if h % config.patch_size or w % config.patch_size or not (0 < h <= side and 0 < w <= side):
        raise AnalysisError(
            f"image_size {h}x{w} must be a multiple of the patch size {config.patch_size} and at most "
            f"{side} pixels a side"
        )
    jitter = max(1, round(h / 32)) if jitter is None else int(jitter)
    blur = h / 64 if blur is None else float(blur)
    for label, v in (
        ("lr", lr),
        ("tv_weight", tv_weight),
        ("colour_shift", colour_shift),
        ("jitter", jitter),
        ("blur", blur),
        ("init_std", init_std),
    ):
        if not np.isfinite(v) or v < 0:
            raise AnalysisError(f"{label} must be a finite number >= 0, got {v!r}")

    # the model's own normalisation, as its weight file records it (`Preprocessing.for_model`)
    pre = Preprocessing.for_model(config, model.metadata)
    mean, std = np.asarray(pre.mean, np.float32), np.asarray(pre.std, np.float32)
    lo, hi = (0 - mean) / std, (1 - mean) / std  # the normalised image of pixels 0 and 1
    rng = np.random.default_rng(seed)
    u = len(units)
    pixels = np.clip(0.5 + init_std * rng.standard_normal((u, h, w, 3)), 0, 1).astype(np.float32)
    x = (pixels - mean) / std  # (U, Y, X, 3)
    selector = np.zeros((u * ensemble, config.mlp_dim), np.float32)
    selector[np.arange(u * ensemble), np.repeat(units, ensemble)] = 1
    tv = np.asarray(tv_weight, np.float32)  # an input, not a constant: no recompilation per value
    for step in range(steps):
        index, scale, shift = _augmentations(rng, u, (h, w), ensemble, jitter, colour_shift)
        (_, act), g = _ascent_step(
            x,
            params,
            index,
            scale,
            shift,
            selector,
            tv,
            config=config,
            block=block,
            ensemble=ensemble,
            compute_dtype=dtype,
        )
        g = np.asarray(ops.convert_to_numpy(g), np.float32)
        rms = np.sqrt(np.mean(np.square(g), axis=(1, 2, 3), keepdims=True))
        x = x + lr * _decay(step, steps) * g / np.maximum(rms, 1e-12)
        x = np.clip(x, lo, hi)
        x = _gaussian_blur(x, blur * (1 - step / steps)).astype(np.float32)
        if callback is not None:
            callback(step + 1, np.asarray(ops.convert_to_numpy(act), np.float64).reshape(u, ensemble).mean(1))
    scores, _ = _unit_activations((params, config, dtype), x, [(block, v) for v in units])
    return x, np.asarray(ops.convert_to_numpy(scores), np.float64)[np.arange(u), np.arange(u)]


# ---- the most activating images of a data set ----


class TopK(Accumulator):
    """The k images of a data set that most activate each (block, unit), streaming.

    acc = TopK([(3, 17), (5, 200)], k=8)
    for ids, batch in data: acc.update(model, batch, ids)
    acc.result()  # {"scores": (pairs, k), "ids": (pairs, k), "maps": (pairs, k, I, J), ...}

    A score is the unit's activation averaged over the patch tokens (as `unit_activations`);
    with maps=True the kept images' per-patch activation maps are kept too (the example and
    its map that Ghiasi et al. 2022 show beside each visualisation). Memory is constant:
    P x k scores, ids and maps. ids are the caller's identifiers of the images (e.g. indices
    into the data set), unique across everything merged. Ties are broken by the smaller id,
    so the kept set and its order depend only on the images seen, not on their order or on
    how they were split: merging shards equals one run over all images.
    """

    kind = "top_k"

    def __init__(self, pairs, k: int = 10, maps: bool = True):
        try:
            pairs = [tuple(int(v) for v in p) for p in pairs]
        except (TypeError, ValueError):
            raise AnalysisError(f"pairs must be a list of (block, unit) ints, got {pairs!r}") from None
        if not pairs or any(len(p) != 2 or min(p) < 0 for p in pairs):
            raise AnalysisError(f"pairs must be a non-empty list of (block, unit), got {pairs!r}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise AnalysisError(f"k must be an int >= 1, got {k!r}")
        self.pairs, self.k, self.keep_maps = pairs, int(k), bool(maps)
        self.count = 0
        self._scores = self._ids = self._maps = None  # (pairs, n), (pairs, n), (pairs, n, I, J); n <= k

    def settings(self) -> dict:
        return {"pairs": [list(p) for p in self.pairs], "k": self.k, "maps": self.keep_maps}

    @classmethod
    def from_settings(cls, settings: dict) -> TopK:
        return cls(settings.get("pairs"), settings.get("k"), settings.get("maps", True))

    @property
    def empty(self) -> bool:
        return self.count == 0

    def update(self, model, images, ids) -> None:
        """Score images (B, Y, X, 3) with the model (one forward pass, up to the deepest block
        asked for) and keep the best; ids: (B,) integers naming them."""
        scores, maps = unit_activations(model, images, self.pairs)
        self.update_scores(
            ops.convert_to_numpy(scores), ids, ops.convert_to_numpy(maps) if self.keep_maps else None
        )

    def update_scores(self, scores, ids, maps=None) -> None:
        """scores (B, pairs) and, with maps=True, maps (B, pairs, I, J), computed elsewhere."""
        s = np.asarray(scores, np.float64)
        i = np.asarray(ids)
        p = len(self.pairs)
        if s.ndim != 2 or s.shape[1] != p:
            raise AnalysisError(
                f"scores must be (images, {p}) for {p} (block, unit) pairs, got shape {s.shape}"
            )
        if i.shape != (s.shape[0],) or (i.size and i.dtype.kind not in "iu"):
            raise AnalysisError(f"ids must be {s.shape[0]} integers, one per image, got {ids!r}")
        if not np.all(np.isfinite(s)):
            raise AnalysisError("scores contain NaN or infinity")
        if len(np.unique(i)) != len(i):
            raise AnalysisError("ids repeat within the batch: each image needs its own id")
        m = None
        if self.keep_maps:
            if maps is None:
                raise AnalysisError("this TopK keeps maps (maps=True): pass maps (images, pairs, rows, cols)")
            m = np.asarray(maps, np.float32)
            if m.ndim != 4 or m.shape[:2] != s.shape:
                raise AnalysisError(f"maps must be (images, {p}, rows, cols), got shape {m.shape}")
            if self._maps is not None and m.shape[2:] != self._maps.shape[2:]:
                raise AnalysisError(
                    f"maps of {m.shape[2]}x{m.shape[3]} patches, earlier ones "
                    f"{self._maps.shape[2]}x{self._maps.shape[3]}"
                )
        if s.shape[0] == 0:
            return
        self._fold(
            s.T,
            np.broadcast_to(i.astype(np.int64), (p, len(i))),
            None if m is None else m.transpose(1, 0, 2, 3),
            s.shape[0],
        )

    def _fold(self, scores, ids, maps, count) -> None:
        """Keep the best k of the current and the new entries, per pair: (P, n) each."""
        if self._scores is not None:
            scores = np.concatenate([self._scores, scores], axis=1)
            ids = np.concatenate([self._ids, ids], axis=1)
            if maps is not None:
                maps = np.concatenate([self._maps, maps], axis=1)
        # Highest score first; among equal scores the smaller id: a total order on distinct ids.
        order = np.lexsort((ids, -scores), axis=1)[:, : self.k]  # (P, <= k)
        self._scores = np.take_along_axis(scores, order, axis=1)
        self._ids = np.take_along_axis(ids, order, axis=1)
        if maps is not None:
            self._maps = np.take_along_axis(maps, order[:, :, None, None], axis=1)
        self.count += count

    def result(self) -> dict:
        """{"pairs", "scores" (P, n) float64 best first, "ids" (P, n) int64, "maps" (P, n, rows,
        cols) float32 or None, "count"}, n = min(k, images seen)."""
        if self.empty:
            raise AnalysisError("nothing was added: call update() first")
        return {
            "pairs": list(self.pairs),
            "scores": self._scores.copy(),
            "ids": self._ids.copy(),
            "maps": None if self._maps is None else self._maps.copy(),
            "count": self.count,
        }

    def state(self) -> dict[str, np.ndarray]:
        if self.empty:
            return {"count": np.zeros((), np.int64)}
        out = {"scores": self._scores, "ids": self._ids, "count": np.asarray(self.count, np.int64)}
        if self._maps is not None:
            out["maps"] = self._maps
        return out

    def set_state(self, arrays) -> None:
        count = np.asarray(arrays.get("count"))
        # safetensors gives a saved 0-d array back with shape (1,)
        if count.size != 1 or count.dtype.kind not in "iu" or int(count.reshape(-1)[0]) < 0:
            raise AnalysisError(f"top-k state: count must be one integer >= 0, got {arrays.get('count')!r}")
        self.count = int(count.reshape(-1)[0])
        if not self.count:
            self._scores = self._ids = self._maps = None
            return
        if "scores" not in arrays or "ids" not in arrays:
            raise AnalysisError(f"top-k state of {self.count} images lacks its scores or ids")
        s, i = np.asarray(arrays["scores"], np.float64), np.asarray(arrays["ids"], np.int64)
        p = len(self.pairs)
        if s.ndim != 2 or s.shape[0] != p or i.shape != s.shape or s.shape[1] > self.k:
            raise AnalysisError(
                f"top-k state of shape {s.shape} / {i.shape} does not fit {p} pairs, k={self.k}"
            )
        m = arrays.get("maps")
        if self.keep_maps and (m is None or np.ndim(m) != 4 or np.shape(m)[:2] != s.shape):
            raise AnalysisError("top-k state without maps of the kept images, but maps=True")
        self._scores, self._ids = s, i
        self._maps = np.asarray(m, np.float32) if self.keep_maps else None

    def _merge_state(self, other) -> None:
        if self.keep_maps and other._maps.shape[2:] != self._maps.shape[2:]:
            raise AnalysisError(
                f"cannot merge maps of {other._maps.shape[2:]} patches into {self._maps.shape[2:]}"
            )
        self._fold(other._scores, other._ids, other._maps, other.count)
