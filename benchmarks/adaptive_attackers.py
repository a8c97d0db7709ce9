"""Adaptive attackers against the defense: each one's clone, beside the same attack undefended;
benign clients through the same gate; and the synthetic-step attackers over HTTP.

Three defenders: none; the defended oracle (OOD detector + keyed misinformation, stateless); and
the service's gate (the same plus per-client PRADA, the synthetic-step detector and OOD-rate
escalation, as `mea serve` runs it: `Defense.gate`).  Attackers: random Fashion-MNIST queries,
plainly and with repeat averaging or jitter consensus (2 grey levels, as before; then as an
attacker who knows the noise is keyed on a coarse code of the image: 16 grey levels, or copies
shifted by a pixel); JBDA and targeted JBDA (label-only, 150 seeds), plainly and hidden in cover
traffic of natural images at 4, 9, 19 and 49 natural queries per synthetic one; the 150 seeds
alone (what a refused JBDA attacker keeps); and the in-distribution attacker (random
`mnist-train`), which no OOD defense is meant to stop.  Benign clients (MNIST test in order and
shuffled, each digit three times with shifts of up to two pixels, all of one class, one burst
of 5,000) are answered by the gate: refused or not, and their label accuracy against the
undefended victim's.  Over HTTP: `mea serve` with the defense, a label-only key per attacker,
`mea attack --url --strategy jbda|jbda-tr --queries 4800`, and a natural-MNIST client of 10,000
queries.

Every scenario runs once per draw d: attacker seed d and, for the defended columns, the noise key
of draw d of `benchmarks.defense_keys` (the fitted detector of --defense, another key), so that a
figure is never one key's luck; the summary gives the mean and the sample standard deviation.

    python -m benchmarks.adaptive_attackers --victim DIR --defense DIR [--draws 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.defense_keys import draw_key, spread
from benchmarks.provenance import RESULTS, Provenance
from mea.attacks import extract, make_strategy
from mea.attacks.adaptive import CoverTraffic, JitterConsensus, RepeatAveraging
from mea.data import load, make_pool
from mea.defenses.gate import ClientOracle
from mea.defenses.prada import REFUSED
from mea.defenses.steps import benign_streams
from mea.defenses.store import Defense, load_defense
from mea.errors import ConfigError
from mea.metrics import agreement
from mea.oracle import Oracle, VictimOracle, parse_output
from mea.training import LabelLoss, TrainConfig, predict_logits
from mea.victim import Victim, load_victim

TRAIN = TrainConfig(shift=2)
LABEL_TRAIN = TrainConfig(shift=2, loss=LabelLoss.HARD)
JBDA_BUDGET = 4_800  # 150 seeds doubled five times
SEEDS = 150
COVER_BUDGET = 10_000
COVER_RATIOS = (4.0, 9.0, 19.0, 49.0)
NATURAL_HTTP_QUERIES = 10_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--victim", type=Path, required=True)
    parser.add_argument("--defense", type=Path, required=True)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads")
    parser.add_argument("--out", type=Path, default=RESULTS / "adaptive_attackers.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    provenance = Provenance()
    victim = load_victim(args.victim)
    fitted = load_defense(args.defense, victim)
    rows, benign, http = [], [], []
    for draw in range(args.draws):
        defense = dataclasses.replace(fitted, secret=draw_key(draw))
        rows += run_draw(victim, defense, args.queries, seed=draw)
        benign += benign_rows(victim, defense, seed=draw)
        http += http_rows(args.victim, args.defense, args.threads, seed=draw)
    payload = {
        "provenance": provenance.record(),
        "victim_fingerprint": victim.fingerprint,
        "draws_rule": "draw d: noise key SHA-256('mea-benchmark-key/d'), attacker seed d",
        "sd": "sample standard deviation (n - 1) over the draws",
        "steps": None if fitted.steps is None else dataclasses.asdict(fitted.steps),
        "rows": rows,
        "summary": summarise(rows),
        "benign": benign,
        "http": http,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"written to {args.out}")


def summarise(rows: list[dict]) -> list[dict]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["attacker"], row["defender"]), []).append(row)
    summary = []
    for (attacker, defender), group in groups.items():
        entry: dict = {"attacker": attacker, "defender": defender, "budget": group[0]["budget"], "draws": len(group)}
        for key in ("clone_accuracy", "fidelity", "answers_kept", "queries_spent"):
            values = [float(row[key]) for row in group if row[key] is not None]
            entry[key] = spread(values) if values else None  # None: refused before any answer, every draw
        entry["no_clone"] = sum(row["clone_accuracy"] is None for row in group)
        entry["refused_after"] = [row["refused_after"] for row in group]
        for key in ("prada_flagged_at", "steps_flagged_at"):
            entry[key] = [(row["client"] or {}).get(key) for row in group]
        summary.append(entry)
    return summary


def run_draw(victim: Victim, defense: Defense, queries: int, seed: int) -> list[dict]:
    """Every scenario against every defender it applies to, with this draw's key and seed."""
    test = load("mnist", "test")
    victim_logits = predict_logits(victim.model, test.images)
    pools = {name: make_pool(name) for name in ("fashion-mnist", "mnist-train")}
    probabilities, label = parse_output("probabilities"), parse_output("label")

    def undefended(output, budget):
        return VictimOracle(victim.model, output, budget=budget)

    def defended(output, budget):
        return defense.oracle(victim, output, budget=budget)

    def service(output, budget):
        return ClientOracle(defense.gate(victim, output, budget=budget), "attacker")

    defenders: dict[str, Callable[..., Oracle]] = {
        "none": undefended,
        "defended oracle": defended,
        "service gate": service,
    }
    everyone = tuple(defenders)

    def consensus(jitter: float, shift: int = 0):
        return lambda o: JitterConsensus(o, 3, jitter=jitter, seed=seed, shift=shift)

    # (attacker, pool, strategy factory, output, budget, oracle wrapper, defenders)
    scenarios = [
        (
            "random fashion-mnist",
            "fashion-mnist",
            lambda: make_strategy("random"),
            probabilities,
            queries,
            None,
            everyone,
        ),
        (
            "random fashion-mnist + repeat averaging x4",
            "fashion-mnist",
            lambda: make_strategy("random"),
            probabilities,
            queries,
            lambda o: RepeatAveraging(o, 4),
            ("none", "defended oracle"),
        ),
        (
            "random fashion-mnist + jitter consensus x3",
            "fashion-mnist",
            lambda: make_strategy("random"),
            probabilities,
            queries,
            consensus(2 / 255),
            everyone,
        ),
        (
            "random fashion-mnist + jitter consensus x3, 16 grey levels (scheme-aware)",
            "fashion-mnist",
            lambda: make_strategy("random"),
            probabilities,
            queries,
            consensus(16 / 255),
            ("none", "defended oracle"),
        ),
        (
            "random fashion-mnist + consensus x3 of copies shifted by 1 px (scheme-aware)",
            "fashion-mnist",
            lambda: make_strategy("random"),
            probabilities,
            queries,
            consensus(2 / 255, shift=1),
            ("none", "defended oracle"),
        ),
        (
            f"the {SEEDS} seeds alone, label-only",
            "mnist-train",
            lambda: make_strategy("jbda"),
            label,
            SEEDS,
            None,
            ("none",),
        ),
        (
            "jbda, label-only, 150 seeds",
            "mnist-train",
            lambda: make_strategy("jbda"),
            label,
            JBDA_BUDGET,
            None,
            everyone,
        ),
        (
            "jbda-tr, label-only, 150 seeds",
            "mnist-train",
            lambda: make_strategy("jbda-tr"),
            label,
            JBDA_BUDGET,
            None,
            everyone,
        ),
    ]
    for ratio in COVER_RATIOS:
        scenarios.append(
            (
                f"jbda-tr + {ratio:g}:1 cover traffic of mnist-train",
                "mnist-train",
                lambda ratio=ratio: CoverTraffic(make_strategy("jbda-tr"), ratio),
                label,
                COVER_BUDGET,
                None,
                ("none", "service gate") if ratio == COVER_RATIOS[0] else ("service gate",),
            )
        )
    scenarios.append(
        (
            "random mnist-train (in-distribution)",
            "mnist-train",
            lambda: make_strategy("random"),
            probabilities,
            queries,
            None,
            everyone,
        )
    )
    rows = []
    for attacker, pool_name, strategy, output, budget, wrap, which in scenarios:
        for defender in which:
            oracle = defenders[defender](output, budget)
            if wrap is not None:
                oracle = wrap(oracle)
            train = LABEL_TRAIN if output == label else TRAIN
            try:
                result = extract(oracle, pools[pool_name], strategy(), budget, train=train, seed=seed, progress=False)
            except ConfigError:
                if not isinstance(oracle, ClientOracle | JitterConsensus) or not _refused(oracle):
                    raise
                result = None  # refused in its first batch: not one answer, no clone
            clone_logits = None if result is None else predict_logits(result.clone, test.images)
            monitor_state = None
            client = getattr(oracle, "_oracle", oracle)  # a consensus or averaging wrapper's gate
            if isinstance(client, ClientOracle):
                state = client.state
                monitor_state = {
                    "prada_flagged_at": state.prada_flagged_at,
                    "steps_flagged_at": state.steps_flagged_at,
                    "ood_rate": state.ood_rate,
                }
            if result is None:
                spent = oracle.queries_used
                row = {"queries_spent": spent, "answers_kept": 0, "refused_after": spent, "clone_accuracy": None}
                row["fidelity"] = None
            else:
                row = {
                    "queries_spent": result.queries,
                    "answers_kept": len(result.transfer),
                    "refused_after": result.refused_after,
                    "clone_accuracy": float((clone_logits.argmax(1) == test.labels).float().mean()),
                    "fidelity": agreement(clone_logits, victim_logits),
                }
            row = {
                "draw": seed,
                "attacker": attacker,
                "defender": defender,
                "budget": budget,
                **row,
                "client": monitor_state,
            }
            rows.append(row)
            refused = f", refused after {row['refused_after']}" if row["refused_after"] is not None else ""
            accuracy = "none (no answer)" if row["clone_accuracy"] is None else f"{row['clone_accuracy']:.2%}"
            print(
                f"draw {seed}: {attacker[:60]:60s} vs {defender:15s}: clone accuracy {accuracy}, "
                f"{row['answers_kept']} answers kept of {row['queries_spent']} queries{refused}",
                flush=True,
            )
    return rows


