"""One step of feature visualisation on the shipped digits ViT, on one backend (used by
test_features.py).

usage: KERAS_BACKEND=<backend> python parity_features_worker.py OUT.npz
"""

import sys

import keras
import numpy as np

import vitops
from vitops.analysis.features import visualize_feature

model = vitops.load("digits_vit")
start, _ = visualize_feature(model, 2, [5, 40, 77], steps=0, seed=0)
step, activation = visualize_feature(model, 2, [5, 40, 77], steps=1, seed=0)
np.savez(sys.argv[1], backend=keras.config.backend(), start=start, step=step, activation=activation)
