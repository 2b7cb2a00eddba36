"""Run one vitops model on one backend and save its outputs (used by test_parity.py).

usage: KERAS_BACKEND=<backend> python parity_worker.py MODEL.safetensors IMAGES.npy OUT.npz [pos_interp]
"""

import sys

import keras
import numpy as np

import vitops

model_path, images_path, out_path = sys.argv[1:4]
overrides = {"pos_interp": sys.argv[4]} if len(sys.argv) > 4 else {}
model = vitops.load(model_path, **overrides)
images = np.load(images_path)
out = model(images, return_attention=True, return_hidden=True)
arrays = {
    "output": keras.ops.convert_to_numpy(out.get("logits", out["features"])),
    "features": keras.ops.convert_to_numpy(out["features"]),
    "fused": keras.ops.convert_to_numpy(model.predict_on_batch(images)),
}
arrays.update({f"attention{i}": keras.ops.convert_to_numpy(a) for i, a in enumerate(out["attention"])})
arrays.update({f"hidden{i}": keras.ops.convert_to_numpy(h) for i, h in enumerate(out["hidden"])})
np.savez(out_path, backend=keras.config.backend(), **arrays)
