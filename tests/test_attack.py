import pytest
import torch

from mea.attacks import RandomSampling, extract, make_strategy
from mea.data import make_pool
from mea.errors import BudgetExhausted, ConfigError
from mea.experiments.attack import AttackConfig, run_attack
from mea.oracle import Label, VictimOracle
from mea.training import TrainConfig, predict_logits

FAST = TrainConfig(epochs=5, lr=3e-2, batch_size=128)


def test_clone_from_a_few_thousand_queries_agrees_far_above_chance(victim, data_dir):
    config = AttackConfig(queries=3000, train=FAST, seed=1)
    metrics = run_attack(config, victim, data_dir, progress=False)
    assert metrics["queries"] == 3000 and metrics["refused_after"] is None
    assert metrics["clone"]["fidelity"] > 0.85  # chance is about 0.1
    assert metrics["clone"]["accuracy"] > 0.85
    assert metrics["uses_true_labels"] is False and metrics["config"]["uses_true_labels"] is False
    assert set(metrics["time_s"]) == {"query", "train", "total"}


def test_extraction_spends_exactly_the_budget_and_is_deterministic(victim, data_dir):
    pool = make_pool("mnist-train", data_dir)
    clones = []
    for _ in range(2):
        oracle = VictimOracle(victim.model, budget=500)
        result = extract(oracle, pool, RandomSampling(), 500, train=FAST, seed=3, progress=False)
        assert oracle.queries_used == 500 == result.queries == len(result.transfer)
        assert len(set(result.transfer.pool_index.tolist())) == 500  # without replacement
        clones.append(result.clone)
    x = pool.images[:64]
    assert torch.equal(predict_logits(clones[0], x), predict_logits(clones[1], x))


def test_label_only_answers_train_a_clone(victim, data_dir):
    pool = make_pool("mnist-train", data_dir)
    oracle = VictimOracle(victim.model, Label(), budget=2000)
    result = extract(oracle, pool, RandomSampling(), 2000, train=FAST, seed=0, progress=False)
    assert set(result.transfer.answers.sum(1).tolist()) == {1.0}
    test = pool.images[-2000:]
    agreement = (predict_logits(result.clone, test).argmax(1) == predict_logits(victim.model, test).argmax(1)).float()
    assert agreement.mean() > 0.8


def test_bad_attack_settings(victim, data_dir):
    pool = make_pool("uniform", size=100)
    with pytest.raises(ConfigError, match="exceeds the uniform pool"):
        extract(VictimOracle(victim.model), pool, RandomSampling(), 101, progress=False)
    with pytest.raises(BudgetExhausted, match="has 50 queries left"):
        extract(VictimOracle(victim.model, budget=50), pool, RandomSampling(), 60, progress=False)
    with pytest.raises(ConfigError, match="needs a labelled pool"):
        extract(
            VictimOracle(victim.model),
            pool,
            RandomSampling(),
            10,
            train=TrainConfig(true_label_weight=0.5),
            progress=False,
        )
    with pytest.raises(ConfigError, match="unknown strategy 'magic'"):
        make_strategy("magic")
    with pytest.raises(ConfigError, match="unknown pool 'cifar'"):
        AttackConfig(pool="cifar")
    with pytest.raises(ConfigError, match="unknown architecture"):
        AttackConfig(clone_arch="vgg")
