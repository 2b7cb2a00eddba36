"""Data shipped with vitops: the registry of known checkpoints (registry.json), the two digits
models vitops trains itself (tools/train_digits.py) with held-out sample digits, and ImageNet-1k's
class names."""
