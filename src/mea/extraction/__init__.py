"""The attacks of Tramèr et al. 2016 ("Stealing Machine Learning Models via Prediction APIs") on
mea's classic-ML victims (mea.tabular): equation-solving, path-finding, Lowd-Meek and label-only
retraining, each a strategy object (mea.extraction.base) run through the black-box oracle.

`make_extraction("path-finding:incomplete", queries)` builds one by its command-line name.
"""

from __future__ import annotations

from mea.errors import ConfigError

EXTRACTION_STRATEGIES = ("equation-solving", "path-finding", "lowd-meek", "uniform", "line-search", "adaptive")
# Variants after a colon: path-finding's incomplete queries (features left out, BigML's API).
VARIANTS = {"path-finding": ("incomplete",)}


def is_extraction(name: str) -> bool:
    return name.partition(":")[0] in EXTRACTION_STRATEGIES


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
    from mea.extraction.equation_solving import EquationSolving
    from mea.extraction.lowd_meek import LowdMeek
    from mea.extraction.path_finding import PathFinding
    from mea.extraction.retraining import AdaptiveRetraining, LineSearchRetraining, UniformRetraining

    if base == "path-finding":
        return PathFinding(incomplete=variant == "incomplete")
    if base == "lowd-meek":
        return LowdMeek()
    kinds = {
        "equation-solving": EquationSolving,
        "uniform": UniformRetraining,
        "line-search": LineSearchRetraining,
        "adaptive": AdaptiveRetraining,
    }
    return kinds[base](queries=queries)
