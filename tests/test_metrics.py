import math

import numpy as np
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
    # The loss by hand: logits +10 for the predicted class and -10 elsewhere, so a right row costs
    # -log(e^10 / (e^10 + 9 e^-10)) = log(1 + 9 e^-20) and a wrong one 20 more; four right, one wrong.
    assert m.loss == pytest.approx(4 + math.log1p(9 * math.exp(-20)), rel=1e-12)


def test_loss_is_the_mean_cross_entropy_even_where_a_probability_underflows():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=5.0, size=(50, 10)).astype(np.float32)
    labels = rng.integers(0, 10, size=50)
    # A confident mistake: the true class is 200 below the top, a probability of e^-200, which is 0 in
    # float32; a loss computed from clipped probabilities would be far below the true 200 / 50 = 4.
    logits[0] = 0.0
    logits[0, (labels[0] + 1) % 10] = 200.0
    # Independently of torch: log-sum-exp in float64 numpy, minus the true class's logit, averaged.
    wide = logits.astype(np.float64)
    top = wide.max(axis=1)
    log_normaliser = top + np.log(np.exp(wide - top[:, None]).sum(axis=1))
    expected = float(np.mean(log_normaliser - wide[np.arange(50), labels]))
    loss = classification_metrics(torch.from_numpy(logits), torch.from_numpy(labels)).loss
    assert loss == pytest.approx(expected, rel=1e-9) and expected > 4


def test_agreement_is_top1_match():
    assert agreement(one_hot_logits([1, 2, 3, 4]), one_hot_logits([1, 2, 0, 4])) == pytest.approx(0.75)
