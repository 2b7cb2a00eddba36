"""vitops inside programs that are not Keras: a torch.nn.Module trained by a PyTorch optimiser,
and a pure function of a params dict under jax.jit and jax.grad."""

import sys

import keras
import numpy as np
import pytest
from conftest import BACKEND
from helpers.timm_reference import TINY, rel_err, timm_outputs, timm_twin

import vitops


@pytest.fixture
def vit_file(tmp_path):
    return timm_twin(tmp_path, "vit_small_patch16_224", **TINY, num_classes=4)


@pytest.mark.skipif(BACKEND != "torch", reason="torch backend only")
def test_torch_module_trains_with_a_torch_optimizer(vit_file):
    import torch

    _, path = vit_file
    model = vitops.load(path)
    assert isinstance(model, torch.nn.Module)
    params = list(model.parameters())
    assert len(params) == len(vitops.param_shapes(model.config))
    assert sum(p.numel() for p in params) == sum(
        int(np.prod(s)) for s in vitops.param_shapes(model.config).values()
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 64, 64, 3, generator=g)
    y = torch.randint(0, 4, (8,), generator=g)
    before = model.variables_by_key["blocks.0.attn.qkv.kernel"].value.detach().clone()
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    after = model.variables_by_key["blocks.0.attn.qkv.kernel"].value.detach()
    assert not torch.equal(before, after)


@pytest.mark.skipif(BACKEND != "jax", reason="jax backend only")
def test_jax_jit_and_grad_of_the_pure_forward(vit_file):
    import jax
    import jax.numpy as jnp

    ref, path = vit_file
    params, config = vitops.load_params(path)
    params = {k: jnp.asarray(v) for k, v in params.items()}
    images = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
    logits = jax.jit(lambda p, x: vitops.forward(p, config, x)["logits"])(params, images)
    assert rel_err(np.asarray(logits), timm_outputs(ref, images)["output"]) <= 1e-4

    labels = jnp.array([1, 3])

    def loss_fn(p, x):
        logp = jax.nn.log_softmax(vitops.forward(p, config, x)["logits"])
        return -jnp.take_along_axis(logp, labels[:, None], axis=1).mean()

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params, images)
    assert set(grads) == set(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads.values())
    # the gradient is the real one: a small step along it lowers the loss
    stepped = jax.tree_util.tree_map(lambda p, g: p - 1e-2 * g, params, grads)
    assert loss_fn(stepped, images) < loss
    # and it matches a finite difference along one coordinate of one tensor
    key, eps = "blocks.1.mlp.fc2.bias", 1e-2
    bump = params[key].at[0].add(eps)
    fd = (
        loss_fn({**params, key: bump}, images) - loss_fn({**params, key: params[key].at[0].add(-eps)}, images)
    ) / (2 * eps)
    assert abs(float(fd) - float(grads[key][0])) <= 1e-3 + 1e-2 * abs(float(fd))


def test_keras_fit_trains(vit_file):
    _, path = vit_file
    model = vitops.load(path)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((16, 64, 64, 3)).astype(np.float32)
    y = rng.integers(0, 4, 16)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    hist = model.fit(x, y, epochs=8, batch_size=8, verbose=0)
    assert hist.history["loss"][-1] < 0.6 * hist.history["loss"][0]


def test_vitops_imports_no_framework_of_its_own():
    # Keras imports the backend it runs on (and TensorFlow pulls in jax when installed);
    # vitops itself must add none: no module of the library imports a framework at top level.
    import os
    import subprocess

    code = (
        "import sys, keras; fw = ('jax', 'torch', 'tensorflow'); "
        "before = {m for m in fw if m in sys.modules}; import vitops; "
        "print(sorted({m for m in fw if m in sys.modules} - before))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "KERAS_BACKEND": BACKEND},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
