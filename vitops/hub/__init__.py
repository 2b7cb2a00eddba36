"""Models by name: the registry of released checkpoints, the download cache, the models vitops
ships, and `load`, the one place that tells a file, a shipped name and a registry name apart.

    registry   registry.json read and checked entry by entry
    cache      download once, verify, convert, cache; later loads are offline
    download   plain URLs and Hugging Face hub files into a folder the caller owns
    shipped    the digits models and sample images inside the package
    load       vitops.load: a model from a file, a shipped name or a registry name
"""

from .cache import cached_path, fetch, home, registry, verify_cached

__all__ = ["fetch", "registry", "home", "cached_path", "verify_cached"]
