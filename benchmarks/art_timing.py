"""Where the time of a 10,000-label extraction goes, in this project and in IBM ART: the speed claim
of docs/benchmarks.md taken apart.

One victim, the same 10,000 query images (benchmarks.run's draw), LeNet-5 thieves, label answers:

* mea: `extract` with the default training at 1-5 epochs (one-cycle, so each length is its own
  run), querying and training timed apart;
* ART CopycatCNN (ART 1.20, Adam, batch 64, LR 3e-3, the search's best): its three steps (select,
  query, fit) timed apart, the clone evaluated after every epoch (ART's rate is constant, so epoch k
  of one 5-epoch fit is the clone after k epochs; the shuffles draw from the same global stream);
* the two training loops on identical work (batch 64 and 256, constant LR 3e-3, cross-entropy on
  the labels, 5 epochs): what the loop itself costs, apart from the recipe;
* `mea attack --output label --epochs 5 --min-steps 0 --queries 10000` as a user runs it: its
  recorded query and train times, and the whole process's wall time.

Everything runs after a warm-up (oneDNN builds its kernels on first use), seed after seed, the
attackers alternating, so that a slower spell of a shared machine hits all of them.  Accuracy is
deterministic for a thread count; times are the median over seeds.

    python -m benchmarks.art_timing --victim runs/victim [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from benchmarks.peers import ART_ATTACKS, ArtThief, art_victim, require_art, seed_globals
from benchmarks.provenance import RESULTS, Provenance
from mea import models
from mea.attacks import make_strategy
from mea.attacks.extract import extract
from mea.config import LabelLoss, Schedule, Splits, TrainConfig
from mea.data import Pool, load
from mea.oracle import Label, VictimOracle
from mea.seeding import generator
from mea.training import fit, predict_logits
from mea.victim import load_victim

QUERIES = 10_000
EPOCHS = 5
ART_THIEF = ArtThief(batch_size_fit=64, lr=3e-3)


class Setup:
    def __init__(self, victim_dir: Path) -> None:
        self.victim = load_victim(victim_dir)
        train = load("mnist", "train")
        self.pool_images = train.images[Splits().victim_train]
        self.test = load("mnist", "test")

    def queries(self, seed: int) -> torch.Tensor:
        """benchmarks.run's query images for `seed`."""
        order = torch.randperm(len(self.pool_images), generator=generator(seed, "benchmark-queries"))
        return self.pool_images[order[:QUERIES]]

    def accuracy(self, model: torch.nn.Module) -> float:
        return float((predict_logits(model, self.test.images).argmax(1) == self.test.labels).float().mean())


def mea_run(setup: Setup, images: torch.Tensor, epochs: int, seed: int) -> dict:
    start = time.perf_counter()
    result = extract(
        VictimOracle(setup.victim.model, Label()),
        Pool("mnist-train", images, None),
        make_strategy("random"),
        len(images),
        "lenet5",
        TrainConfig(epochs=epochs, min_steps=0),
        seed,
        progress=False,
    )
    wall = time.perf_counter() - start
    return {
        "epochs": epochs,
        "query_s": result.query_time_s,
        "train_s": result.train_time_s,
        "total_s": wall,
        "accuracy": setup.accuracy(result.clone),
    }


def art_run(setup: Setup, images: torch.Tensor, seed: int) -> dict:
    """CopycatCNN's extract step by step (ART 1.20's `extract`: `_select_data`, `_query_label`,
    `fit`), the fit one epoch per call so the clone can be evaluated in between (not timed)."""
    seed_globals(seed)
    thieved = ART_THIEF.build(seed)
    attack = ART_ATTACKS["CopycatCNN"](art_victim(setup.victim.model), ART_THIEF, len(images), EPOCHS, False)
    tick = time.perf_counter()
    selected = attack._select_data(images.numpy())
    labels = attack._query_label(selected)
    query_s = time.perf_counter() - tick
    per_epoch = []
    train_s = 0.0
    for epoch in range(1, EPOCHS + 1):
        tick = time.perf_counter()
        thieved.fit(selected, labels, batch_size=ART_THIEF.batch_size_fit, nb_epochs=1)
        train_s += time.perf_counter() - tick
        per_epoch.append({"epochs": epoch, "train_s": train_s, "accuracy": setup.accuracy(thieved.model)})
    return {"query_s": query_s, "per_epoch": per_epoch, "total_s": query_s + train_s}


