"""A thin keras.Model around the functional forward pass.

It holds one Keras variable per vitops key, so `predict`, `fit`, `trainable = False`, dtype
policies and composition with other Keras layers work as usual. On the torch backend it is a
`torch.nn.Module` whose parameters a plain PyTorch optimiser can train.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import keras
import numpy as np

from ..backend.compile import compiled
from .config import ViTConfig
from .vit import check_images, check_num_blocks, forward, param_shapes, rollout_segment


def _cast(params: dict, compute_dtype: str) -> dict:
    # What Keras' autocast does for call(): float weights are read in the compute dtype.
    return {
        k: keras.ops.cast(v, compute_dtype)
        if keras.backend.standardize_dtype(v.dtype) != compute_dtype
        else v
        for k, v in params.items()
    }


def _inference(
    params, images, config, return_attention, return_hidden, reductions, compute_dtype, num_blocks
):
    return forward(
        _cast(params, compute_dtype),
        config,
        images,
        return_attention=return_attention,
        return_hidden=return_hidden,
        reductions=reductions,
        num_blocks=num_blocks,
        rollout_carry=reductions is not None,
    )


def _segment(params, x, row, config, reductions, grid, compute_dtype):
    # blocks 0 .. config.depth - 1 of params: one segment's blocks, renumbered from 0
    return rollout_segment(_cast(params, compute_dtype), config, x, row, reductions, grid, 0, config.depth)


# One compiled version per (config, outputs asked for, reductions, blocks run), and per input
# shape; the rollout's segments one per segment length.
_compiled_inference = compiled(
    _inference,
    static_argnames=(
        "config",
        "return_attention",
        "return_hidden",
        "reductions",
        "compute_dtype",
        "num_blocks",
    ),
    inference=True,
)
_compiled_segment = compiled(
    _segment, static_argnames=("config", "reductions", "grid", "compute_dtype"), inference=True
)


def default_initializer(key: str):
    """Initialisation for training from scratch: timm's (trunc-normal 0.02, zero biases)."""
    if key.endswith((".bias",)):
        return keras.initializers.Zeros()
    if key.endswith(".scale"):
        return keras.initializers.Ones()
    return keras.initializers.TruncatedNormal(stddev=0.02)


