"""What the defense adds to each query: detector time against the victim's own forward pass.

Measures, per batch size, the undefended oracle (victim forward + softmax); the detector alone (the
same forward pass, reading the detector's layers, plus the score: what every query pays); the
defended oracle on in-distribution traffic (MNIST test: detector plus the policy for the ~1% of
benign rows it flags) and on out-of-distribution traffic (Fashion-MNIST: nearly every answer
comes from the policy).

The whole measurement runs `--runs` times back to back (two by default), so that the table shows
how far one run's figures move on this machine.

    python -m benchmarks.detector_overhead --victim DIR --defense DIR [--repeats 8] [--runs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from benchmarks.provenance import RESULTS, Provenance
from mea.data import load
from mea.defenses.store import load_defense
from mea.oracle import VictimOracle
from mea.victim import load_victim


def per_image_us(calls: dict, images: torch.Tensor, batch: int, repeats: int) -> dict[str, float]:
    """Median time per image of each call, answering `images` in batches of `batch`.

    The calls alternate batch by batch, so that a noisy neighbour on a shared machine slows them
    all alike instead of skewing one of them.
    """
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for i in range(0, len(images), batch):
            chunk = images[i : i + batch]
            for name, call in calls.items():
                start = time.perf_counter()
                call(chunk)
                samples[name].append((time.perf_counter() - start) / len(chunk) * 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--victim", type=Path, required=True)
    parser.add_argument("--defense", type=Path, required=True)
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--runs", type=int, default=2, help="whole measurements, back to back")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads")
    parser.add_argument("--out", type=Path, default=RESULTS / "detector_overhead.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    provenance = Provenance()

    victim = load_victim(args.victim)
    defense = load_defense(args.defense, victim)
    mnist = load("mnist", "test").images[: args.images]
    fashion = load("fashion-mnist", "test").images[: args.images]
    plain = VictimOracle(victim.model)
    defended = defense.oracle(victim)

    def detector_only(images: torch.Tensor) -> torch.Tensor:
        return defense.detector.score(plain.inspect(images, defense.detector.layers)[1])

    runs = [measure(plain, detector_only, defended, mnist, fashion, args) for _ in range(args.runs)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"provenance": provenance.record(), "victim_fingerprint": victim.fingerprint, "runs": runs}, indent=2
        )
        + "\n"
    )
    print(f"written to {args.out}")


def measure(plain, detector_only, defended, mnist, fashion, args) -> list[dict]:
    """One whole measurement: a row per batch size."""
    rows = []
    for batch in (1, 32, 256, 1024):
        count = 512 if batch == 1 else args.images
        ood = fashion[:count]
        id_timing = per_image_us(
            {"victim": plain.query, "detector": detector_only, "defended": defended.query},
            mnist[:count],
            batch,
            args.repeats,
        )
        ood_timing = per_image_us({"victim": plain.query, "defended": defended.query}, ood, batch, args.repeats)
        victim_us, id_us, ood_us = id_timing["victim"], id_timing["defended"], ood_timing["defended"]
        detector_us = id_timing["detector"]
        rows.append(
            {
                "batch": batch,
                "victim_us": victim_us,
                "detector_us": detector_us,
                "detector_only_overhead": detector_us / victim_us - 1,
                "defended_id_us": id_us,
                "defended_ood_us": ood_us,
                "defended_id_overhead": id_us / victim_us - 1,
                "ood_overhead": ood_us / ood_timing["victim"] - 1,
            }
        )
        print(
            f"batch {batch:5d}: victim {victim_us:7.1f} us/image, detector {detector_us:7.1f} "
            f"(+{detector_us / victim_us - 1:.1%}), defended ID {id_us:7.1f} "
            f"(+{id_us / victim_us - 1:.1%}), defended OOD {ood_us:7.1f} (+{ood_us / ood_timing['victim'] - 1:.1%})",
            flush=True,
        )
    return rows


if __name__ == "__main__":
    main()
