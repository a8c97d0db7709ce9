"""Benchmarks side by side with IBM ART, the study's configuration and the machine's limits.

One run, one victim, one set of queries: this project's extraction against ART's CopycatCNN and
KnockoffNets; the study's best training configuration against this project's default; this
project's OOD-gated defense against ART's postprocessors under the same attacks; and throughput
against the machine's measured peak.  Writes BENCHMARKS.md, a JSON record and a plot.

    pip install -e '.[bench]'
    python -m benchmarks.run --victim runs/victim --defense runs/defense [--quick]

Without --victim a victim is trained (about 75 s), without --defense one is fitted (a few s).
--quick (under 10 minutes on 2 cores) uses 10,000 queries for the clone comparison, 5,000 per
defended attack and ART's configuration found by the full run's search; the full run also
searches ART's configuration, compares at 55,000 queries (the whole split) too and attacks with 20,000.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.clone_time_to_98 import STUDY_BEST
from benchmarks.peers import (
    ART_ATTACKS,
    ArtThief,
    PostprocessedOracle,
    art_postprocessors,
    art_victim,
    require_art,
    seed_globals,
)
from mea import __version__, models
from mea.attacks import make_strategy
from mea.attacks.extract import extract
from mea.data import MnistSplits, Pool, load
from mea.defenses.detector import DetectorConfig
from mea.defenses.store import Defense, fit_defense, load_defense
from mea.metrics import agreement
from mea.oracle import Label, Oracle, OutputMode, Probabilities, VictimOracle
from mea.seeding import generator
from mea.training import TrainConfig, fit, predict_logits
from mea.victim import Victim, VictimConfig, load_victim, train_victim

# ART's thief configuration used by --quick: the best of the full run's search (see BENCHMARKS.md).
ART_BEST = ArtThief(batch_size_fit=64, lr=3e-3)
ART_SEARCH = tuple(ArtThief(batch_size, lr) for batch_size in (64, 256) for lr in (1e-3, 3e-3))
OUTPUTS: dict[str, OutputMode] = {"probabilities": Probabilities(), "label": Label()}


@dataclass(frozen=True)
class Plan:
    quick: bool
    clone_budgets: tuple[int, ...]
    defense_queries: int
    epochs: int = 5  # the same for every attacker in the clone and defense comparisons
    study_epochs: int = 50
    seed: int = 0

    @classmethod
    def make(cls, quick: bool) -> Plan:
        return cls(quick, (10_000,), 5_000) if quick else cls(quick, (10_000, 55_000), 20_000)


class Bench:
    """The shared pieces: victim, data, evaluation against MNIST test."""

    def __init__(self, victim: Victim, defense: Defense, plan: Plan) -> None:
        self.victim, self.defense, self.plan = victim, defense, plan
        train = load("mnist", "train")
        splits = MnistSplits()
        self.test = load("mnist", "test")
        # Attackers draw from the victim's training split; ART's search is judged on the held-out
        # calibration split (true labels), never on MNIST test.
        self.pool = Pool("mnist-train", train.images[splits.victim_train], None)
        self.validation = train.subset(splits.calibration)
        self.train_images = train.images
        self.fashion = Pool("fashion-mnist", load("fashion-mnist", "train").images, None)
        self.victim_logits = predict_logits(victim.model, self.test.images)

    def queries(self, budget: int) -> torch.Tensor:
        index = torch.randperm(len(self.pool), generator=generator(self.plan.seed, "benchmark-queries"))[:budget]
        return self.pool.images[index]

    def evaluate(self, clone: nn.Module) -> dict[str, float]:
        logits = predict_logits(clone, self.test.images)
        return {
            "accuracy": float((logits.argmax(1) == self.test.labels).float().mean()),
            "fidelity": agreement(logits, self.victim_logits),
        }

    def mea_attack(self, oracle: Oracle, pool: Pool, budget: int) -> dict:
        """This project's attack: random selection from `pool`, default clone training, `epochs` epochs."""
        start = time.perf_counter()
        extraction = extract(
            oracle,
            pool,
            make_strategy("random"),
            budget,
            "lenet5",
            TrainConfig(epochs=self.plan.epochs, min_steps=0),
            self.plan.seed,
            progress=False,
        )
        return {"time_s": time.perf_counter() - start, **self.evaluate(extraction.clone)}

    def art_extract(
        self, attack: Callable, images: torch.Tensor, thief: ArtThief, use_probability: bool, **victim
    ) -> tuple[nn.Module, float]:
        """ART's attack on `images`: (the stolen model, seconds spent querying and training)."""
        seed_globals(self.plan.seed)
        thieved = thief.build(self.plan.seed)
        start = time.perf_counter()
        art = attack(art_victim(self.victim.model, **victim), thief, len(images), self.plan.epochs, use_probability)
        stolen = art.extract(images.numpy(), thieved_classifier=thieved)
        return stolen.model, time.perf_counter() - start

    def art_attack(self, attack: Callable, images: torch.Tensor, thief: ArtThief, use_probability: bool, **victim):
        model, seconds = self.art_extract(attack, images, thief, use_probability, **victim)
        return {"time_s": seconds, **self.evaluate(model)}


