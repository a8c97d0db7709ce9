"""Classification metrics for victim and clone, and how faithfully a clone copies its victim.

Accuracy, precision, recall, F1 and the confusion matrix come from scikit-learn.  The loss is the
mean cross-entropy computed from logits (log-softmax), which stays exact for confident mistakes
where a loss computed from clipped probabilities would not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ClassificationMetrics:
    accuracy: float
    loss: float
    precision: float  # macro averages over the classes
    recall: float
    f1: float
    per_class: dict[str, list[float]]  # precision, recall, f1, support, index = class
    confusion_matrix: list[list[int]]  # rows: true class, columns: predicted class

    def to_dict(self) -> dict:
        return asdict(self)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> ClassificationMetrics:
    """Metrics of predictions (logits, shape (N, classes)) against true labels (N,)."""
    # Imported here: scikit-learn (with the scipy and pandas it pulls in) costs a second at start-up,
    # which a served victim, that never computes these, would pay on every start.
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    y_true = labels.numpy()
    y_pred = logits.argmax(1).numpy()
    classes = list(range(logits.shape[1]))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=classes, average=None, zero_division=0
    )
    return ClassificationMetrics(
        accuracy=float(accuracy_score(y_true, y_pred)),
        loss=float(F.cross_entropy(logits.double(), labels)),
        precision=float(np.mean(precision)),
        recall=float(np.mean(recall)),
        f1=float(np.mean(f1)),
        per_class={
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "f1": f1.tolist(),
            "support": support.tolist(),
        },
        confusion_matrix=confusion_matrix(y_true, y_pred, labels=classes).tolist(),
    )


def agreement(clone_logits: torch.Tensor, victim_logits: torch.Tensor) -> float:
    """Fidelity: the fraction of inputs on which clone and victim predict the same class."""
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(victim_logits.argmax(1).numpy(), clone_logits.argmax(1).numpy()))
