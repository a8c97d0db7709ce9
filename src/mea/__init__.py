"""mea: model extraction attacks and defenses, measured honestly."""

__version__ = "0.1.0"
