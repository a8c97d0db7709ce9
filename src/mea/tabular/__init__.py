"""Classic-ML victims: logistic and softmax regressions, one-vs-rest, one-hidden-layer MLPs, decision
trees and forests, on tabular features or flattened images (the victims of Tramèr et al. 2016,
"Stealing Machine Learning Models via Prediction APIs", USENIX Security).

They are trained with scikit-learn, stored as parameters in safetensors (never pickle), and run as
torch modules in float64 (as scikit-learn computes), so that the oracle, the defense and the
service treat them as they treat the image victim.
"""

# Names the command line checks before anything heavy is imported (no numpy, no torch here).
CLASSIC_ARCHS = ("logreg", "softmax", "ovr", "mlp", "tree", "forest")
TABULAR_DATASETS = ("digits", "breast-cancer", "iris", "wine")
CSV_PREFIX = "csv:"
IMAGE_DATASETS = ("mnist",)  # image tasks a classic victim reads as flat pixel vectors


def is_tabular(name: str) -> bool:
    """A tabular task's name: built in, or csv:PATH."""
    return name in TABULAR_DATASETS or name.startswith(CSV_PREFIX)


def is_classic(arch: str, dataset: str, hidden: int | None = None, activation: str | None = None) -> bool:
    """Whether `train-victim --arch ARCH` means a scikit-learn victim.  `mlp` names both mea's image
    MLP and the one-hidden-layer scikit-learn MLP: on a tabular task, or with `--hidden` or
    `--activation`, the latter; on images otherwise the former, as before the classic victims."""
    if arch not in CLASSIC_ARCHS:
        return False
    return arch != "mlp" or is_tabular(dataset) or hidden is not None or activation is not None
