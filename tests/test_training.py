import pytest
import torch

from mea import models
from mea.config import AttackConfig
from mea.errors import ConfigError
from mea.training import (
    LabelLoss,
    TrainConfig,
    centred_log_probabilities,
    fit,
    random_affine,
    random_shift,
    soft_targets,
)


def toy_problem(n: int = 512):
    """Bright-left vs bright-right images: learnable in a few steps."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (n,), generator=g)
    images = torch.rand(n, 1, 28, 28, generator=g) * 0.2
    images[labels == 0, :, :, :14] += 0.7
    images[labels == 1, :, :, 14:] += 0.7
    return images.clamp(0, 1), torch.nn.functional.one_hot(labels, 10).float(), labels


def test_training_is_deterministic_under_a_seed_and_learns():
    images, answers, labels = toy_problem()
    config = TrainConfig(epochs=2, lr=1e-2, batch_size=64, min_steps=0)
    weights = []
    for _ in range(2):
        model = models.build("lenet5", 0)
        report = fit(model, images, answers, config, torch.Generator().manual_seed(5), progress=False)
        weights.append(model.fc3.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])
    assert report.steps == 2 * 8 and report.epochs == 2 and len(report.epoch_losses) == 2
    assert (model(images).argmax(1) == labels).float().mean() > 0.95


def test_small_transfer_sets_get_at_least_min_steps():
    images, answers, _ = toy_problem(100)
    config = TrainConfig(epochs=1, lr=1e-2, batch_size=50, min_steps=10)
    report = fit(models.build("mlp", 0), images, answers, config, torch.Generator().manual_seed(0), progress=False)
    assert report.epochs == 5 and report.steps == 10


def test_hard_loss_and_true_label_mixing_run():
    images, answers, labels = toy_problem(128)
    config = TrainConfig(epochs=1, lr=1e-2, batch_size=32, loss=LabelLoss.HARD, true_label_weight=0.5)
    fit(models.build("mlp", 0), images, answers, config, torch.Generator().manual_seed(0), labels, progress=False)
    with pytest.raises(ConfigError, match="needs a pool with labels"):
        fit(models.build("mlp", 0), images, answers, config, torch.Generator(), None, progress=False)


def test_soft_targets_are_distributions_and_temperature_one_is_identity():
    answers = torch.tensor([[0.7, 0.2, 0.1] + [0.0] * 7])
    assert torch.allclose(soft_targets(answers, 1.0), answers, atol=1e-6)
    softened = soft_targets(answers, 4.0)
    assert torch.allclose(softened.sum(1), torch.ones(1)) and softened[0, 0] < 0.7 and softened[0, 5] > 0


def test_logit_matching_recovers_the_teachers_logits_from_its_probabilities():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(1024, 1, 28, 28, generator=g)
    with torch.no_grad():  # a confident teacher: its centred logits spread with a deviation of 3 nats
        logits = 60 * models.build("mlp", 100)(images)
    answers = torch.softmax(logits, 1)
    centred = logits - logits.mean(1, keepdim=True)
    # A probability answer is its logits up to a constant per row: the targets are exactly those.
    assert torch.allclose(centred_log_probabilities(answers), centred, atol=1e-3)

    def error(model):
        with torch.no_grad():
            out = model(images)
        return float((out - out.mean(1, keepdim=True) - centred).abs().mean())

    student = models.build("mlp", 0)
    before = error(student)
    config = TrainConfig(epochs=20, lr=1e-2, batch_size=64, loss=LabelLoss.LOGITS, min_steps=0)
    fit(student, images, answers, config, torch.Generator().manual_seed(0), progress=False)
    # Measured while writing this: the error falls to 0.14-0.26 of its start (teachers 100-102,
    # students 0-2, 1 and 2 threads); the soft loss at T = 4 leaves 0.16-0.33.
    assert error(student) < 0.4 * before


def test_logit_matching_refuses_answers_without_their_small_probabilities():
    images, one_hot, _ = toy_problem(64)
    config = TrainConfig(epochs=1, loss=LabelLoss.LOGITS)
    with pytest.raises(ConfigError, match=r"needs exact probability answers, but 100% of these rows have zeros"):
        fit(models.build("mlp", 0), images, one_hot, config, torch.Generator(), progress=False)
    # An attack asking for such answers is refused before it spends a query.
    for output in ("label", "top-k:3", "rounded:2"):
        with pytest.raises(ConfigError, match=r"--loss logits needs --output probabilities, not "):
            AttackConfig(output=output, train=config)
    AttackConfig(output="probabilities", train=config)


def test_random_shift_moves_content_without_losing_it():
    image = torch.zeros(64, 1, 28, 28)
    image[:, :, 10:18, 10:18] = 1.0  # a centred square, far from the borders
    shifted = random_shift(image, 2, torch.Generator().manual_seed(0))
    assert torch.equal(shifted.sum((1, 2, 3)), image.sum((1, 2, 3)))
    assert (shifted != image).any(dim=(1, 2, 3)).float().mean() > 0.7


def test_random_affine_without_bounds_is_the_identity():
    images = torch.rand(16, 1, 28, 28)
    assert torch.allclose(random_affine(images, 0, 0.0, 0.0, torch.Generator().manual_seed(0)), images, atol=1e-5)


def test_random_affine_turns_and_resizes_each_image_on_its_own():
    image = torch.zeros(256, 1, 28, 28)
    image[:, :, 4:24, 13:15] = 1.0  # a vertical bar: 40 pixels of ink through the centre
    moved = random_affine(image, 2, 15.0, 0.15, torch.Generator().manual_seed(0))
    ink = moved.sum((1, 2, 3))
    # Rescaling by z changes the area by z^2 (0.72..1.32 for z in 0.85..1.15), interpolation a little.
    assert ((ink > 0.6 * 40) & (ink < 1.45 * 40)).all()
    # Turned: the bar's ink leaves its two columns in (nearly) every image, by a different amount in each.
    outside = 1 - moved[:, :, :, 13:15].sum((1, 2, 3)) / ink
    assert (outside > 0.02).float().mean() > 0.9
    assert len(outside.unique()) > 250
    # The same generator state draws the same poses; the content stays in range.
    again = random_affine(image, 2, 15.0, 0.15, torch.Generator().manual_seed(0))
    assert torch.equal(moved, again) and moved.min() >= 0 and moved.max() <= 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 0.0}, "learning rate must be positive"),
        ({"lr": -1e-3}, "learning rate must be positive"),
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"batch_size": -5}, "batch-size must be a positive integer"),
        ({"schedule": "cosine"}, "cosine"),
        ({"true_label_weight": 2.0}, r"true-label weight must lie in \[0, 1\]"),
        ({"rotate": 90.0}, r"rotate must lie in \[0, 45\] degrees, got 90.0; e.g. --rotate 15"),
        ({"rotate": -1.0}, r"rotate must lie in \[0, 45\]"),
        ({"scale": 0.9}, r"scale must lie in \[0, 0.5\]"),
    ],
)
def test_bad_training_settings(kwargs, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        TrainConfig(**kwargs)
