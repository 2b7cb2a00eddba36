"""Quickstart: make a timm checkpoint, convert it, load it on any backend, look inside.

No model hub is needed: timm creates ViT-S/16 with random weights (so the predictions are
arbitrary), saved exactly as timm's hub files are. With a real checkpoint the steps are the same.

    KERAS_BACKEND=jax python examples/quickstart.py
"""

# isort: off
# first: PyTorch and the torch._dynamo / triton modules timm loads crash in a process that
# loaded TensorFlow before them (KERAS_BACKEND=tensorflow)
import torch
import timm
# isort: on

import os
import tempfile

import keras
import matplotlib.cbook
import numpy as np
from safetensors.torch import save_file
from timm.data import ImageNetInfo

import vitops
from vitops.preprocess import Preprocessing, preprocess

# The two checkpoint files (about 88 MB each) exist only inside this block: loading reads
# the weights into the model, so nothing is left behind in the temporary folder.
with tempfile.TemporaryDirectory(prefix="vitops-quickstart-") as workdir:
    src = os.path.join(workdir, "vit_small_patch16_224.safetensors")
    dst = os.path.join(workdir, "vit_s16.vitops.safetensors")

    # 1. A timm checkpoint, as found on the hub (here with random weights: no network needed).
    torch.manual_seed(0)
    save_file(timm.create_model("vit_small_patch16_224", pretrained=False).state_dict(), src)

    # 2. Convert once (same as: vitops convert SRC DST --arch vit_small_patch16_224).
    config = vitops.convert(src, dst, arch="vit_small_patch16_224")
    print(f"converted {config.name}: {config.depth} blocks, {config.num_heads} heads, dim {config.dim}")

    # 3. Load on the backend KERAS_BACKEND names.
    model = vitops.load(dst)

# 4. Run a real photograph through it.
photo = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
# the eval transform the converted file records (timm's pretrained config: crop 0.9, [-1, 1])
images = preprocess(
    [photo], preprocessing=Preprocessing.for_model(model.config, model.metadata)
)  # (1, 224, 224, 3)
out = model(images, return_attention=True, return_hidden=True)

probs = keras.ops.convert_to_numpy(keras.ops.softmax(out["logits"]))[0]
names = ImageNetInfo()
print(f"backend: {keras.config.backend()}")
print("top-5 predictions (random weights, so arbitrary):")
for i in np.argsort(probs)[::-1][:5]:
    print(f"  {probs[i]:.4f}  {names.index_to_description(int(i))}")
print(f"attention: {len(out['attention'])} blocks of shape {tuple(out['attention'][0].shape)}")
print(f"hidden states: {len(out['hidden'])} of shape {tuple(out['hidden'][0].shape)}")
