"""Train the two small models vitops ships, on scikit-learn's handwritten digits (offline).

    KERAS_BACKEND=torch python tools/train_digits.py

- digits_vit.safetensors: a supervised ViT (4 blocks, width 64, 2 heads, patch 4 on 32x32).
- digits_deit.safetensors: the same ViT with a distillation token, trained with DeiT's hard
  distillation (half the loss on the labels, half on a teacher's predicted class through the
  distillation head), the teacher a small CNN trained first.
- samples/*.png: held-out digits, the images `vitops analyze` runs on by default.

Data: load_digits' 1,797 8x8 images (values 0-16), split 80/20 stratified with a fixed seed;
upscaled to 32x32 RGB and preprocessed as the models' family ("vit": [-1, 1]). Training uses
Keras' own fit on the vitops Keras model, so this runs on any backend. It prints the held-out
accuracy of each model; tests/test_digits.py measures the shipped files again.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import keras
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import vitops
from vitops.preprocess import Preprocessing, normalize

# Where the shipped models and samples live: the package data folder.
HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "vitops", "_data")
SIZE, SEED = 32, 0
CONFIG = dict(
    image_size=SIZE, patch_size=4, dim=64, depth=4, num_heads=2, mlp_dim=128, num_classes=10, family="vit"
)
LABELS = [str(i) for i in range(10)]


def digits_uint8(images_8x8: np.ndarray) -> np.ndarray:
    """(N, 8, 8) values 0-16 -> (N, 32, 32, 3) uint8 RGB, bicubic, as a photo of the digit."""
    out = []
    for img in images_8x8:
        g = np.clip(img * (255.0 / 16.0), 0, 255).astype(np.uint8)
        g = cv2.resize(g, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
        out.append(np.repeat(g[..., None], 3, axis=-1))
    return np.stack(out)


def split():
    """The fixed held-out split: (x_train, y_train, x_test, y_test) as uint8 RGB and labels."""
    d = load_digits()
    x = digits_uint8(d.images)
    return train_test_split(x, d.target, test_size=0.2, random_state=SEED, stratify=d.target)


def model_input(x_uint8):
    return normalize(x_uint8, "vit")


def augment(x, rng):
    """Random shifts of up to 3 pixels: the digits' only cheap, label-preserving augmentation."""
    out = np.empty_like(x)
    for i, img in enumerate(x):
        dy, dx = rng.integers(-3, 4, size=2)
        m = np.float32([[1, 0, dx], [0, 1, dy]])
        out[i] = cv2.warpAffine(img, m, (SIZE, SIZE), borderMode=cv2.BORDER_CONSTANT, borderValue=-1.0)
    return out


class AugmentedDigits(keras.utils.PyDataset):
    def __init__(self, x, y, batch_size=64, seed=SEED, **kw):
        super().__init__(**kw)
        self.x, self.y, self.batch_size = x, y, batch_size
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(x))

    def __len__(self):
        return int(np.ceil(len(self.x) / self.batch_size))

    def __getitem__(self, i):
        idx = self.order[i * self.batch_size : (i + 1) * self.batch_size]
        return augment(self.x[idx], self.rng), self.y[idx]

    def on_epoch_end(self):
        self.order = self.rng.permutation(len(self.x))


def schedule(epochs, steps, lr=2e-3):
    return keras.optimizers.schedules.CosineDecay(
        lr * 0.1, epochs * steps, warmup_target=lr, warmup_steps=steps * 3
    )


def train_teacher(x, y, epochs):
    teacher = keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 3)),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10),
        ]
    )
    data = AugmentedDigits(x, y)
    teacher.compile(
        keras.optimizers.Adam(schedule(epochs, len(data))),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    teacher.fit(data, epochs=epochs, verbose=2)
    return teacher


class DistillationView(keras.Model):
    """The distilled ViT during training: both heads' logits, stacked (B, 2, classes)."""

    def __init__(self, vit, **kw):
        super().__init__(**kw)
        self.vit = vit

    def call(self, x):
        out = self.vit(x, return_dict=True)
        return keras.ops.stack([out["logits_cls"], out["logits_dist"]], axis=1)


class DistillationData(AugmentedDigits):
    """Targets (B, 2): the label for the class head, the teacher's class for the dist head."""

    def __init__(self, x, y, teacher, **kw):
        super().__init__(x, y, **kw)
        self.teacher = teacher

    def __getitem__(self, i):
        xb, yb = super().__getitem__(i)
        hard = np.argmax(keras.ops.convert_to_numpy(self.teacher(xb)), axis=-1)
        return xb, np.stack([yb, hard], axis=1)


def train_vit(x, y, epochs, teacher=None):
    config = vitops.ViTConfig(
        distilled=teacher is not None, name="digits_deit" if teacher is not None else "digits_vit", **CONFIG
    )
    vit = vitops.VisionTransformer(config)
    if teacher is None:
        model, data = vit, AugmentedDigits(x, y)
    else:
        model, data = DistillationView(vit), DistillationData(x, y, teacher)
    model.compile(
        keras.optimizers.AdamW(schedule(epochs, len(data)), weight_decay=0.05),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(data, epochs=epochs, verbose=2)
    return vit


def accuracy(model, x, y) -> float:
    logits = keras.ops.convert_to_numpy(model.predict(x, batch_size=256, verbose=0))
    return float(np.mean(np.argmax(logits, axis=-1) == y))


def main():
    keras.utils.set_random_seed(SEED)
    x_train_u8, x_test_u8, y_train, y_test = split()
    x_train, x_test = model_input(x_train_u8), model_input(x_test_u8)
    epochs = int(os.environ.get("DIGITS_EPOCHS", "60"))

    provenance = {
        "source_format": "vitops-trained",
        "training": f"tools/train_digits.py, sklearn load_digits, seed {SEED}, {epochs} epochs",
    }
    # The digits are 32x32 already: no crop; Google ViT's normalisation to [-1, 1].
    preprocessing = Preprocessing(
        size=32, crop_pct=1.0, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3
    )
    vit = train_vit(x_train, y_train, epochs)
    vit_acc = accuracy(vit, x_test, y_test)
    teacher = train_teacher(x_train, y_train, epochs=30)
    teacher_acc = accuracy(teacher, x_test, y_test)
    deit = train_vit(x_train, y_train, epochs, teacher=teacher)
    deit_acc = accuracy(deit, x_test, y_test)
    for model, acc in ((vit, vit_acc), (deit, deit_acc)):
        vitops.save(
            os.path.join(HERE, f"{model.config.name}.safetensors"),
            model.get_params(),
            model.config,
            {**provenance, "heldout_accuracy": f"{acc:.4f}"},
            labels=list(LABELS),
            preprocessing=preprocessing,
        )
    os.makedirs(os.path.join(HERE, "samples"), exist_ok=True)
    for i in range(8):  # held-out digits, one of each of the first eight classes
        j = int(np.flatnonzero(y_test == i)[0])
        cv2.imwrite(
            os.path.join(HERE, "samples", f"digit_{i}.png"), cv2.cvtColor(x_test_u8[j], cv2.COLOR_RGB2BGR)
        )
    print(
        f"held-out accuracy ({len(y_test)} images): ViT {vit_acc:.4f}, CNN teacher {teacher_acc:.4f}, "
        f"DeiT distilled {deit_acc:.4f}"
    )


if __name__ == "__main__":
    main()
