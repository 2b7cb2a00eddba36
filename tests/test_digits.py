"""The shipped digits models: held-out accuracy of the files as shipped, and linear probing."""

import keras
import numpy as np
import pytest

import vitops
from tools.train_digits import model_input, split


@pytest.fixture(scope="module")
def heldout():
    x_train, x_test, y_train, y_test = split()
    return model_input(x_train), y_train, model_input(x_test), y_test


@pytest.mark.parametrize("name,minimum", [("digits_vit", 0.95), ("digits_deit", 0.96)])
def test_shipped_models_accuracy(heldout, name, minimum):
    _, _, x, y = heldout
    model = vitops.load(name)
    assert model.config.distilled == (name == "digits_deit")
    pred = np.argmax(keras.ops.convert_to_numpy(model.predict(x, batch_size=128, verbose=0)), -1)
    accuracy = float(np.mean(pred == y))
    assert accuracy >= minimum, f"{name}: {accuracy:.4f} on {len(y)} held-out digits"
    assert abs(accuracy - float(model.metadata["heldout_accuracy"])) < 0.01


class LinearProbe(keras.Model):
    """A frozen vitops backbone and a new linear head (the tutorials' fine-tuning recipe)."""

    def __init__(self, backbone, classes, **kw):
        super().__init__(**kw)
        self.backbone = backbone
        self.backbone.trainable = False
        self.head = keras.layers.Dense(classes)

    def call(self, x):
        return self.head(self.backbone(x, return_dict=True)["features"])


def test_linear_probe_trains_only_the_head(heldout):
    x_train, y_train, x_test, y_test = heldout
    keras.utils.set_random_seed(0)
    backbone = vitops.load("digits_deit")
    before = backbone.get_params()
    probe = LinearProbe(backbone, 10)
    probe.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    probe.fit(x_train, y_train, epochs=3, batch_size=64, verbose=0)
    assert len(probe.trainable_weights) == 2  # kernel and bias of the new head
    after = backbone.get_params()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])
    accuracy = probe.evaluate(x_test, y_test, verbose=0)[1]
    assert accuracy >= 0.9


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "bfloat16"])
def test_bfloat16_keeps_the_top1_class(heldout, policy):
    _, _, x, _ = heldout
    for name in ("digits_vit", "digits_deit"):
        full = np.argmax(
            keras.ops.convert_to_numpy(vitops.load(name).predict(x, batch_size=128, verbose=0)), -1
        )
        half_model = vitops.load(name, dtype=policy)
        assert half_model.compute_dtype == "bfloat16"
        half = keras.ops.convert_to_numpy(half_model.predict(x, batch_size=128, verbose=0))
        agreement = float(np.mean(np.argmax(half.astype(np.float32), -1) == full))
        assert agreement >= 0.99, f"{name} under {policy}: top-1 agrees on {agreement:.4f}"
