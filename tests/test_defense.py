"""The OOD-gated defense: detector, calibration, policies, the defended oracle and its storage."""

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from mea.data import Splits, load, make_pool
from mea.defenses.detector import DetectorConfig, OodDetector
from mea.defenses.policies import DirichletNoise, GaussianNoise, Misinformation, TopOnePreserving, parse_policy
from mea.defenses.store import fit_defense, load_defense
from mea.errors import ArtifactError, ConfigError
from mea.oracle import Label, Probabilities, Rounded, TopK, VictimOracle
from mea.victim import load_victim

SECRET = bytes(range(32))


@pytest.fixture(scope="module")
def mnist(data_dir):
    train = load("mnist", "train", data_dir)
    splits = Splits()
    return train.subset(slice(0, 20_000)), train.subset(splits.calibration), load("mnist", "test", data_dir)


@pytest.fixture(scope="module")
def detector(victim, mnist):
    fit_set, calibration, _ = mnist
    return OodDetector.fit(
        victim.model, fit_set.images, fit_set.labels, calibration.images, DetectorConfig(target_fpr=0.05)
    )


def auroc(in_scores, out_scores) -> float:
    truth = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
    return roc_auc_score(truth, np.r_[in_scores.numpy(), out_scores.numpy()])


def test_detector_separates_in_from_out_of_distribution(victim, detector, mnist, data_dir):
    test_scores = detector.score_images(victim.model, mnist[2].images[:3000])
    fashion = load("fashion-mnist", "test", data_dir).images[:3000]
    assert auroc(test_scores, detector.score_images(victim.model, fashion)) > 0.97
    for noise in ("uniform", "gaussian"):
        images = make_pool(noise, size=1000, seed=1).images
        assert auroc(test_scores, detector.score_images(victim.model, images)) > 0.99


def test_calibration_hits_its_target_rate_on_unseen_in_distribution_data(victim, detector, mnist):
    calibration_rate = (detector.score_images(victim.model, mnist[1].images) > detector.threshold).float().mean()
    assert abs(calibration_rate.item() - 0.05) < 0.002  # a quantile of these very scores
    test_rate = (detector.score_images(victim.model, mnist[2].images) > detector.threshold).float().mean()
    # Held-out data: the same rate up to sampling error.  The threshold is a quantile of 5,000
    # calibration scores and the rate is read on 10,000 test images: binomial standard deviations
    # sqrt(0.05 * 0.95 / n) of 0.0031 and 0.0022, 0.0038 together; +-0.015 is four of them.
    assert abs(test_rate.item() - 0.05) < 0.015
    assert detector.saturation > detector.threshold


def test_the_fused_score_is_the_sum_of_the_standardised_components(victim, detector, mnist, data_dir):
    """The compiled scorer (every query) against the plain per-component formula (fit, layer study)."""
    from mea.defenses.mahalanobis import layer_features

    images = torch.cat([mnist[2].images[:300], load("fashion-mnist", "test", data_dir).images[:300]])
    features = layer_features(victim.model, images, detector.layers)
    components = detector.component_scores(features)
    reference = sum(detector.standardisers[name](value) for name, value in components.items())
    fused = detector.score(features)
    assert fused.dtype == torch.float32 and fused.shape == (600,)
    torch.testing.assert_close(fused, reference, rtol=1e-4, atol=1e-3)
    single = detector.score({name: value[:1] for name, value in features.items()})  # batch of one
    torch.testing.assert_close(single, fused[:1])
    empty = detector.score({name: value[:0] for name, value in features.items()})
    assert empty.shape == (0,)


def test_a_stricter_target_flags_fewer(victim, detector, mnist):
    scores = detector.score_images(victim.model, mnist[1].images)
    strict = detector.calibrated(scores, 0.01)
    assert strict.threshold > detector.threshold and strict.config.target_fpr == 0.01


POLICIES = [GaussianNoise(0.5), DirichletNoise(1.0), Misinformation(0.9), TopOnePreserving(1.0)]


def mixed_batch(n: int = 12):
    """Rows of different top classes: the case that broke ART's ClassLabels postprocessor."""
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(n, 10, generator=generator) * 3, dim=1)
    assert len(set(probs.argmax(1).tolist())) > 3
    return probs, torch.rand(n, 1, 28, 28, generator=generator), torch.ones(n)


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.spec)
def test_policies_give_distributions_deterministic_per_input(policy):
    probs, images, severity = mixed_batch()
    answers = policy(probs, images, severity, SECRET)
    assert answers.shape == probs.shape and (answers >= 0).all()
    assert torch.allclose(answers.sum(1), torch.ones(len(probs), dtype=answers.dtype), atol=1e-6)
    one_by_one = torch.cat([policy(probs[i : i + 1], images[i : i + 1], severity[:1], SECRET) for i in range(12)])
    assert torch.allclose(answers, one_by_one)  # a row's answer does not depend on its batch
    order = torch.arange(11, -1, -1)
    assert torch.allclose(policy(probs[order], images[order], severity, SECRET), answers[order])
    assert not torch.allclose(policy(probs, images, severity, bytes(32)), answers)  # keyed by the secret
    assert not torch.allclose(answers, probs)


def test_jitter_below_half_a_grey_level_changes_nothing():
    probs, _, severity = mixed_batch()
    images = torch.randint(0, 256, (12, 1, 28, 28), generator=torch.Generator().manual_seed(1)) / 255  # 8-bit images
    jitter = (torch.rand(images.shape, generator=torch.Generator().manual_seed(2)) - 0.5) * 0.8 / 255
    policy = DirichletNoise(1.0)
    assert torch.equal(
        policy(probs, images, severity, SECRET), policy(probs, (images + jitter).clamp(0, 1), severity, SECRET)
    )
    assert not torch.equal(policy(probs, images, severity, SECRET), policy(probs, images.flip(3), severity, SECRET))


