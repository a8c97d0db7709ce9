"""Benchmarks side by side with IBM ART, the study's configuration and the machine's limits.

One victim, the same query images for every attacker: this project's extraction against ART's
CopycatCNN (ART's KnockoffNets with random sampling is the same algorithm with the same draws in
ART 1.20: it is run once, to show that its clone is identical); the study's best training
configuration against this project's default; this project's OOD-gated defense against ART's
postprocessors under the same attacks; and throughput against the machine's measured peak.
Every attack runs for `--seeds` seeds (the query draw, the clones' initialisation and shuffles,
and for the OOD-gated defense the noise key of draw s of `benchmarks.defense_keys`).  Writes
benchmarks/results/benchmarks_full.json (or _quick) and a plot, then re-renders docs/benchmarks.md's
blocks from it (`python -m benchmarks.readme`).

    pip install -e '.[bench]'
    python -m benchmarks.run --victim runs/victim --defense runs/defense [--quick]

Without --victim a victim is trained (about 75 s), without --defense one is fitted (a few s).
--quick uses 10,000 queries for the clone comparison, 5,000 per defended attack, one seed and
ART's configuration found by the full run's search, and writes benchmarks/results/BENCHMARKS_quick.md;
the full run also searches ART's configuration, compares at 55,000 queries (the whole split) too
and attacks with 20,000.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import readme
from benchmarks.clone_time_to_98 import STUDY_BEST
from benchmarks.defense_keys import draw_key
from benchmarks.peers import (
    ART_ATTACKS,
    ArtThief,
    PostprocessedOracle,
    art_postprocessors,
    art_victim,
    require_art,
    seed_globals,
)
from benchmarks.provenance import FIGURES, RESULTS, ROOT, Provenance
from benchmarks.render import benchmarks_page
from mea import models
from mea.attacks import make_strategy
from mea.attacks.extract import extract
from mea.data import Pool, Splits, load
from mea.defenses.detector import DetectorConfig
from mea.defenses.store import Defense, fit_defense, load_defense
from mea.metrics import agreement
from mea.oracle import Label, Oracle, OutputMode, Probabilities, VictimOracle
from mea.seeding import generator
from mea.training import TrainConfig, fit, predict_logits
from mea.victim import Victim, VictimConfig, load_victim, train_victim

# ART's thief configuration used by --quick: the best of the full run's search (see docs/benchmarks.md).
ART_BEST = ArtThief(batch_size_fit=64, lr=3e-3)
ART_SEARCH = tuple(ArtThief(batch_size, lr) for batch_size in (64, 256) for lr in (1e-3, 3e-3))
OUTPUTS: dict[str, OutputMode] = {"probabilities": Probabilities(), "label": Label()}


@dataclass(frozen=True)
class Plan:
    quick: bool
    clone_budgets: tuple[int, ...]
    defense_queries: int
    seeds: int = 3
    epochs: int = 5  # the same for every attacker in the clone and defense comparisons
    study_epochs: int = 50
    seed: int = 0  # the seed of the single-run parts (ART's search, the study section, the limits)

    @classmethod
    def make(cls, quick: bool, seeds: int) -> Plan:
        return cls(quick, (10_000,), 5_000, 1) if quick else cls(quick, (10_000, 55_000), 20_000, seeds)


class Bench:
    """The shared pieces: victim, data, evaluation against MNIST test."""

    def __init__(self, victim: Victim, defense: Defense, plan: Plan) -> None:
        self.victim, self.defense, self.plan = victim, defense, plan
        train = load("mnist", "train")
        splits = Splits()
        self.test = load("mnist", "test")
        # Attackers draw from the victim's training split; ART's search is judged on the held-out
        # calibration split (true labels), never on MNIST test.
        self.pool = Pool("mnist-train", train.images[splits.victim_train], None)
        self.validation = train.subset(splits.calibration)
        self.train_images = train.images
        self.fashion = Pool("fashion-mnist", load("fashion-mnist", "train").images, None)
        self.victim_logits = predict_logits(victim.model, self.test.images)

    def queries(self, budget: int, seed: int) -> torch.Tensor:
        index = torch.randperm(len(self.pool), generator=generator(seed, "benchmark-queries"))[:budget]
        return self.pool.images[index]

    def evaluate(self, clone: nn.Module) -> dict[str, float]:
        logits = predict_logits(clone, self.test.images)
        return {
            "accuracy": float((logits.argmax(1) == self.test.labels).float().mean()),
            "fidelity": agreement(logits, self.victim_logits),
        }

    def mea_attack(self, oracle: Oracle, pool: Pool, budget: int, seed: int) -> dict:
        """This project's attack: random selection from `pool`, default clone training, `epochs` epochs."""
        start = time.perf_counter()
        extraction = extract(
            oracle,
            pool,
            make_strategy("random"),
            budget,
            "lenet5",
            TrainConfig(epochs=self.plan.epochs, min_steps=0),
            seed,
            progress=False,
        )
        return {"time_s": time.perf_counter() - start, **self.evaluate(extraction.clone)}

    def art_extract(
        self, attack: Callable, images: torch.Tensor, thief: ArtThief, use_probability: bool, seed: int, **victim
    ) -> tuple[nn.Module, float]:
        """ART's attack on `images`: (the stolen model, seconds spent querying and training)."""
        seed_globals(seed)
        thieved = thief.build(seed)
        start = time.perf_counter()
        art = attack(art_victim(self.victim.model, **victim), thief, len(images), self.plan.epochs, use_probability)
        stolen = art.extract(images.numpy(), thieved_classifier=thieved)
        return stolen.model, time.perf_counter() - start

    def art_attack(
        self, attack: Callable, images: torch.Tensor, thief: ArtThief, use_probability: bool, seed: int, **victim
    ) -> dict:
        model, seconds = self.art_extract(attack, images, thief, use_probability, seed, **victim)
        return {"time_s": seconds, **self.evaluate(model)}

    def warm_up(self, thief: ArtThief) -> None:
        """One small attack of each kind, unmeasured: the first convolutions of a process build
        oneDNN's kernels, and whichever attacker ran first would pay for it."""
        images = self.queries(2_000, 99)
        self.mea_attack(VictimOracle(self.victim.model), Pool("mnist-train", images, None), len(images), 99)
        self.art_attack(ART_ATTACKS["CopycatCNN"], images, thief, True, 99)


