"""Analysis kernels, vectorised in keras.ops: the same numbers on jax, torch and tensorflow.

Inputs are arrays of any backend (or numpy); outputs are backend tensors unless noted
(`keras.ops.convert_to_numpy` turns them into numpy). The gradient analyses (`gradient_rollout`,
`input_gradients`, `visualize_feature`) take a model and differentiate through it on every
backend. The streaming accumulators keep their
sums in float64 numpy.
"""

from .accumulate import Accumulator, Moments, load_states, save_states
from .cka import MinibatchCKA, linear_cka, rbf_cka
from .distance import AttentionDistance, distance_matrix, mean_attention_distance
from .embeddings import (
    cls_trajectory,
    cosine_to_final,
    position_similarity,
    projection_filters,
    reference_patches,
)
from .faithfulness import deletion_insertion
from .features import TopK, feature_activation_map, unit_activations, visualize_feature
from .gradients import gradient_rollout, input_gradients, integrated_gradients
from .heatmap import attention_heatmaps
from .norms import NormHistogram, lens_scores
from .pca import Covariance, feature_maps
from .reductions import Reductions
from .rollout import attention_rollout, cls_rollout
from .tokens import TOKEN_GROUPS, attention_mass

__all__ = [
    "distance_matrix",
    "mean_attention_distance",
    "AttentionDistance",
    "attention_rollout",
    "cls_rollout",
    "attention_heatmaps",
    "linear_cka",
    "rbf_cka",
    "MinibatchCKA",
    "position_similarity",
    "reference_patches",
    "projection_filters",
    "cls_trajectory",
    "cosine_to_final",
    "gradient_rollout",
    "input_gradients",
    "integrated_gradients",
    "deletion_insertion",
    "visualize_feature",
    "feature_activation_map",
    "unit_activations",
    "TopK",
    "Accumulator",
    "Moments",
    "save_states",
    "load_states",
    "Reductions",
    "attention_mass",
    "NormHistogram",
    "lens_scores",
    "Covariance",
    "feature_maps",
    "TOKEN_GROUPS",
]