def test_top1_preserving_keeps_the_class_and_misinformation_never_does():
    probs, images, severity = mixed_batch()
    assert torch.equal(TopOnePreserving()(probs, images, severity, SECRET).argmax(1), probs.argmax(1))
    wrong = Misinformation(0.9)(probs, images, severity, SECRET)
    assert (wrong.argmax(1) != probs.argmax(1)).all() and torch.allclose(
        wrong.max(1).values.double(), torch.full((12,), 0.9, dtype=torch.float64)
    )
    assert torch.allclose(Misinformation()(probs, images, torch.zeros(12), SECRET), probs)  # severity 0: the truth


def test_parse_policy():
    assert parse_policy("gaussian:0.25") == GaussianNoise(0.25)
    assert parse_policy("misinformation") == Misinformation()
    with pytest.raises(ConfigError, match="unknown policy 'laplace'; use one of"):
        parse_policy("laplace")
    with pytest.raises(ConfigError, match="needs a number"):
        parse_policy("gaussian:loud")


@pytest.fixture(scope="module")
def defense(victim, data_dir, tmp_path_factory):
    return fit_defense(
        victim, tmp_path_factory.mktemp("defense") / "d", DetectorConfig(target_fpr=0.02), data_dir=data_dir
    )


@pytest.mark.parametrize("output", [Probabilities(), TopK(3), Label(), Rounded(2)], ids=lambda o: o.spec)
def test_defended_oracle_works_in_every_output_mode(victim, defense, mnist, data_dir, output):
    fashion = load("fashion-mnist", "test", data_dir).images[:50]
    images = torch.cat([mnist[2].images[:50], fashion])
    oracle = defense.oracle(victim, output=output, budget=200)
    answers, flags = oracle.answer(images)
    assert answers.shape == (100, 10) and oracle.queries_used == 100
    # 50 MNIST test images at a target FPR of 0.02: one flagged on average; 7 or more has binomial
    # probability 6e-5 (test_benign_queries_are_flagged_at_the_target_rate measures the rate itself).
    assert flags[50:].float().mean() > 0.8 and flags[:50].sum() <= 6
    undefended = VictimOracle(victim.model, output).query(images)
    assert torch.equal(answers[~flags], undefended[~flags])  # in-distribution queries: exact answers
    assert torch.equal(oracle.query(images), answers)  # a repeated query gets the identical answer
    assert oracle.queries_used == 200


def test_benign_queries_are_flagged_at_the_target_rate(victim, defense, mnist):
    """All of MNIST test through the defended oracle: flagged at the calibrated 2%, within sampling error.

    The threshold is a quantile of the 5,000 calibration scores and the rate is read on 10,000 test
    images: binomial standard deviations sqrt(0.02 * 0.98 / n) of 0.0020 and 0.0014, 0.0024 together;
    +-0.01 (a factor 1.5 either way) is four of them, while a detector flagging twice or half as
    often as it should fails.
    """
    _, flags = defense.oracle(victim).answer(mnist[2].images)
    assert len(flags) == 10_000
    assert abs(flags.float().mean().item() - 0.02) < 0.01


def test_defense_directory_roundtrip_and_refusals(victim, defense, tmp_path, data_dir):
    loaded = load_defense(defense.directory, victim)
    assert loaded.detector.threshold == defense.detector.threshold and loaded.secret == defense.secret
    assert (defense.directory / "secret.key").stat().st_mode & 0o077 == 0
    record = json.loads((defense.directory / "defense-config.json").read_text())
    assert record["victim_fingerprint"] == victim.fingerprint and record["calibrated_on"].endswith("[55000:60000]")

    other = tmp_path / "other-victim"
    other.mkdir()
    for name in ("model.safetensors", "config.json"):
        (other / name).write_bytes((victim.directory / name).read_bytes())
    from mea import models

    models.save(models.build("lenet5", 99), "lenet5", other / "model.safetensors")
    with pytest.raises(ArtifactError, match="fitted for another victim"):
        load_defense(defense.directory, load_victim(other))
    with pytest.raises(ArtifactError, match="mea defend fit"):
        load_defense(tmp_path, victim)
    with pytest.raises(ConfigError, match=r"must lie in \(0, 1\)"):
        DetectorConfig(target_fpr=1.5)
    with pytest.raises(ConfigError, match="no layer conv9"):
        fit_defense(victim, tmp_path / "x", DetectorConfig(layers=("conv9",)), data_dir=data_dir)
    assert not (tmp_path / "x").exists()


def test_confidence_score_resolves_very_confident_answers():
    from mea.defenses.detector import confidence_score

    logits = torch.tensor([[30.0, 0.0] + [-5.0] * 8, [20.0, 0.0] + [-5.0] * 8, [1.0, 0.9] + [0.0] * 8])
    scores = confidence_score(logits)
    # p_max rounds to 1 in float32 for the first two rows, yet their scores differ, in order.
    assert torch.softmax(logits, 1)[0, 0] == 1.0 and torch.softmax(logits, 1)[1, 0] == 1.0
    assert scores[0] < scores[1] < scores[2]
    # -log p_max = log1p(e^-30 + 8 e^-35), so log(-log p_max) = -30 + log(1 + 8 e^-5) to float32 precision.
    assert scores[0].item() == pytest.approx(-30.0 + np.log1p(8 * np.exp(-5.0)), abs=1e-4)