def log(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", flush=True)


# --- 1. clone training: this project vs ART --------------------------------------------------------


def search_art(bench: Bench) -> tuple[ArtThief, list[dict]]:
    """ART's thief configuration with the best validation accuracy (CopycatCNN, labels, 10,000 queries)."""
    images = bench.queries(10_000)
    rows = []
    for thief in ART_SEARCH:
        model, seconds = bench.art_extract(ART_ATTACKS["CopycatCNN"], images, thief, False)
        logits = predict_logits(model, bench.validation.images)
        accuracy = float((logits.argmax(1) == bench.validation.labels).float().mean())
        rows.append({**asdict(thief), "validation_accuracy": accuracy, "time_s": seconds})
        log(f"  ART search {thief}: validation accuracy {accuracy:.2%}")
    best = max(rows, key=lambda row: row["validation_accuracy"])
    return ArtThief(best["batch_size_fit"], best["lr"]), rows


def clone_section(bench: Bench, thief: ArtThief) -> dict:
    rows = []
    for budget in bench.plan.clone_budgets:
        images = bench.queries(budget)
        for output_name, output in OUTPUTS.items():
            oracle = VictimOracle(bench.victim.model, output)
            result = bench.mea_attack(oracle, Pool("mnist-train", images, None), budget)
            rows.append({"queries": budget, "output": output_name, "attacker": "mea random", **result})
            log(f"  {budget} {output_name} mea: {result['accuracy']:.2%} in {result['time_s']:.1f} s")
            for name, attack in ART_ATTACKS.items():
                result = bench.art_attack(attack, images, thief, output_name == "probabilities")
                rows.append({"queries": budget, "output": output_name, "attacker": f"ART {name}", **result})
                log(f"  {budget} {output_name} ART {name}: {result['accuracy']:.2%} in {result['time_s']:.1f} s")
    # The configuration of the data point in the issue: a victim answering logits, not probabilities.
    images = bench.queries(bench.plan.clone_budgets[0])
    naive = bench.art_attack(ART_ATTACKS["CopycatCNN"], images, thief, True, softmax=False)
    log(f"  ART CopycatCNN on a logit-answering victim: {naive['accuracy']:.2%}")
    return {"rows": rows, "art_thief": asdict(thief), "art_on_logits": {"queries": len(images), **naive}}


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


def defended_oracles(bench: Bench) -> dict[str, Callable[[OutputMode], Oracle]]:
    oracles: dict[str, Callable[[OutputMode], Oracle]] = {
        "none": lambda output: VictimOracle(bench.victim.model, output),
        f"mea OOD-gated ({bench.defense.policy.spec})": lambda output: bench.defense.oracle(bench.victim, output),
    }
    for name, postprocessor in art_postprocessors().items():
        oracles[name] = lambda output, post=postprocessor: PostprocessedOracle(
            VictimOracle(bench.victim.model), post, output
        )
    return oracles


def defense_section(bench: Bench) -> dict:
    rows = []
    pools = {"mnist-train": bench.pool, "fashion-mnist": bench.fashion}
    for name, make in defended_oracles(bench).items():
        seed_globals(bench.plan.seed)  # ART's GaussianNoise draws from numpy's global generator
        answers = torch.cat([make(Probabilities()).query(chunk) for chunk in bench.test.images.split(512)])
        benign = float((answers.argmax(1) == bench.test.labels).float().mean())
        for pool_name, pool in pools.items():
            for output_name, output in OUTPUTS.items():
                seed_globals(bench.plan.seed)
                result = bench.mea_attack(make(output), pool, bench.plan.defense_queries)
                rows.append(
                    {"defense": name, "benign_accuracy": benign, "pool": pool_name, "output": output_name, **result}
                )
                log(f"  {name} / {pool_name} / {output_name}: benign {benign:.2%}, clone {result['accuracy']:.2%}")
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


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line), platform.processor())
    return {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "art": require_art(),
        "mea": __version__,
    }


