"""Errors the user can act on. Each names the file, key or camera at fault."""

from __future__ import annotations


class DsanetError(Exception):
    """Base class for errors that are reported to the user as one clear line (no traceback)."""


class ClipLoadError(DsanetError):
    """A CLIP weights directory is missing, incomplete or not in Hugging Face layout."""


class BundleError(DsanetError):
    """A model bundle is missing, damaged or inconsistent."""


class RuntimeUnavailable(DsanetError):
    """An inference runtime cannot be used on this machine (package or device missing)."""


class InputError(DsanetError):
    """Input to a model has the wrong shape, width or batch size."""


class DataError(DsanetError):
    """A data set file (list CSV, feature .npy, annotation, ground truth, video) is missing or malformed."""


class CheckpointError(DsanetError):
    """A training checkpoint is missing, damaged, or belongs to another preset, shape or CLIP."""


class RuntimeFailure(DsanetError):
    """The command's input was fine but the work failed (an exporter crash, a failed parity check, a
    diverged training run): ``dsanet`` exits 1 for these and 2 for every other ``DsanetError``."""
