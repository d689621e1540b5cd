"""Errors users see: each names the file, key or value and says what was expected."""

from __future__ import annotations


class VfmAblateError(Exception):
    """Base class for errors caused by user input (config, data, checkpoints)."""


class ConfigError(VfmAblateError):
    """A sweep/trial file or an option failed validation."""


class DataError(VfmAblateError):
    """A dataset on disk is broken or inconsistent; the message names the file."""


class CheckpointError(VfmAblateError):
    """Pretrained weights could not be loaded as declared."""
