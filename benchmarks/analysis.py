"""Analysis kernels vs the keras-io example's numpy code, on the same inputs. Prints JSON.

Inputs as for ViT-B/16 at 224 px: 12 blocks, 12 heads, 197 tokens, batch 8 (random softmax
attention), and 13 layers x 512 examples x 768 features for CKA. The baselines are the
example's own functions (its distance matrix double loop, recomputed per block; its per-image
rollout with a numpy matmul loop; its feature-space linear CKA called pair by pair), copied
below as they are written there (the rollout also as an all-numpy port, a stronger baseline). Each
timing is the median of --repeats runs after a warm-up. For the rollout it also prints the time of
one plain read of the attention tensors (a compiled sum) and the speedup that read allows.

    KERAS_BACKEND=jax python benchmarks/analysis.py
"""

from timing import environment, interleaved  # before Keras: torch first (see timing)

import argparse
import json

import keras
import numpy as np

from vitops import analysis
from vitops.backend.compile import compiled

# ---- the keras-io example's code ("Investigating Vision Transformer representations") ----


def example_compute_distance_matrix(patch_size, num_patches, length):
    distance_matrix = np.zeros((num_patches, num_patches))
    for i in range(num_patches):
        for j in range(num_patches):
            if i == j:
                continue
            xi, yi = (int(i / length)), (i % length)
            xj, yj = (int(j / length)), (j % length)
            distance_matrix[i, j] = patch_size * np.linalg.norm([xi - xj, yi - yj])
    return distance_matrix


def example_compute_mean_attention_dist(patch_size, attention_weights, num_cls_tokens=1):
    attention_weights = attention_weights[..., num_cls_tokens:, num_cls_tokens:]
    num_patches = attention_weights.shape[-1]
    length = int(np.sqrt(num_patches))
    distance_matrix = example_compute_distance_matrix(patch_size, num_patches, length)
    h, w = distance_matrix.shape
    distance_matrix = distance_matrix.reshape((1, 1, h, w))
    mean_distances = attention_weights * distance_matrix
    mean_distances = np.sum(mean_distances, axis=-1)
    mean_distances = np.mean(mean_distances, axis=-1)
    return mean_distances


def example_rollout_cls(attention_score_dict, num_cls_tokens=1):
    """attention_rollout_map as published (Keras ops, then a numpy loop), without the final
    image overlay: one image's dict of (1, H, T, T) blocks."""
    from keras import ops

    attn_mat = ops.stack([attention_score_dict[k] for k in attention_score_dict])
    attn_mat = ops.squeeze(attn_mat, axis=1)
    attn_mat = ops.mean(attn_mat, axis=1)
    residual_attn = ops.eye(attn_mat.shape[1])
    aug_attn_mat = attn_mat + residual_attn
    aug_attn_mat = aug_attn_mat / ops.sum(aug_attn_mat, axis=-1)[..., None]
    aug_attn_mat = ops.convert_to_numpy(aug_attn_mat)
    joint_attentions = np.zeros(aug_attn_mat.shape)
    joint_attentions[0] = aug_attn_mat[0]
    for n in range(1, aug_attn_mat.shape[0]):
        joint_attentions[n] = np.matmul(aug_attn_mat[n], joint_attentions[n - 1])
    v = joint_attentions[-1]
    grid_size = int(np.sqrt(aug_attn_mat.shape[-1]))
    return v[0, num_cls_tokens:].reshape(grid_size, grid_size)


def example_rollout_cls_numpy(attention_blocks, num_cls_tokens=1):
    """The same steps with numpy in place of the Keras ops: a stronger baseline."""
    attn_mat = np.stack(attention_blocks)
    attn_mat = np.squeeze(attn_mat, axis=1)
    attn_mat = np.mean(attn_mat, axis=1)
    residual_attn = np.eye(attn_mat.shape[1])
    aug_attn_mat = attn_mat + residual_attn
    aug_attn_mat = aug_attn_mat / np.sum(aug_attn_mat, axis=-1)[..., None]
    joint_attentions = np.zeros(aug_attn_mat.shape)
    joint_attentions[0] = aug_attn_mat[0]
    for n in range(1, aug_attn_mat.shape[0]):
        joint_attentions[n] = np.matmul(aug_attn_mat[n], joint_attentions[n - 1])
    v = joint_attentions[-1]
    grid_size = int(np.sqrt(aug_attn_mat.shape[-1]))
    return v[0, num_cls_tokens:].reshape(grid_size, grid_size)


def example_calculate_cka_similarity(feat1, feat2):
    feat1 = feat1 - np.mean(feat1, axis=0)
    feat2 = feat2 - np.mean(feat2, axis=0)
    dot_prod_matrix = np.linalg.norm(np.dot(feat1.T, feat2)) ** 2
    norm_feat1 = np.linalg.norm(np.dot(feat1.T, feat1))
    norm_feat2 = np.linalg.norm(np.dot(feat2.T, feat2))
    return dot_prod_matrix / (norm_feat1 * norm_feat2)