def _refused(oracle) -> bool:
    """Whether the service behind this attacker's oracle (a gate, perhaps inside a wrapper) refused it."""
    inner = getattr(oracle, "_oracle", oracle)
    return isinstance(inner, ClientOracle) and inner.state.level >= REFUSED


def benign_rows(victim: Victim, defense: Defense, seed: int, batch: int = 100) -> list[dict]:
    """Benign clients of MNIST test through the gate: refused or not, and their label accuracy
    against the undefended victim's on the same images."""
    test = load("mnist", "test")
    streams = benign_streams(test.images, test.labels, seed=seed, size=len(test))
    # Their labels: the shifted repeats are each test image three times (the first third of it).
    labels = {
        "in order": test.labels,
        "shuffled": test.labels[torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))],
        "shifted repeats": test.labels[: len(test) // 3].repeat_interleave(3),
        "one class": test.labels[test.labels == int(torch.bincount(test.labels).argmax())],
    }
    streams["burst"], labels["burst"] = test.images[:5000], test.labels[:5000]
    rows = []
    for name, images in streams.items():
        gate = defense.gate(victim, parse_output("label"))
        size = len(images) if name == "burst" else batch
        answered, refused_after = [], None
        for start in range(0, len(images), size):
            if gate.refused("benign"):
                refused_after = start
                break
            answers, _, _ = gate.answer("benign", images[start : start + size])
            answered.append(answers.argmax(1))
        answers = torch.cat(answered)
        truth = labels[name][: len(answers)]
        own = predict_logits(victim.model, images[: len(answers)]).argmax(1)
        # The same client through the defense without per-client escalation (the OOD gate's policy
        # and the watermark only): what the stream detectors themselves cost it.
        stateless = defense.oracle(victim, parse_output("label"))
        plain = torch.cat(
            [stateless.respond(images[i : i + size], "benign").answers.argmax(1) for i in range(0, len(answers), size)]
        )
        state = gate.monitor.state("benign")
        row = {
            "draw": seed,
            "client": name,
            "queries": len(images),
            "refused_after": refused_after,
            "level": state.level,
            "steps": 0 if state.step_record is None else state.step_record.steps,
            "prada_flagged_at": state.prada_flagged_at,
            "accuracy": float((answers == truth).float().mean()),
            "without_escalation_accuracy": float((plain == truth).float().mean()),
            "undefended_accuracy": float((own == truth).float().mean()),
        }
        rows.append(row)
        print(
            f"draw {seed}: benign {name:16s}: accuracy {row['accuracy']:.2%} (undefended "
            f"{row['undefended_accuracy']:.2%}), level {row['level']}, steps {row['steps']}",
            flush=True,
        )
    return rows


