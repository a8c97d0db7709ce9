import pytest
import torch

from mea.errors import BudgetExhausted, ConfigError
from mea.models import build
from mea.oracle import Label, Probabilities, Rounded, TopK, VictimOracle, parse_output


@pytest.fixture
def model():
    return build("lenet5", seed=1)


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


PROBS = torch.tensor(
    [[0.5, 0.2, 0.1, 0.1, 0.05, 0.05, 0, 0, 0, 0], [0.01, 0.02, 0.03, 0.04, 0.1, 0.1, 0.1, 0.2, 0.15, 0.25]]
)


def test_output_modes_shape_answers():
    assert torch.equal(Probabilities()(PROBS), PROBS)
    top2 = TopK(2)(PROBS)
    assert (top2 > 0).sum(1).tolist() == [2, 2]
    assert top2[0, 0] == 0.5 and top2[0, 1] == 0.2 and top2[1, 9] == 0.25 and top2[1, 7] == 0.2
    label = Label()(PROBS)
    assert label.tolist()[0] == [1.0] + [0.0] * 9 and label[1].argmax() == 9 and label.sum().item() == 2
    rounded = Rounded(1)(torch.tensor([[0.123, 0.877] + [0.0] * 8]))
    assert torch.allclose(rounded, torch.tensor([[0.1, 0.9] + [0.0] * 8]))


def test_parse_output(model):
    assert parse_output("probabilities") == Probabilities()
    assert parse_output("top-k:5") == TopK(5) and parse_output("top-k") == TopK(3)
    assert parse_output("rounded:3") == Rounded(3) and parse_output("label") == Label()
    with pytest.raises(ConfigError, match="unknown output mode 'logits'; use one of"):
        parse_output("logits")
    with pytest.raises(ConfigError, match="needs an integer"):
        parse_output("top-k:many")
    with pytest.raises(ConfigError, match="k >= 1"):
        parse_output("top-k:0")
    with pytest.raises(ConfigError, match="k <= the victim's 10 classes"):
        VictimOracle(model, parse_output("top-k:11"))


def test_budget_is_exact_and_a_refused_batch_costs_nothing(model):
    oracle = VictimOracle(model, budget=100)
    oracle.query(images(60))
    oracle.query(images(40))
    assert oracle.queries_used == 100
    with pytest.raises(BudgetExhausted, match="100 of 100 queries used, 1 more asked"):
        oracle.query(images(1))
    assert oracle.queries_used == 100
    partial = VictimOracle(model, budget=10)
    with pytest.raises(BudgetExhausted):
        partial.query(images(11))
    assert partial.queries_used == 0


def test_answers_are_probabilities_without_gradients(model):
    oracle = VictimOracle(model)
    x = images(5).requires_grad_()
    answers = oracle.query(x)
    assert answers.shape == (5, 10) and not answers.requires_grad
    assert torch.allclose(answers.sum(1), torch.ones(5), atol=1e-5)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    assert oracle.queries_used == 5


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.rand(2, 28, 28), r"shape \(B, 1, 28, 28\)"),
        (torch.rand(2, 3, 28, 28), r"shape \(B, 1, 28, 28\)"),
        (torch.full((1, 1, 28, 28), 2.0), r"in \[0, 1\]"),
        (torch.full((1, 1, 28, 28), float("nan")), "NaN"),
        (torch.cat([torch.rand(1, 1, 28, 28), torch.full((1, 1, 28, 28), float("-inf"))]), "infinite"),
        (torch.cat([torch.full((1, 1, 28, 28), float("inf")), torch.rand(1, 1, 28, 28)]), "infinite"),
        (torch.full((1, 1, 28, 28), -0.5), r"got \[-0\.5, -0\.5\]"),
        (torch.zeros(1, 1, 28, 28, dtype=torch.uint8), "floating point"),
    ],
)
def test_bad_queries_are_refused_and_not_charged(model, bad, message):
    oracle = VictimOracle(model, budget=10)
    with pytest.raises(ValueError, match=message):
        oracle.query(bad)
    assert oracle.queries_used == 0
