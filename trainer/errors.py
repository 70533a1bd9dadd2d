"""Exceptions raised by the trainer. The CLI turns any TrainerError into a one-line message."""


class TrainerError(Exception):
    """Root of every error the trainer raises on purpose."""


class ConfigError(TrainerError, ValueError):
    """A configuration file or override is invalid; the message names the key."""


class DataError(TrainerError):
    """A data set cannot be found, read or understood; the message names the file."""


class CheckpointError(TrainerError):
    """A checkpoint or run directory does not match what is being resumed."""
