"""Per-client stream detection (PRADA): natural streams pass, synthetic ones are flagged."""

import torch

from mea.data import load
from mea.defenses.prada import NORMAL, REFUSED, SUSPECT, PradaConfig, PradaMonitor


def feed(
    monitor: PradaMonitor, client: str, images: torch.Tensor, classes: torch.Tensor, batch: int = 50, ood: float = 0.0
):
    for start in range(0, len(images), batch):
        chunk = slice(start, start + batch)
        flags = torch.rand(len(images[chunk]), generator=torch.Generator().manual_seed(start)) < ood
        state = monitor.observe(client, images[chunk], classes[chunk], flags)
    return state


def test_benign_mnist_streams_are_not_flagged(data_dir):
    test = load("mnist", "test", data_dir)
    monitor = PradaMonitor()
    for client in range(3):
        part = slice(client * 1000, (client + 1) * 1000)
        state = feed(monitor, f"benign-{client}", test.images[part], test.labels[part])
        assert state.prada_flagged_at is None and state.level == NORMAL, state.describe()
        assert state.statistic is not None and state.statistic > PradaConfig().threshold


def test_a_stream_of_jittered_repeats_is_flagged(data_dir):
    """An attacker averaging noise away: each of 20 images sent 40 times with sub-grey-level jitter."""
    originals = load("mnist", "test", data_dir).subset(slice(5000, 5020))
    generator = torch.Generator().manual_seed(0)
    images = originals.images.repeat(40, 1, 1, 1)
    images = (images + (torch.rand(images.shape, generator=generator) - 0.5) / 255).clamp(0, 1)
    state = feed(PradaMonitor(), "averager", images, originals.labels.repeat(40))
    assert state.prada_flagged_at is not None and state.prada_flagged_at <= 200
    assert state.statistic < PradaConfig().threshold and state.level == SUSPECT


def test_a_mostly_out_of_distribution_client_is_refused(data_dir):
    test = load("mnist", "test", data_dir).subset(slice(0, 400))
    state = feed(PradaMonitor(), "noisy", test.images, test.labels, ood=0.8)
    assert state.level == REFUSED and state.ood_rate > 0.5
    assert "refused" in state.describe()


def test_a_stream_is_recorded_the_same_in_batches_as_one_query_at_a_time(data_dir):
    """The batch pass jumps from one kept query to the next; it must keep and measure exactly what
    PRADA's query-by-query pass does (here against batches of one, on natural and on jittered
    images, which fill the sets differently)."""
    test = load("mnist", "test", data_dir).subset(slice(0, 600))
    generator = torch.Generator().manual_seed(1)
    jittered = (test.images[:60].repeat(10, 1, 1, 1) + 0.05 * torch.randn(600, 1, 28, 28, generator=generator)).clamp(
        0, 1
    )
    for images, labels in ((test.images, test.labels), (jittered, test.labels[:60].repeat(10))):
        config = PradaConfig(max_per_class=4)  # some sets fill up within a batch, some do not
        one = feed(PradaMonitor(config), "one", images, labels, batch=1)
        batched = feed(PradaMonitor(config), "batched", images, labels, batch=256)
        assert one.queries == batched.queries == 600 and one.distance_count == batched.distance_count
        assert torch.allclose(torch.tensor(one.distances), torch.tensor(batched.distances), atol=1e-4)
        assert {c: s.size for c, s in one.sets.items()} == {c: s.size for c, s in batched.sets.items()}
        assert any(s.full for s in batched.sets.values()) and not all(s.full for s in batched.sets.values())
        for c, kept in one.sets.items():
            assert torch.equal(
                torch.from_numpy(kept.buffer[: kept.size]), torch.from_numpy(batched.sets[c].buffer[: kept.size])
            )


# --- synthetic-step streams (mea.defenses.steps) ------------------------------------------------------


def jbda_like(seeds: torch.Tensor, rounds: int, generator: torch.Generator) -> torch.Tensor:
    """Seeds, then rounds of signed steps of 0.1 from every query so far (the stream Jacobian-based
    augmentation sends; here the step directions are random signs instead of a substitute's gradient)."""
    stream = seeds
    for _ in range(rounds):
        stream = torch.cat([stream, (stream + 0.1 * torch.randn(stream.shape, generator=generator).sign()).clamp(0, 1)])
    return stream


def test_calibration_leaves_benign_streams_unmarked_and_catches_steps(data_dir):
    from mea.defenses.steps import calibrate

    calibration = load("mnist", "train", data_dir).subset(slice(55_000, 60_000))
    found = calibrate(calibration.images, calibration.labels)
    # Half the closest benign approach: far below it, far above a step of 0.1 (and its 8-bit rounding).
    assert found.benign_marks == 0 and found.radius <= found.smallest_benign_gap / 2 + 1e-9
    assert 0.12 < found.radius < 0.4 and found.count <= 10 and found.false_flag_bound < 1e-6
    assert set(found.streams) == {"in order", "shuffled", "shifted repeats", "one class"}


def test_synthetic_steps_are_refused_and_natural_streams_are_not(data_dir):
    from mea.defenses.steps import benign_streams

    test = load("mnist", "test", data_dir)
    for name, images in benign_streams(test.images, test.labels, seed=3, size=3000).items():
        state = feed(PradaMonitor(), name, images, test.labels[: len(images)])
        assert state.step_record.steps == 0 and state.level == NORMAL, (name, state.describe())
    stream = jbda_like(test.images[:150], 3, torch.Generator().manual_seed(0))
    state = feed(PradaMonitor(), "jbda", stream, test.labels[:150].repeat(8))
    assert state.level == REFUSED and 150 < state.steps_flagged_at <= 150 + PradaConfig().step_count
    # Hidden among four natural images per synthetic one, the window still fills.
    synthetic = jbda_like(test.images[:60], 3, torch.Generator().manual_seed(1))
    natural = test.images[1000 : 1000 + 4 * len(synthetic)]
    mixed = torch.cat([synthetic, natural])[
        torch.randperm(5 * len(synthetic), generator=torch.Generator().manual_seed(2))
    ]
    state = feed(PradaMonitor(), "covered", mixed, torch.zeros(len(mixed), dtype=torch.long))
    assert state.level == REFUSED and state.steps_flagged_at < len(mixed) // 2
    assert state.ood_rate == 0.0  # PRADA and the OOD rate had nothing to say: the steps alone refused it


def test_step_marks_are_the_same_in_batches_as_one_query_at_a_time(data_dir):
    test = load("mnist", "test", data_dir)
    stream = jbda_like(test.images[:40], 2, torch.Generator().manual_seed(4))
    config = PradaConfig(step_memory=50)  # forgets, and forgets inside a batch
    one = feed(PradaMonitor(config), "one", stream, test.labels[:40].repeat(4), batch=1)
    batched = feed(PradaMonitor(config), "batched", stream, test.labels[:40].repeat(4), batch=64)
    assert one.step_record.steps == batched.step_record.steps > 0
    assert list(one.step_record.marks) == list(batched.step_record.marks)
    assert one.steps_flagged_at == batched.steps_flagged_at
    assert torch.equal(torch.from_numpy(one.step_record.latest(50)), torch.from_numpy(batched.step_record.latest(50)))
