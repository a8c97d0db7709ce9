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


class Refused(MeaError):
    """The service stopped answering this client (its stream was judged an attack).

    `answers` holds the answers to the leading images of the refused call that did get through.
    """

    def __init__(self, message: str, answers=None) -> None:
        super().__init__(message)
        self.answers = answers