@keras.saving.register_keras_serializable(package="vitops")
class VisionTransformer(keras.Model):
    """ViT / DeiT / DINO as a Keras model.

    model(images) -> logits (B, classes), or features (B, D) when headless.
    model(images, return_attention=True, return_hidden=True) -> dict with "logits" and/or
    "features", "attention" (list of (B, heads, T, T)) and "hidden" (list of (B, T, D)).
    model(images, return_dict=True) -> the dict without intermediates (DeiT distilled: also
    "logits_cls" and "logits_dist").
    model(images, return_hidden=True, num_blocks=4) -> the first 4 blocks' intermediates only;
    the later blocks and the head never run (see `vitops.forward`).
    images: NHWC float, preprocessed, height and width multiples of the patch size.
    """

    def __init__(
        self, config: ViTConfig, params: Mapping | None = None, metadata: Mapping | None = None, **kwargs
    ):
        name = kwargs.pop("name", None) or re.sub(r"[^A-Za-z0-9_]", "_", config.name or "vit")
        super().__init__(name=name, **kwargs)
        self.config = config
        # The weight file's metadata (str -> str): provenance, class names, preprocessing.
        self.metadata: dict[str, str] = {str(k): str(v) for k, v in (metadata or {}).items()}
        self._keys = list(param_shapes(config))
        self._vars = []
        for key, shape in param_shapes(config).items():
            if params is not None:
                # Read lazily: with a WeightFile, one tensor is in host memory at a time.
                init = lambda shape, dtype=None, k=key: np.asarray(params[k], dtype="float32")
            else:
                init = default_initializer(key)
            self._vars.append(self.add_weight(shape=shape, initializer=init, name=key.replace(".", "_")))
        self.built = True

    @property
    def variables_by_key(self) -> dict:
        """{vitops key: Keras variable}."""
        return dict(zip(self._keys, self._vars))

    def get_params(self) -> dict[str, np.ndarray]:
        """The weights as {vitops key: numpy array}, e.g. for `forward` or `vitops.save`."""
        return {k: keras.ops.convert_to_numpy(v) for k, v in zip(self._keys, self._vars)}

    def _params(self) -> dict:
        return {k: v.value for k, v in zip(self._keys, self._vars)}

    def call(
        self,
        images,
        return_attention: bool = False,
        return_hidden: bool = False,
        return_dict: bool = False,
        num_blocks: int | None = None,
    ):
        out = forward(
            self._params(),
            self.config,
            images,
            return_attention=return_attention,
            return_hidden=return_hidden,
            num_blocks=num_blocks,
        )
        if return_attention or return_hidden or return_dict or num_blocks is not None:
            return out
        return out["logits"] if "logits" in out else out["features"]

    def infer(
        self,
        images,
        *,
        reductions=None,
        return_attention: bool = False,
        return_hidden: bool = False,
        num_blocks: int | None = None,
    ) -> dict:
        """The forward pass compiled for inference: jax.jit or tf.function with XLA, compiled
        once per set of outputs and `reductions` (and input shape); eager PyTorch under
        `torch.inference_mode()`. Returns the dict of `vitops.forward`, with
        out["reductions"] when reductions (a `vitops.analysis.Reductions`) is given; with
        num_blocks, only the first num_blocks blocks run (`vitops.forward`).
        images: (B, Y, X, 3) preprocessed, numpy or a backend tensor.

        A CLS rollout whose factors and block inputs do not fit `reductions.memory` is
        finished in a second pass after this one, from the last block down, one compiled call
        per segment of blocks: only every s-th block's input is kept, and each segment's
        blocks run again from it (inside one XLA program they would be merged with the first
        pass's).
        """
        if num_blocks is not None:  # checked before it keys the compiled version
            check_num_blocks(num_blocks, self.config)
        images = keras.ops.convert_to_tensor(images, self.compute_dtype)
        params = self._params()
        out = _compiled_inference(
            params,
            images,
            config=self.config,
            return_attention=bool(return_attention),
            return_hidden=bool(return_hidden),
            reductions=reductions,
            compute_dtype=self.compute_dtype,
            num_blocks=num_blocks,
        )
        carry = out.pop("rollout_carry", None)
        if carry is not None:
            depth = self.config.depth if num_blocks is None else num_blocks
            grid = check_images(images, self.config)
            out["reductions"]["rollout"] = self._rollout_segments(params, carry, reductions, grid, depth)
        return out

    def _rollout_segments(self, params, carry: dict, reductions, grid, depth: int):
        """The rollout's CLS row over the patches (B, N), carried down from `carry`
        (`Reductions.rollout_carry`) a segment at a time; each kept input is released once
        its segment is done."""
        inputs, row = carry.pop("inputs"), carry.pop("row")
        state = {**reductions.geometry(self.config, grid), "_store": False, "_inputs": inputs}
        for first, end in reductions.second_pass(state, depth):
            blocks = {}  # the segment's blocks, renumbered from 0: one program per length
            for i in range(first, end):
                old = f"blocks.{i}."
                blocks.update(
                    {f"blocks.{i - first}.{k[len(old) :]}": v for k, v in params.items() if k.startswith(old)}
                )
            row = _compiled_segment(
                blocks,
                inputs.pop(str(first)),
                row,
                config=self.config.replace(depth=end - first),
                reductions=reductions,
                grid=grid,
                compute_dtype=self.compute_dtype,
            )
        return row[:, self.config.num_prefix_tokens :]

    def get_config(self):
        return {"vit_config": self.config.to_json(), "name": self.name, "metadata": dict(self.metadata)}

    @classmethod
    def from_config(cls, config):
        return cls(
            ViTConfig.from_json(config["vit_config"]),
            name=config.get("name"),
            metadata=config.get("metadata"),
        )
