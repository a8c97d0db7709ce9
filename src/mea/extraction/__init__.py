"""The attacks of Tramèr et al. 2016 ("Stealing Machine Learning Models via Prediction APIs") on
mea's classic-ML victims (mea.tabular): equation-solving, path-finding, Lowd-Meek and label-only
retraining, and the functionally-equivalent extraction of a ReLU MLP (Jagielski et al. 2020), each a
strategy object (mea.extraction.base) run through the black-box oracle.

`mea.extraction.registry.make_extraction("path-finding:incomplete", queries)` builds one by its
command-line name; this module only names them (the command line reads it without numpy or torch).
"""

from __future__ import annotations

EXTRACTION_STRATEGIES = (
    "equation-solving",
    "functionally-equivalent",
    "path-finding",
    "lowd-meek",
    "uniform",
    "line-search",
    "adaptive",
)
# Variants after a colon: path-finding's incomplete queries (features left out, BigML's API).
VARIANTS = {"path-finding": ("incomplete",)}


def is_extraction(name: str) -> bool:
    return name.partition(":")[0] in EXTRACTION_STRATEGIES
