"""Tramèr et al. 2016's attacks by name: the one table that imports every one of them."""

from __future__ import annotations

from mea.errors import ConfigError
from mea.extraction import EXTRACTION_STRATEGIES, VARIANTS
from mea.extraction.equation_solving import EquationSolving
from mea.extraction.functionally_equivalent import FunctionallyEquivalent
from mea.extraction.lowd_meek import LowdMeek
from mea.extraction.path_finding import PathFinding
from mea.extraction.retraining import AdaptiveRetraining, LineSearchRetraining, UniformRetraining


def make_extraction(name: str, queries: int | None = None):
    """The strategy named `name` (with its variant), spending `queries` (None: what it needs)."""
    base, _, variant = name.partition(":")
    if base not in EXTRACTION_STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; the classic-ML attacks: {', '.join(EXTRACTION_STRATEGIES)}")
    if variant and variant not in VARIANTS.get(base, ()):
        allowed = VARIANTS.get(base)
        raise ConfigError(
            f"{base} has no variant {variant!r}" + (f"; use {base}:{allowed[0]}" if allowed else "; drop ':'")
        )
    if base == "path-finding":
        return PathFinding(incomplete=variant == "incomplete")
    if base == "lowd-meek":
        return LowdMeek()
    if base == "functionally-equivalent":
        return FunctionallyEquivalent()
    kinds = {
        "equation-solving": EquationSolving,
        "uniform": UniformRetraining,
        "line-search": LineSearchRetraining,
        "adaptive": AdaptiveRetraining,
    }
    return kinds[base](queries=queries)