def baseline(rows: list[dict], row: dict) -> dict:
    """This project's row at the same queries and answers as `row`."""
    return next(
        r for r in rows if (r["queries"], r["output"], r["attacker"]) == (row["queries"], row["output"], "mea random")
    )


def percent(value: float) -> str:
    return f"{100 * value:.2f}%"


def markdown(record: dict, directory: Path) -> str:
    """BENCHMARKS.md from a record, for a file in `directory` (links are relative to it)."""
    plan, info = record["plan"], record["machine"]
    command = record["command"]
    lines = [
        "# Benchmarks",
        "",
        f"Measured {record['date']} on {info['cpu']} ({info['cores']} cores, {info['memory_gib']} GiB, "
        f"torch {info['torch']} with {info['torch_threads']} threads, ART {info['art']}, mea {info['mea']}, "
        f"Python {info['python']}), {'quick' if plan['quick'] else 'full'} mode, {record['total_s'] / 60:.1f} min.",
        "",
        f"Reproduce: `{command}` (`pip install -e '.[bench]'` first; the victim from `mea train-victim`, "
        "the defense from `mea defend fit`, both deterministic"
        + (
            f"; this victim: {percent(record['victim']['accuracy'])} on MNIST test, fingerprint "
            f"`{record['victim']['fingerprint'][:12]}`)."
            if "victim" in record
            else ")."
        ),
        "Every number below comes from that one run; nothing is copied from elsewhere.",
        "",
        "## 1. Clone training: this project vs ART",
        "",
        f"Same victim, same query images (drawn at random from the victim's training split), "
        f"{plan['epochs']} epochs for every attacker, same thief architecture (LeNet-5). Wall time covers "
        "querying and training. ART's thief: Adam, "
        f"batch {record['clone']['art_thief']['batch_size_fit']}, LR {record['clone']['art_thief']['lr']:g}"
        + (" (the best of the search below)." if "art_search" in record else " (the best of the full run's search)."),
        "",
        "| queries | answers | attacker | clone accuracy | fidelity | wall time | ART time / mea time |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = record["clone"]["rows"]
    for row in rows:
        ours = baseline(rows, row)
        ratio = "" if row is ours else f"{row['time_s'] / ours['time_s']:.1f}x"
        lines.append(
            f"| {row['queries']:,} | {row['output']} | {row['attacker']} | {percent(row['accuracy'])} | "
            f"{percent(row['fidelity'])} | {row['time_s']:.1f} s | {ratio} |"
        )
    naive = record["clone"]["art_on_logits"]
    lines += [
        "",
        "What ART needs to work at its best (read from its code, `benchmarks/peers.py`):",
        "",
        f"- **The victim must answer probabilities.** ART's `PyTorchClassifier.predict` returns what the model "
        "returns; around a victim that ends in logits, `use_probability=True` trains on logits as if they were "
        f"probabilities: CopycatCNN then reaches {percent(naive['accuracy'])} at {naive['queries']:,} queries "
        "(measured in this run). Wrapped with its softmax, as a service answers, it works (table above).",
        "- **`batch_size_fit` defaults to 1**: one optimiser step per query, far slower and no better; "
        "the search below picks batch size and learning rate on a held-out validation split "
        "(MNIST train 55,000-60,000, true labels), never on MNIST test.",
        "- ART draws queries with `np.random.choice` and shuffles with torch's global generator; "
        "both are seeded before every ART call.",
        "",
    ]
    if "art_search" in record:
        lines += ["| ART batch | ART LR | validation accuracy | time |", "|---|---|---|---|"]
        for row in record["art_search"]:
            lines.append(
                f"| {row['batch_size_fit']} | {row['lr']:g} | {percent(row['validation_accuracy'])} | "
                f"{row['time_s']:.1f} s |"
            )
        lines.append("")
    lines += verdict(record)
    study = record["study"]["rows"]
    default, best = study["mea default"], study["study best"]
    lines += [
        "",
        "## 2. The study's best configuration vs this project's default",
        "",
        f"{record['study']['queries']:,} probability answers (MNIST train), training time only.",
        "",
        "| configuration | epochs | clone accuracy | fidelity | training time |",
        "|---|---|---|---|---|",
        f"| this project's default (Adam one-cycle, peak LR 3e-2, batch 256, distillation T=4) | {default['epochs']} | "
        f"{percent(default['accuracy'])} | {percent(default['fidelity'])} | {default['time_s']:.1f} s |",
        f"| the study's best (Adam, LR 5e-4 constant, batch 512, cross-entropy on probabilities) | {best['epochs']} | "
        f"{percent(best['accuracy'])} | {percent(best['fidelity'])} | {best['time_s']:.1f} s |",
        "",
        f"Ratio: the study's configuration takes **{best['time_s'] / default['time_s']:.1f}x** the time, for "
        f"{100 * (best['accuracy'] - default['accuracy']):+.2f} points of accuracy. (The study reports 98.11% "
        "in 590 s on its own machine.)",
        "",
        "## 3. Defenses: this project's OOD-gated defense vs ART's postprocessors",
        "",
        f"This project's attack (random selection, default training, {record['defenses']['epochs']} epochs, "
        f"{record['defenses']['queries']:,} queries) against each defended victim; benign accuracy is MNIST test "
        "answered through the defense (top-1). ART's postprocessors at their documented defaults, applied to each "
        "query batch as ART's `predict` applies them.",
        "",
        "Clone accuracy on MNIST test (fidelity in the JSON):",
        "",
        "| defense | benign accuracy | MNIST-train pool, probabilities | MNIST-train pool, labels "
        "| Fashion pool, probabilities | Fashion pool, labels |",
        "|---|---|---|---|---|---|",
    ]
    rows = record["defenses"]["rows"]
    for defense in dict.fromkeys(row["defense"] for row in rows):
        cells = {(row["pool"], row["output"]): row for row in rows if row["defense"] == defense}
        benign = next(iter(cells.values()))["benign_accuracy"]
        clones = " | ".join(
            percent(cells[pool, output]["accuracy"]) for pool in ("mnist-train", "fashion-mnist") for output in OUTPUTS
        )
        lines.append(f"| {defense} | {percent(benign)} | {clones} |")
    lines += [
        "",
        f"![defenses]({os.path.relpath(record['plot'], directory)})",
        "",
        *defense_reading(rows),
        "",
        "Why, from the code: ART's postprocessors are stateless transforms of the probabilities and never see "
        "the input, so none of them can tell an attacker's query from a benign one, and the top-1-preserving "
        "ones (ReverseSigmoid, Rounded, HighConfidence) leave every label as it was. GaussianNoise draws fresh "
        "noise per call (`np.random.normal`), so asking the same question again and averaging removes it. "
        "ClassLabels, as shipped in ART 1.20, marks in every row the top class of every row of the batch "
        "(`class_labels[:, index_labels] = 1`): batched answers become useless to benign users and attackers "
        "alike (one row at a time it is the label-only answer). The OOD-gated defense answers in-distribution "
        "queries exactly and poisons flagged ones with keyed, repeat-proof noise: it stops the surrogate-pool "
        "attacker and, by design, not the in-distribution one, whose cost only quotas and label-only answers "
        "raise (README, defense section).",
        "",
        "## 4. Limits: throughput against the machine's peak",
        "",
    ]
    limits = record["limits"]
    lines += [
        "| quantity | value |",
        "|---|---|",
        f"| LeNet-5 forward FLOPs per image (FlopCounterMode) | {limits['forward_flops_per_image'] / 1e6:.3f} M |",
        f"| peak fp32 matmul (2048x2048, best of 10) | {limits['peak_matmul_flops'] / 1e9:.1f} GFLOP/s |",
        f"| victim inference, batch 1,024 | {limits['inference_images_per_s']:,.0f} images/s = "
        f"{percent(limits['inference_fraction_of_peak'])} of peak |",
        f"| clone training, batch 256 (forward + backward = 3x forward FLOPs) | "
        f"{limits['training_images_per_s']:,.0f} images/s = {percent(limits['training_fraction_of_peak'])} of peak |",
        "",
        "FLOPs count the convolutions and matrix products (pooling and activations are not counted). A LeNet "
        "is too small to keep the matrix units busy: its convolutions have 6 and 16 output channels, so most "
        "of its time goes to memory traffic (im2col, pooling, activations) and per-operation overhead rather "
        "than arithmetic. Faster arithmetic would help it little; what does help is fewer passes over the data "
        "(section 2: 3 epochs instead of 50 for the same accuracy).",
        "",
    ]
    return "\n".join(lines)


def defense_reading(rows: list[dict]) -> list[str]:
    """Per attack, which defense leaves the attacker least, and what benign users keep there."""
    lines = ["Reading it, attack by attack (lowest clone accuracy among defenses keeping benign accuracy >= 98%):", ""]
    for pool in ("mnist-train", "fashion-mnist"):
        for output in OUTPUTS:
            cell = [row for row in rows if (row["pool"], row["output"]) == (pool, output)]
            undefended = next(row for row in cell if row["defense"] == "none")
            usable = [row for row in cell if row["benign_accuracy"] >= 0.98 and row["defense"] != "none"]
            best = min(usable, key=lambda row: row["accuracy"])
            lines.append(
                f"- {pool} pool, {output}: undefended {percent(undefended['accuracy'])}; best "
                f"{best['defense']}, {percent(best['accuracy'])} (benign {percent(best['benign_accuracy'])})."
            )
    return lines


def verdict(record: dict) -> list[str]:
    """Where this project is ahead of ART and where it is not, computed from the rows."""
    rows = record["clone"]["rows"]
    lines = ["Verdict, from the rows above:", ""]
    for row in rows:
        if row["attacker"] == "mea random":
            continue
        ours = baseline(rows, row)
        accuracy = "ahead" if ours["accuracy"] > row["accuracy"] else "**behind**"
        faster = "faster" if ours["time_s"] < row["time_s"] else "**slower**"
        lines.append(
            f"- {row['queries']:,} {row['output']} vs {row['attacker']}: mea is {accuracy} in accuracy "
            f"({100 * (ours['accuracy'] - row['accuracy']):+.2f} points) and {faster} "
            f"({row['time_s'] / ours['time_s']:.1f}x)."
        )
    lines += [
        "",
        "Both train the same LeNet-5 for the same number of epochs on the same answers; what differs is the "
        "training loop. This project's default: Adam with a one-cycle schedule up to a high peak rate, a loss on "
        "temperature-softened targets, channels-last tensors indexed in place. ART's `fit`: a constant rate, "
        "a DataLoader over the whole array, and a model wrapper that returns every layer's output.",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--victim", type=Path, default=None, help="victim directory [default: train one]")
    parser.add_argument("--defense", type=Path, default=None, help="defense directory [default: fit one]")
    parser.add_argument("--quick", action="store_true", help="the under-10-minute subset")
    parser.add_argument(
        "--markdown",
        type=Path,
        default=None,
        help="[default: BENCHMARKS.md, quick: benchmarks/results/BENCHMARKS_quick.md]",
    )
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    parser.add_argument(
        "--from-json", type=Path, default=None, help="rewrite the markdown and plot from a saved record; no measuring"
    )
    args = parser.parse_args()
    if args.from_json is not None:
        record = json.loads(args.from_json.read_text())
        defense_plot(record["defenses"], Path(record["plot"]))
        markdown_path = args.markdown or (
            args.results / "BENCHMARKS_quick.md" if record["plan"]["quick"] else Path("BENCHMARKS.md")
        )
        markdown_path.write_text(markdown(record, markdown_path.parent))
        log(f"rewritten {markdown_path} and {record['plot']} from {args.from_json}")
        return
    start = time.perf_counter()
    require_art()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    plan = Plan.make(args.quick)
    given = [f"--{name} {value}" for name, value in (("victim", args.victim), ("defense", args.defense)) if value]
    command = " ".join(["python -m benchmarks.run", *given, *(["--quick"] if plan.quick else [])])
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
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": command,
            "plan": asdict(plan),
            "machine": machine(),
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
        plot = args.results / f"benchmark_defenses_{mode}.png"
        defense_plot(record["defenses"], plot)
        record["plot"] = str(plot)
        record["total_s"] = time.perf_counter() - start
        args.markdown = args.markdown or (args.results / "BENCHMARKS_quick.md" if plan.quick else Path("BENCHMARKS.md"))
        (args.results / f"benchmarks_{mode}.json").write_text(json.dumps(record, indent=2) + "\n")
        args.markdown.write_text(markdown(record, args.markdown.parent))
        log(
            f"written {args.markdown}, {args.results / f'benchmarks_{mode}.json'} and {plot} "
            f"in {record['total_s']:.0f} s"
        )


if __name__ == "__main__":
    main()