def log(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", flush=True)


# --- 1. clone training: this project vs ART --------------------------------------------------------


def search_art(bench: Bench) -> tuple[ArtThief, list[dict]]:
    """ART's thief configuration with the best validation accuracy (CopycatCNN, labels, 10,000 queries)."""
    images = bench.queries(10_000, bench.plan.seed)
    rows = []
    for thief in ART_SEARCH:
        model, seconds = bench.art_extract(ART_ATTACKS["CopycatCNN"], images, thief, False, bench.plan.seed)
        logits = predict_logits(model, bench.validation.images)
        accuracy = float((logits.argmax(1) == bench.validation.labels).float().mean())
        rows.append({**asdict(thief), "validation_accuracy": accuracy, "time_s": seconds})
        log(f"  ART search {thief}: validation accuracy {accuracy:.2%}")
    best = max(rows, key=lambda row: row["validation_accuracy"])
    return ArtThief(best["batch_size_fit"], best["lr"]), rows


def clone_section(bench: Bench, thief: ArtThief) -> dict:
    bench.warm_up(thief)
    rows = []
    for seed in range(bench.plan.seeds):
        for budget in bench.plan.clone_budgets:
            images = bench.queries(budget, seed)
            for output_name, output in OUTPUTS.items():
                oracle = VictimOracle(bench.victim.model, output)
                result = bench.mea_attack(oracle, Pool("mnist-train", images, None), budget, seed)
                cell = {"queries": budget, "output": output_name, "seed": seed}
                rows.append({**cell, "attacker": "mea random", **result})
                log(f"  seed {seed} {budget} {output_name} mea: {result['accuracy']:.2%} in {result['time_s']:.1f} s")
                probabilities = output_name == "probabilities"
                result = bench.art_attack(ART_ATTACKS["CopycatCNN"], images, thief, probabilities, seed)
                rows.append({**cell, "attacker": "ART CopycatCNN", **result})
                log(f"  seed {seed} {budget} {output_name} ART: {result['accuracy']:.2%} in {result['time_s']:.1f} s")
    # KnockoffNets with random sampling draws and trains exactly as CopycatCNN does (ART 1.20): run
    # once, beside CopycatCNN's row of the same seed, to show the clones coincide.
    budget, seed = bench.plan.clone_budgets[0], 0
    knockoff = bench.art_attack(ART_ATTACKS["KnockoffNets(random)"], bench.queries(budget, seed), thief, False, seed)
    same = (budget, "label", "ART CopycatCNN", seed)
    copycat = next(r for r in rows if (r["queries"], r["output"], r["attacker"], r["seed"]) == same)
    log(f"  KnockoffNets(random): {knockoff['accuracy']:.2%} (CopycatCNN {copycat['accuracy']:.2%})")
    # The configuration of the data point in the issue: a victim answering logits, not probabilities.
    images = bench.queries(bench.plan.clone_budgets[0], bench.plan.seed)
    naive = bench.art_attack(ART_ATTACKS["CopycatCNN"], images, thief, True, bench.plan.seed, softmax=False)
    log(f"  ART CopycatCNN on a logit-answering victim: {naive['accuracy']:.2%}")
    return {
        "rows": rows,
        "art_thief": asdict(thief),
        "art_on_logits": {"queries": len(images), **naive},
        "knockoff_random": {
            "queries": budget,
            "output": "label",
            "seed": seed,
            **knockoff,
            "copycat_accuracy": copycat["accuracy"],
            "copycat_fidelity": copycat["fidelity"],
            "identical": knockoff["accuracy"] == copycat["accuracy"] and knockoff["fidelity"] == copycat["fidelity"],
        },
    }


# --- 2. the study's best configuration vs this project's default -----------------------------------


def study_section(bench: Bench) -> dict:
    answers = VictimOracle(bench.victim.model).query(bench.train_images)
    rows = {}
    for name, config in (
        ("mea default", TrainConfig()),
        ("study best", replace(STUDY_BEST, epochs=bench.plan.study_epochs)),
    ):
        clone = models.build("lenet5", bench.plan.seed)
        report = fit(clone, bench.train_images, answers, config, generator(bench.plan.seed, "training"), progress=False)
        rows[name] = {"config": asdict(config), "epochs": report.epochs, "time_s": report.time_s}
        rows[name].update(bench.evaluate(clone))
        log(f"  {name}: {rows[name]['accuracy']:.2%} in {report.time_s:.1f} s")
    return {"queries": len(bench.train_images), "rows": rows}


# --- 3. defenses: the OOD-gated defense vs ART's postprocessors ------------------------------------


def defended_oracles(bench: Bench, seed: int) -> dict[str, Callable[[OutputMode], Oracle]]:
    keyed = replace(bench.defense, secret=draw_key(seed))  # draw `seed` of benchmarks.defense_keys
    oracles: dict[str, Callable[[OutputMode], Oracle]] = {
        "none": lambda output: VictimOracle(bench.victim.model, output),
        f"mea OOD-gated ({bench.defense.policy.spec})": lambda output: keyed.oracle(bench.victim, output),
    }
    for name, postprocessor in art_postprocessors().items():
        oracles[name] = lambda output, post=postprocessor: PostprocessedOracle(
            VictimOracle(bench.victim.model), post, output
        )
    return oracles


def defense_section(bench: Bench) -> dict:
    rows = []
    pools = {"mnist-train": bench.pool, "fashion-mnist": bench.fashion}
    for seed in range(bench.plan.seeds):
        for name, make in defended_oracles(bench, seed).items():
            seed_globals(seed)  # ART's GaussianNoise draws from numpy's global generator
            answers = torch.cat([make(Probabilities()).query(chunk) for chunk in bench.test.images.split(512)])
            benign = float((answers.argmax(1) == bench.test.labels).float().mean())
            for pool_name, pool in pools.items():
                for output_name, output in OUTPUTS.items():
                    seed_globals(seed)
                    result = bench.mea_attack(make(output), pool, bench.plan.defense_queries, seed)
                    rows.append(
                        {
                            "defense": name,
                            "seed": seed,
                            "benign_accuracy": benign,
                            "pool": pool_name,
                            "output": output_name,
                            **result,
                        }
                    )
                    log(
                        f"  seed {seed} {name} / {pool_name} / {output_name}: benign {benign:.2%}, "
                        f"clone {result['accuracy']:.2%}"
                    )
    return {"queries": bench.plan.defense_queries, "epochs": bench.plan.epochs, "rows": rows}


def defense_plot(section: dict, path: Path) -> None:
    """Benign accuracy vs clone accuracy, one panel per (pool, answers); the x axis zooms on the
    defenses that keep benign users served, and any that do not sit at its left edge, labelled."""
    rows = section["rows"]
    defenses = list(dict.fromkeys(row["defense"] for row in rows))
    colours = dict(zip(defenses, plt.get_cmap("tab10").colors, strict=False))
    markers = dict(zip(defenses, "osD^vP*Xh", strict=False))
    usable = [row["benign_accuracy"] for row in rows if row["benign_accuracy"] >= 0.9]
    left = 100 * min(usable) - 0.3 if usable else 0.0
    figure, axes = plt.subplots(2, 2, figsize=(11, 8.5), sharex=True, sharey=True)
    panels = [(pool, output) for pool in ("mnist-train", "fashion-mnist") for output in OUTPUTS]
    for ax, (pool, output) in zip(axes.flat, panels, strict=True):
        for row in rows:
            if (row["pool"], row["output"]) != (pool, output):
                continue
            benign, clone = 100 * row["benign_accuracy"], 100 * row["accuracy"]
            style = {"color": colours[row["defense"]], "s": 70, "alpha": 0.85}
            if benign < left:  # off the zoomed scale: drawn at the edge, its value written beside it
                ax.scatter(left + 0.02, clone, marker="<", **style)
                ax.annotate(
                    f"benign {benign:.1f}%", (left + 0.02, clone), xytext=(6, 4), textcoords="offset points", fontsize=7
                )
            else:
                ax.scatter(benign, clone, marker=markers[row["defense"]], **style)
        ax.set_xlim(left, 100)
        ax.set_ylim(0, 100)
        ax.set_title(f"attacker pool {pool}, answers: {output}", fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("benign accuracy through the defense (%)")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"clone accuracy, {section['queries']:,} queries (%)")
    handles = [plt.Line2D([], [], marker=markers[d], ls="", color=colours[d], label=d, markersize=8) for d in defenses]
    figure.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    figure.suptitle("Defenses: what benign users keep (right is better) vs what attackers get (lower is better)")
    figure.tight_layout(rect=(0, 0.08, 1, 0.97))
    figure.savefig(path, dpi=110)
    plt.close(figure)


# --- 4. limits: throughput against the machine's peak ---------------------------------------------


def limits_section(bench: Bench) -> dict:
    model = bench.victim.model.eval()
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(bench.test.images[:1])
    forward_flops = counter.get_total_flops()

    def best_of(call: Callable[[], None], repeats: int = 5) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        return min(times)

    size = 2048
    a, b = torch.randn(size, size), torch.randn(size, size)
    peak = 2 * size**3 / best_of(lambda: torch.mm(a, b), 10)
    images = bench.test.images
    oracle = VictimOracle(model)
    inference = len(images) / best_of(lambda: [oracle.query(chunk) for chunk in images.split(1024)], 3)
    answers = oracle.query(bench.train_images[:20_000])
    config = TrainConfig(epochs=1, min_steps=0)
    clone = models.build("lenet5", bench.plan.seed)
    report = fit(clone, bench.train_images[:20_000], answers, config, generator(0, "training"), progress=False)
    training = 20_000 / report.time_s
    # A training step is a forward and a backward pass; the backward costs about twice the forward.
    return {
        "forward_flops_per_image": forward_flops,
        "peak_matmul_flops": peak,
        "inference_images_per_s": inference,
        "inference_fraction_of_peak": inference * forward_flops / peak,
        "training_images_per_s": training,
        "training_fraction_of_peak": training * 3 * forward_flops / peak,
    }


# --- the report -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--victim", type=Path, default=None, help="victim directory [default: train one]")
    parser.add_argument("--defense", type=Path, default=None, help="defense directory [default: fit one]")
    parser.add_argument("--quick", action="store_true", help="the short subset (one seed, 10,000 queries)")
    parser.add_argument("--seeds", type=int, default=Plan.seeds, help="seeds of every attack (full mode)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument(
        "--from-json", type=Path, default=None, help="redraw the plot from a saved record and re-render; no measuring"
    )
    args = parser.parse_args()
    if args.from_json is not None:
        record = json.loads(args.from_json.read_text())
        defense_plot(record["defenses"], ROOT / record["plot"])
        write_markdown(record, args.results)
        return
    require_art()
    torch.set_num_threads(args.threads)
    plan = Plan.make(args.quick, args.seeds)
    provenance = Provenance()
    with tempfile.TemporaryDirectory(prefix="mea-bench-") as scratch_name:  # a victim or defense made here
        scratch = Path(scratch_name)
        victim_dir = args.victim
        if victim_dir is None:
            victim_dir = scratch / "victim"
            log(f"training a victim into {victim_dir}")
            train_victim(VictimConfig(), victim_dir, progress=False)
        victim = load_victim(victim_dir)
        if args.defense is None:
            args.defense = scratch / "defense"
            log(f"fitting a defense into {args.defense}")
            fit_defense(victim, args.defense, DetectorConfig())
        bench = Bench(victim, load_defense(args.defense, victim), plan)
        mode = "quick" if plan.quick else "full"
        record: dict = {
            "plan": asdict(plan),
            "victim": {
                "fingerprint": victim.fingerprint,
                "accuracy": float((bench.victim_logits.argmax(1) == bench.test.labels).float().mean()),
                "defense_policy": bench.defense.policy.spec,
            },
        }
        thief = ART_BEST
        if not plan.quick:
            log("1a. searching ART's thief configuration")
            thief, record["art_search"] = search_art(bench)
        log("1. clone training: mea vs ART")
        record["clone"] = clone_section(bench, thief)
        log("2. the study's configuration vs the default")
        record["study"] = study_section(bench)
        log("3. defenses")
        record["defenses"] = defense_section(bench)
        log("4. limits")
        record["limits"] = limits_section(bench)
        args.results.mkdir(parents=True, exist_ok=True)
        plot = FIGURES / f"benchmark_defenses_{mode}.png"
        defense_plot(record["defenses"], plot)
        record["plot"] = os.path.relpath(plot, ROOT)
        record = {"provenance": provenance.record(art=require_art()), **record}
        path = args.results / f"benchmarks_{mode}.json"
        path.write_text(json.dumps(record, indent=2) + "\n")
        log(f"written {path} and {plot}")
        write_markdown(record, args.results)


def write_markdown(record: dict, results: Path) -> None:
    """The full run re-renders docs/benchmarks.md's (and the README's) blocks; the quick run writes its own page."""
    if record["plan"]["quick"]:
        page = results / "BENCHMARKS_quick.md"
        page.write_text(benchmarks_page(record, os.path.relpath(ROOT, results)) + "\n")
        log(f"written {page}")
        return
    findings = [f for f in readme.run(check=False) if f.problem != readme.STALE]
    for finding in findings:
        log(f"warning: {finding}")
    log("re-rendered README.md and docs/benchmarks.md")


if __name__ == "__main__":
    main()