# ---- harness ----


@compiled
def read_all(blocks):
    """Sum every attention entry: one read of the inputs, the least any CLS rollout can do."""
    return sum(keras.ops.sum(a) for a in blocks)


def median_times_interleaved(fns, repeats):
    """Median seconds of each function, timed round by round (so drift hits them alike)."""
    times = interleaved(dict(enumerate(fns)), repeats, warmups=1)
    return [float(np.median(ts)) for ts in times.values()]


def median_time(fn, repeats):
    return median_times_interleaved([fn], repeats)[0]


def sync(x):
    """Materialise a backend result on the host (all backends run asynchronously or lazily)."""
    return keras.ops.convert_to_numpy(x)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--blocks", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--tokens", type=int, default=197)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--features", type=int, default=768)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    logits = 2.0 * rng.standard_normal((args.blocks, args.batch, args.heads, args.tokens, args.tokens))
    att = np.exp(logits - logits.max(-1, keepdims=True)).astype(np.float32)
    att /= att.sum(-1, keepdims=True)
    blocks_np = list(att)
    blocks = [keras.ops.convert_to_tensor(a) for a in blocks_np]  # what a model returns
    layers = args.blocks + 1
    feats_np = [rng.standard_normal((args.examples, args.features)).astype(np.float32) for _ in range(layers)]
    feats = [keras.ops.convert_to_tensor(f) for f in feats_np]

    results = {}

    def record(name, ours, theirs, check, numpy_port=None, t_ours=None):
        t_ours = median_time(ours, args.repeats) if t_ours is None else t_ours
        t_theirs = median_time(theirs, max(1, args.repeats // 2))
        results[name] = {
            "vitops_s": t_ours,
            "example_s": t_theirs,
            "speedup": t_theirs / t_ours,
            "max_abs_diff": check,
        }
        if numpy_port is not None:
            t_np = median_time(numpy_port, max(1, args.repeats // 2))
            results[name].update(example_numpy_s=t_np, speedup_vs_numpy=t_np / t_ours)

    # mean attention distance, every block
    ours = lambda: [sync(analysis.mean_attention_distance(a, 16)) for a in blocks]
    theirs = lambda: [example_compute_mean_attention_dist(16, a) for a in blocks_np]
    diff = max(float(np.abs(o - t).max()) for o, t in zip(ours(), theirs()))
    record("mean_attention_distance", ours, theirs, diff)

    # CLS attention rollout, every image of the batch
    ours = lambda: sync(analysis.cls_rollout(blocks))
    theirs = lambda: np.stack(
        [
            example_rollout_cls({f"block_{b}": a[i : i + 1] for b, a in enumerate(blocks)})
            for i in range(args.batch)
        ]
    )
    port = lambda: np.stack(
        [example_rollout_cls_numpy([a[i : i + 1] for a in blocks_np]) for i in range(args.batch)]
    )
    # The bound: every attention entry must be read once (all but the last block's non-CLS
    # rows). A plain sum over the same tensors, the same way, is that read; timed round by
    # round with vitops' rollout.
    t_ours, t_read = median_times_interleaved([ours, lambda: sync(read_all(blocks))], args.repeats)
    record(
        "cls_rollout", ours, theirs, float(np.abs(ours() - theirs()).max()), numpy_port=port, t_ours=t_ours
    )
    results["cls_rollout"].update(
        read_once_s=t_read,
        vitops_over_read=t_ours / t_read,
        speedup_bound=results["cls_rollout"]["example_s"] / t_read,
    )

    # 13 x 13 layer CKA matrix over 512 examples
    def ours():
        cka = analysis.MinibatchCKA()
        cka.update(feats)
        return cka.result()

    theirs = lambda: np.array([[example_calculate_cka_similarity(a, b) for b in feats_np] for a in feats_np])
    # ours is the unbiased (debiased) estimator, the example's the biased one: report both values
    o, t = ours(), theirs()
    record("cka_matrix", ours, theirs, float(np.abs(o - t).max()))
    results["cka_matrix"]["note"] = (
        "vitops: minibatch (unbiased HSIC) CKA, all pairs in one matmul; "
        "example: biased feature-space CKA pair by pair; on independent "
        "random features the two estimators differ by design"
    )

    print(
        json.dumps(
            {
                "benchmark": "analysis_kernels",
                "backend": keras.config.backend(),
                **environment(),
                "shapes": {
                    "blocks": args.blocks,
                    "heads": args.heads,
                    "tokens": args.tokens,
                    "batch": args.batch,
                    "cka_layers": layers,
                    "cka_examples": args.examples,
                    "cka_features": args.features,
                },
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