def http_rows(victim_dir: Path, defense_dir: Path, threads: int, seed: int) -> list[dict]:
    """Over HTTP against `mea serve` with the fitted defense: label-only keys, as a user would."""
    from mea.serve.process import create_key, start_server, stop_all

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        server = start_server(victim_dir, root / "service.db", root / "server.log", "--defense", str(defense_dir))
        try:
            for strategy, queries in (
                ("jbda", JBDA_BUDGET),
                ("jbda-tr", JBDA_BUDGET),
                ("random", NATURAL_HTTP_QUERIES),
            ):
                key = create_key(root / "service.db", "--name", f"{strategy}-{seed}", "--output", "label")
                done = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "mea",
                        "--threads",
                        str(threads),
                        "attack",
                        "--victim",
                        str(victim_dir),
                        "--url",
                        server.url,
                        "--api-key",
                        key,
                        "--strategy",
                        strategy,
                        "--queries",
                        str(queries),
                        "--loss",
                        "hard",
                        "--shift",
                        "2",
                        "--seed",
                        str(seed),
                        "--out",
                        str(root / strategy),
                    ],
                    capture_output=True,
                    text=True,
                    env={**os.environ, "CI": "true"},
                )
                if done.returncode != 0:
                    raise RuntimeError(f"mea attack --url --strategy {strategy} failed:\n{done.stderr}")
                metrics = json.loads((root / strategy / "metrics.json").read_text())
                row = {
                    "draw": seed,
                    "client": "natural mnist-train" if strategy == "random" else strategy,
                    "queries": queries,
                    "refused_after": metrics["refused_after"],
                    "clone_accuracy": metrics["clone"]["accuracy"],
                }
                rows.append(row)
                print(f"draw {seed}: over HTTP {row['client']:20s}: {row}", flush=True)
        finally:
            stop_all(server)
    return rows


if __name__ == "__main__":
    main()
