"""Errors a user can fix.  The CLI prints them as one line, without a traceback."""


class MeaError(Exception):
    """A mistake in what the user asked for or provided; the message names the problem and the fix."""


class DataError(MeaError):
    """A dataset is missing, damaged or cannot be fetched."""


class ConfigError(MeaError):
    """A configuration value is invalid."""


class BudgetExhausted(MeaError):
    """The oracle's query budget would be exceeded by the requested queries."""


class ArtifactError(MeaError):
    """A run directory (victim, defense, attack) is missing, incomplete or mismatched."""