def art_whole(setup: Setup, images: torch.Tensor, seed: int) -> dict:
    """CopycatCNN's `extract` in one call, timed as benchmarks.run times it."""
    seed_globals(seed)
    thieved = ART_THIEF.build(seed)
    start = time.perf_counter()
    attack = ART_ATTACKS["CopycatCNN"](art_victim(setup.victim.model), ART_THIEF, len(images), EPOCHS, False)
    stolen = attack.extract(images.numpy(), thieved_classifier=thieved)
    return {"total_s": time.perf_counter() - start, "accuracy": setup.accuracy(stolen.model)}


def loops(setup: Setup, images: torch.Tensor, seed: int, batch_size: int) -> dict:
    """The two training loops on identical work: the victim's labels, constant LR 3e-3, cross-entropy."""
    labels = VictimOracle(setup.victim.model, Label()).query(images)
    config = TrainConfig(
        epochs=EPOCHS, lr=3e-3, batch_size=batch_size, schedule=Schedule.CONSTANT, loss=LabelLoss.HARD, min_steps=0
    )
    clone = models.build("lenet5", seed)
    report = fit(clone, images, labels, config, generator(seed, "training"), progress=False)
    ours = {"train_s": report.time_s, "accuracy": setup.accuracy(clone)}
    seed_globals(seed)
    thief = ArtThief(batch_size_fit=batch_size, lr=3e-3)
    thieved = thief.build(seed)
    tick = time.perf_counter()
    thieved.fit(images.numpy(), labels.numpy(), batch_size=batch_size, nb_epochs=EPOCHS)
    art = {"train_s": time.perf_counter() - tick, "accuracy": setup.accuracy(thieved.model)}
    return {"batch_size": batch_size, "mea_loop": ours, "art_loop": art}


