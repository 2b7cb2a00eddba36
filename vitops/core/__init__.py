"""The model, read top to bottom:

config     ViTConfig: one model's architecture, validated on construction
variants   the named architectures of released checkpoints, and get_config
ops        the building blocks as pure keras.ops functions (layer norm, dense, MLP, attention)
posemb     position-embedding resampling, identical on every backend
vit        forward(params, config, images): the one forward pass every family shares
model      VisionTransformer: the thin keras.Model around it
"""
