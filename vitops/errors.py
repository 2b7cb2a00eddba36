"""vitops' errors: one base class, one subclass per concern.

Every reader of outside input (weight files, checkpoints, configs, images, downloads, saved
analysis states) raises one of these, with a message that names the file and the problem. The
CLI turns each into one line and exit code 2; anything else is an internal error.
The subclasses keep the builtin base callers already catch (ValueError, RuntimeError).
"""

from __future__ import annotations


class VitopsError(Exception):
    """Base class of every error vitops raises on purpose."""


class ConfigError(VitopsError, ValueError):
    """An architecture config that is not a valid ViT (wrong type, out of range, unknown field)."""


class WeightFileError(VitopsError, ValueError):
    """A weight file that cannot be read, or whose tensors do not fit its config."""


class ConversionError(VitopsError, ValueError):
    """A checkpoint that cannot be converted; the message names what is wrong."""


class HubError(VitopsError, RuntimeError):
    """A download, checksum or cache problem; the message says what and where."""


class ImageError(VitopsError, ValueError):
    """An image that cannot be read or used; the message names it."""


class AnalysisError(VitopsError, ValueError):
    """Analysis input or state that cannot be used: incompatible states to merge, bad settings."""


class BackendError(VitopsError, RuntimeError):
    """No usable Keras backend, or an option the active backend does not support."""


__all__ = ["VitopsError", "ConfigError", "WeightFileError", "ConversionError", "HubError",
           "ImageError", "AnalysisError", "BackendError"]