def cli_run(victim_dir: Path, seed: int) -> dict:
    """`mea attack` as the issue ran it: its metrics' query and train times, and the process's wall."""
    with tempfile.TemporaryDirectory(prefix="mea-art-timing-") as scratch:
        command = [
            "attack",
            "--victim",
            str(victim_dir),
            "--queries",
            str(QUERIES),
            "--output",
            "label",
            "--epochs",
            str(EPOCHS),
            "--min-steps",
            "0",
            "--seed",
            str(seed),
            "--out",
            f"{scratch}/run",
            "-q",
        ]
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mea", *command], check=True)
        wall = time.perf_counter() - start
        metrics = json.loads(Path(scratch, "run", "metrics.json").read_text())
    return {
        "command": "mea " + " ".join([*command[:-5], "--out", "DIR"]),
        "query_s": metrics["time_s"]["query"],
        "train_s": metrics["time_s"]["train"],
        "total_s": metrics["time_s"]["total"],
        "process_wall_s": wall,
        "accuracy": metrics["clone"]["accuracy"],
    }


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--victim", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads")
    parser.add_argument("--out", type=Path, default=RESULTS / "art_timing.json")
    args = parser.parse_args()
    art_version = require_art()
    torch.set_num_threads(args.threads)
    provenance = Provenance()
    setup = Setup(args.victim)
    # Warm-up: the first convolutions of a process build oneDNN's kernels; neither side pays for it.
    warm = setup.queries(99)[:2_000]
    mea_run(setup, warm, 1, 99)
    seed_globals(99)
    ART_THIEF.build(99).fit(warm.numpy(), np.eye(10, dtype=np.float32)[np.zeros(len(warm), dtype=int)], nb_epochs=1)
    seeds = []
    for seed in range(args.seeds):
        images = setup.queries(seed)
        entry: dict = {"seed": seed, "mea": [], "art": None}
        for epochs in range(1, EPOCHS + 1):
            entry["mea"].append(mea_run(setup, images, epochs, seed))
        entry["art"] = art_run(setup, images, seed)
        entry["art_whole"] = art_whole(setup, images, seed)
        entry["loops"] = [loops(setup, images, seed, batch) for batch in (64, 256)]
        entry["cli"] = cli_run(args.victim, seed)
        seeds.append(entry)
        ours, art, cli = entry["mea"][-1], entry["art"], entry["cli"]
        last = art["per_epoch"][-1]
        print(
            f"seed {seed}: mea {ours['accuracy']:.2%} in {ours['query_s']:.2f}+{ours['train_s']:.2f} s, "
            f"ART {last['accuracy']:.2%} in {art['query_s']:.2f}+{last['train_s']:.2f} s "
            f"(whole {entry['art_whole']['total_s']:.2f} s), CLI {cli['accuracy']:.2%} in "
            f"{cli['query_s']:.2f}+{cli['train_s']:.2f} s (process {cli['process_wall_s']:.1f} s)",
            flush=True,
        )
    record = {
        "provenance": provenance.record(art=art_version),
        "victim_fingerprint": setup.victim.fingerprint,
        "queries": QUERIES,
        "epochs": EPOCHS,
        "art_thief": asdict(ART_THIEF),
        "mea_train": {k: str(v) for k, v in asdict(TrainConfig(epochs=EPOCHS, min_steps=0)).items()},
        "seeds": seeds,
        "summary": summarise(seeds),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written to {args.out}")


def summarise(seeds: list[dict]) -> dict:
    """Medians over seeds of every time, means of every accuracy; equal-time comparisons from them."""
    mea = [
        {
            "epochs": k + 1,
            "total_s": median([s["mea"][k]["query_s"] + s["mea"][k]["train_s"] for s in seeds]),
            "train_s": median([s["mea"][k]["train_s"] for s in seeds]),
            "accuracy": statistics.fmean(s["mea"][k]["accuracy"] for s in seeds),
        }
        for k in range(EPOCHS)
    ]
    art_query = median([s["art"]["query_s"] for s in seeds])
    art = [
        {
            "epochs": k + 1,
            "total_s": art_query + median([s["art"]["per_epoch"][k]["train_s"] for s in seeds]),
            "train_s": median([s["art"]["per_epoch"][k]["train_s"] for s in seeds]),
            "accuracy": statistics.fmean(s["art"]["per_epoch"][k]["accuracy"] for s in seeds),
        }
        for k in range(EPOCHS)
    ]
    art_full, mea_full = art[-1], mea[-1]
    # Equal wall time: the most epochs each side finishes within the other's five-epoch time.
    mea_in_art_time = max(
        (row for row in mea if row["total_s"] <= art_full["total_s"]), key=lambda r: r["epochs"], default=None
    )
    art_in_mea_time = max(
        (row for row in art if row["total_s"] <= mea_full["total_s"]), key=lambda r: r["epochs"], default=None
    )
    return {
        "mea": mea,
        "mea_query_s": median([s["mea"][-1]["query_s"] for s in seeds]),
        "art": art,
        "art_query_s": art_query,
        "art_whole_s": median([s["art_whole"]["total_s"] for s in seeds]),
        "art_whole_accuracy": statistics.fmean(s["art_whole"]["accuracy"] for s in seeds),
        "loops": [
            {
                "batch_size": seeds[0]["loops"][i]["batch_size"],
                "mea_loop_s": median([s["loops"][i]["mea_loop"]["train_s"] for s in seeds]),
                "art_loop_s": median([s["loops"][i]["art_loop"]["train_s"] for s in seeds]),
                "mea_loop_accuracy": statistics.fmean(s["loops"][i]["mea_loop"]["accuracy"] for s in seeds),
                "art_loop_accuracy": statistics.fmean(s["loops"][i]["art_loop"]["accuracy"] for s in seeds),
            }
            for i in range(len(seeds[0]["loops"]))
        ],
        "cli": {
            key: median([s["cli"][key] for s in seeds]) for key in ("query_s", "train_s", "total_s", "process_wall_s")
        }
        | {"accuracy": statistics.fmean(s["cli"]["accuracy"] for s in seeds), "command": seeds[0]["cli"]["command"]},
        "mea_within_art_time": mea_in_art_time,
        "art_within_mea_time": art_in_mea_time,
    }


if __name__ == "__main__":
    main()
