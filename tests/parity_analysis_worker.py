"""Run every analysis kernel on one backend over fixed inputs (used by test_parity.py).

usage: KERAS_BACKEND=<backend> python parity_analysis_worker.py INPUTS.npz OUT.npz
"""

import sys

import keras
import numpy as np

from vitops import analysis as A

inputs = dict(np.load(sys.argv[1]))
atts = [inputs[f"att{i}"] for i in range(4)]
np_ = keras.ops.convert_to_numpy
cka = A.MinibatchCKA()
cka.update([inputs["fa"], inputs["fb"]], [inputs["fb"], inputs["fc"]])
acc = A.AttentionDistance(16, grid=(3, 4))
acc.update(atts)
out = {
    "distance": np_(A.mean_attention_distance(atts[0], 16, grid=(3, 4))),
    "distance_stream": acc.result()["mean"],
    "rollout": np_(A.attention_rollout(atts, "max", 0.4)),
    "cls_rollout": np_(A.cls_rollout(atts, "mean", 0.2, grid=(3, 4))),
    "heatmaps": np_(A.attention_heatmaps(atts, grid=(3, 4))),
    "masks": np_(A.attention_heatmaps(atts, grid=(3, 4), threshold=0.6)).astype(np.float32),
    "linear_cka": np_(A.linear_cka(inputs["fa"], inputs["fb"])),
    "rbf_cka": np_(A.rbf_cka(inputs["fa"], inputs["fb"], 0.5, debiased=True)),
    "minibatch_cka": cka.result(),
    "position": np_(A.position_similarity(inputs["pos"])),
    "filters": np_(A.projection_filters(inputs["kernel"])),
    "cls_cos": np_(
        A.cls_trajectory([inputs["fa"].reshape(16, 3, 8)] * 2 + [inputs["fb"].reshape(16, 3, 8)])[1]
    ),
}
np.savez(sys.argv[2], backend=keras.config.backend(), **out)
