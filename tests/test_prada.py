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
