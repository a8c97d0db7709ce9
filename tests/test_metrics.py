import math

import pytest
import torch

from mea.metrics import agreement, classification_metrics


def one_hot_logits(predictions: list[int]) -> torch.Tensor:
    logits = torch.full((len(predictions), 10), -10.0)
    logits[torch.arange(len(predictions)), torch.tensor(predictions)] = 10.0
    return logits


def test_metrics_match_a_hand_computed_case():
    # true:      0 0 1 1 2 ;  predicted: 0 1 1 1 2
    labels = torch.tensor([0, 0, 1, 1, 2])
    m = classification_metrics(one_hot_logits([0, 1, 1, 1, 2]), labels)
    assert m.accuracy == pytest.approx(4 / 5)
    # class 0: P=1, R=1/2; class 1: P=2/3, R=1; class 2: P=1, R=1; classes 3-9: 0 (no support).
    assert m.per_class["precision"][:3] == pytest.approx([1.0, 2 / 3, 1.0])
    assert m.per_class["recall"][:3] == pytest.approx([0.5, 1.0, 1.0])
    assert m.precision == pytest.approx((1 + 2 / 3 + 1) / 10)
    assert m.per_class["f1"][1] == pytest.approx(0.8)
    assert m.confusion_matrix[0][:3] == [1, 1, 0] and m.confusion_matrix[1][:3] == [0, 2, 0]
    assert sum(map(sum, m.confusion_matrix)) == 5
    # Cross-entropy from logits: exact even where a probability underflows.
    expected = torch.nn.functional.cross_entropy(one_hot_logits([0, 1, 1, 1, 2]).double(), labels).item()
    assert m.loss == pytest.approx(expected) and m.loss > 4 and math.isfinite(m.loss)


def test_agreement_is_top1_match():
    assert agreement(one_hot_logits([1, 2, 3, 4]), one_hot_logits([1, 2, 0, 4])) == pytest.approx(0.75)
