"""The generated blocks of README.md and the docs pages (docs/*.md), each a function of committed results files.

`BLOCKS[name](results)` returns a block's markdown; `benchmarks.readme` puts it between the block's
markers and checks it.  Every block ends with a line naming the file(s) it reads and the command
that wrote them; times carry the machine and its 1-minute load average when they were taken.
Spreads ("±") are sample standard deviations (n - 1) over the draws or seeds named beside them.

Pure Python (json only): the check runs in the test suite without torch.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path

from benchmarks.render_tramer import readme_tramer

RESULTS_DIR = Path(__file__).resolve().parent / "results"


class MissingResults(Exception):
    """A results file a block needs is not there."""


class Results:
    """The committed results files, read once each."""

    def __init__(self, directory: Path = RESULTS_DIR) -> None:
        self.directory = Path(directory)
        self._cache: dict[str, dict | None] = {}

    def get(self, name: str) -> dict | None:
        """The parsed file, or None if it does not exist."""
        if name not in self._cache:
            path = self.directory / name
            self._cache[name] = json.loads(path.read_text()) if path.exists() else None
        return self._cache[name]

    def __getitem__(self, name: str) -> dict:
        record = self.get(name)
        if record is None:
            raise MissingResults(f"benchmarks/results/{name} is missing; the block's command writes it")
        return record


# --- formatting ------------------------------------------------------------------------------------


def pct(value: float, digits: int = 2) -> str:
    return f"{100 * value:.{digits}f}%"


def pm(spread: dict, digits: int = 1, unit: str = "%") -> str:
    """mean ± sd of a fraction, in percent (the spread of benchmarks.defense_keys.spread)."""
    return f"{100 * spread['mean']:.{digits}f} ± {100 * spread['sd']:.{digits}f}{unit}"


def span(spread: dict, digits: int = 1) -> str:
    """min-max of a fraction, in percent."""
    return f"{100 * spread['min']:.{digits}f}-{100 * spread['max']:.{digits}f}%"


def count(value: float) -> str:
    return f"{value:,.0f}"


def plural(number: int, word: str) -> str:
    return f"{number:,} {word}{'s' * (number != 1)}"


def mean_sd(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def machine_text(provenance: dict, timed: bool) -> str:
    info = provenance["machine"]
    threads = info["torch_threads"]
    text = f"{info['cores']} cores ({info['cpu']}), torch {info['torch']} with {threads} thread{'s' * (threads != 1)}"
    if timed:
        load = provenance["load_average_1min"]["start"]
        if load is not None:
            text += f", 1-minute load {load:.1f} at the start"
            if load >= 0.25 * info["cores"]:
                text += " (**a busy machine: the times are inflated**)"
    return text


def source(provenance: dict, files: str, timed: bool = False) -> str:
    """The line under a block: which file, which command, when, on what machine."""
    revision = provenance["revision"]
    commit = (revision["commit"] or "unknown")[:10] + (" with local changes" if revision["dirty"] else "")
    return (
        f"<sub>From {files}, written by `{provenance['command']}` on {provenance['date']} "
        f"(revision {commit}; {machine_text(provenance, timed)}).</sub>"
    )


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# --- docs/benchmarks.md ---------------------------------------------------------------------------------

OUTPUT_NAMES = ("probabilities", "label")


def _clone_cells(record: dict) -> dict[tuple[int, str, str], dict]:
    """The clone comparison's rows grouped over seeds: accuracy and fidelity spreads, median time."""
    groups: dict[tuple[int, str, str], list[dict]] = {}
    for row in record["clone"]["rows"]:
        groups.setdefault((row["queries"], row["output"], row["attacker"]), []).append(row)
    return {
        key: {
            "accuracy": mean_sd([r["accuracy"] for r in rows]),
            "fidelity": mean_sd([r["fidelity"] for r in rows]),
            "time_s": statistics.median(r["time_s"] for r in rows),
            "seeds": len(rows),
        }
        for key, rows in groups.items()
    }


def bench_header(record: dict) -> str:
    provenance, plan = record["provenance"], record["plan"]
    info = provenance["machine"]
    victim = record["victim"]
    return "\n".join(
        [
            f"Measured {provenance['date']} on {info['cpu']} ({info['cores']} cores, {info['memory_gib']} GiB, "
            f"torch {info['torch']} with {info['torch_threads']} threads, ART {provenance['art']}, mea {info['mea']}, "
            f"Python {info['python']}), {'quick' if plan['quick'] else 'full'} mode, "
            f"{provenance['wall_s'] / 60:.0f} min; {machine_text(provenance, True).split(', ', 2)[-1]}.",
            "",
            f"Reproduce: `{provenance['command']}` (`pip install -e '.[bench]'` first; the victim from "
            "`mea train-victim`, the defense from `mea defend fit`). This victim: "
            f"{pct(victim['accuracy'])} on MNIST test, fingerprint `{victim['fingerprint'][:12]}`. "
            f"Every attack ran for {plural(plan['seeds'], 'seed')} (the query draw, the clone's initialisation and "
            "shuffles, and for the OOD-gated defense the noise key of draw s of `benchmarks.defense_keys`): "
            "accuracies are the mean ± the sample standard deviation over the seeds, times the median.",
        ]
    )


def bench_clone(record: dict) -> str:
    plan = record["plan"]
    cells = _clone_cells(record)
    thief = record["clone"]["art_thief"]
    rows = []
    for queries, output, attacker in cells:
        cell = cells[queries, output, attacker]
        ours = cells[queries, output, "mea random"]
        ratio = "" if attacker == "mea random" else f"{cell['time_s'] / ours['time_s']:.1f}x"
        rows.append(
            [
                count(queries),
                output,
                attacker,
                pm(cell["accuracy"], 2),
                pm(cell["fidelity"], 2),
                f"{cell['time_s']:.1f} s",
                ratio,
            ]
        )
    knockoff = record["clone"]["knockoff_random"]
    same = (
        "**identical** to CopycatCNN's clone of the same seed"
        if knockoff["identical"]
        else f"**not** identical to CopycatCNN's ({pct(knockoff['copycat_accuracy'])})"
    )
    naive = record["clone"]["art_on_logits"]
    lines = [
        f"Same victim, same query images (drawn at random from the victim's training split), {plan['epochs']} "
        "epochs for every attacker, same thief architecture (LeNet-5). Wall time covers querying and training "
        f"(median over {plural(plan['seeds'], 'seed')}). ART's thief: Adam, batch {thief['batch_size_fit']}, "
        f"LR {thief['lr']:g}.",
        "",
        table(
            ["queries", "answers", "attacker", "clone accuracy", "fidelity", "wall time", "ART time / mea time"], rows
        ),
        "",
        f'ART\'s KnockoffNets with `sampling_strategy="random"`, run once ({count(knockoff["queries"])} '
        f"{knockoff['output']} answers, seed {knockoff['seed']}): {pct(knockoff['accuracy'])} accuracy, "
        f"{pct(knockoff['fidelity'])} fidelity in {knockoff['time_s']:.1f} s, {same}. In ART 1.20 it draws its "
        "queries with the same `np.random.choice` call and trains with the same `fit` as CopycatCNN, so it is "
        "not repeated above.",
        "",
        "What ART needs to work at its best (read from its code, `benchmarks/peers.py`): the victim must answer "
        "probabilities (ART's `PyTorchClassifier.predict` returns what the model returns; around a victim that "
        "ends in logits, `use_probability=True` trains on logits as if they were probabilities: CopycatCNN then "
        f"reaches {pct(naive['accuracy'])} at {count(naive['queries'])} queries in this run); "
        "`batch_size_fit` defaults to 1, one optimiser step per query, so the search below picks batch size and "
        "learning rate on a held-out validation split (MNIST train 55,000-60,000, true labels), never on MNIST "
        "test; ART draws queries with `np.random.choice` and shuffles with torch's global generator, both seeded "
        "before every ART call.",
    ]
    if "art_search" in record:
        lines += [
            "",
            table(
                ["ART batch", "ART LR", "validation accuracy", "time"],
                [
                    [str(r["batch_size_fit"]), f"{r['lr']:g}", pct(r["validation_accuracy"]), f"{r['time_s']:.1f} s"]
                    for r in record["art_search"]
                ],
            ),
        ]
    lines += ["", "Verdict, from the rows above (mean accuracy; median time):", ""]
    for (queries, output, attacker), cell in cells.items():
        if attacker == "mea random":
            continue
        ours = cells[queries, output, "mea random"]
        gap = ours["accuracy"]["mean"] - cell["accuracy"]["mean"]
        noise = max(ours["accuracy"]["sd"], cell["accuracy"]["sd"])
        if abs(gap) <= noise:
            accuracy = f"level in accuracy ({100 * gap:+.2f} points, within one sd)"
        else:
            accuracy = f"{'ahead' if gap > 0 else '**behind**'} in accuracy ({100 * gap:+.2f} points)"
        faster = "faster" if ours["time_s"] < cell["time_s"] else "**slower**"
        lines.append(
            f"- {count(queries)} {output} vs {attacker}: mea is {accuracy} and {faster} "
            f"({cell['time_s'] / ours['time_s']:.2f}x)."
        )
    return "\n".join(lines)


def bench_art_timing(results: Results) -> str:
    """Where the time of a 10,000-label extraction goes (benchmarks/results/art_timing.json)."""
    record = results.get("art_timing.json")
    if record is None:
        return "Not yet measured: `python -m benchmarks.art_timing --victim runs/victim` writes art_timing.json."
    s = record["summary"]
    mea, art = s["mea"], s["art"]
    rows = []
    for ours, theirs in zip(mea, art, strict=True):
        rows.append(
            [
                str(ours["epochs"]),
                f"{pct(ours['accuracy'])} in {ours['total_s']:.2f} s",
                f"{pct(theirs['accuracy'])} in {theirs['total_s']:.2f} s",
            ]
        )
    loops = [
        [
            str(loop["batch_size"]),
            f"{pct(loop['mea_loop_accuracy'])} in {loop['mea_loop_s']:.2f} s",
            f"{pct(loop['art_loop_accuracy'])} in {loop['art_loop_s']:.2f} s",
            f"{loop['art_loop_s'] / loop['mea_loop_s']:.2f}x",
        ]
        for loop in s["loops"]
    ]
    cli = s["cli"]
    in_art = s["mea_within_art_time"]
    in_mea = s["art_within_mea_time"]
    equal_time = []
    if in_art is not None:
        equal_time.append(
            f"within ART's {art[-1]['total_s']:.2f} s (5 epochs, {pct(art[-1]['accuracy'])}) mea finishes "
            f"{plural(in_art['epochs'], 'epoch')} for {pct(in_art['accuracy'])}"
        )
    if in_mea is not None:
        equal_time.append(
            f"within mea's {mea[-1]['total_s']:.2f} s (5 epochs, {pct(mea[-1]['accuracy'])}) ART finishes "
            f"{plural(in_mea['epochs'], 'epoch')} for {pct(in_mea['accuracy'])}"
        )
    else:
        equal_time.append(f"ART finishes no epoch within mea's {mea[-1]['total_s']:.2f} s")
    seeds = len(record["seeds"])
    return "\n".join(
        [
            f"{count(record['queries'])} label answers, the same images for both, mean accuracy and median time "
            f"over {plural(seeds, 'seed')}, after a warm-up. Time is querying plus training (mea: "
            f"{s['mea_query_s']:.2f} s of querying; ART: {s['art_query_s']:.2f} s); mea's one-cycle schedule is "
            "only meaningful at its end, so each of its rows is its own run, while ART's constant-rate clone is "
            "evaluated after each epoch of one run.",
            "",
            table(["epochs", "mea (default training)", "ART CopycatCNN (Adam, batch 64, LR 3e-3)"], rows),
            "",
            f"At equal wall time: {'; '.join(equal_time)}. ART's `extract` in one call, timed as `benchmarks.run` "
            f"times it: {s['art_whole_s']:.2f} s for {pct(s['art_whole_accuracy'])}.",
            "",
            "The two training loops on identical work (the same labels, constant LR 3e-3, cross-entropy, 5 epochs):",
            "",
            table(["batch", "mea's loop", "ART's `fit`", "ART / mea"], loops),
            "",
            f"`{cli['command']}` as a user runs it: {cli['query_s']:.2f} s querying + {cli['train_s']:.2f} s "
            f"training ({pct(cli['accuracy'])}); the whole process, with Python's start-up, imports, loading "
            f"MNIST and evaluating, {cli['process_wall_s']:.1f} s.",
            "",
            source(record["provenance"], "`benchmarks/results/art_timing.json`", timed=True),
        ]
    )


def bench_study(record: dict) -> str:
    study = record["study"]["rows"]
    default, best = study["mea default"], study["study best"]
    return "\n".join(
        [
            f"{count(record['study']['queries'])} probability answers (MNIST train), training time only, seed "
            f"{record['plan']['seed']} (one run each: a timing comparison).",
            "",
            table(
                ["configuration", "epochs", "clone accuracy", "fidelity", "training time"],
                [
                    [
                        "this project's default (Adam one-cycle, peak LR 3e-2, batch 256, distillation T=4)",
                        str(default["epochs"]),
                        pct(default["accuracy"]),
                        pct(default["fidelity"]),
                        f"{default['time_s']:.1f} s",
                    ],
                    [
                        "the study's best (Adam, LR 5e-4 constant, batch 512, cross-entropy on probabilities)",
                        str(best["epochs"]),
                        pct(best["accuracy"]),
                        pct(best["fidelity"]),
                        f"{best['time_s']:.1f} s",
                    ],
                ],
            ),
            "",
            f"Ratio: the study's configuration takes **{best['time_s'] / default['time_s']:.1f}x** the time, for "
            f"{100 * (best['accuracy'] - default['accuracy']):+.2f} points of accuracy (the study reports 98.11% "
            "in 590 s on its own machine).",
        ]
    )


def _defense_cells(record: dict) -> dict[tuple[str, str, str], dict]:
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for row in record["defenses"]["rows"]:
        groups.setdefault((row["defense"], row["pool"], row["output"]), []).append(row)
    return {
        key: {
            "accuracy": mean_sd([r["accuracy"] for r in rows]),
            "benign": mean_sd([r["benign_accuracy"] for r in rows]),
        }
        for key, rows in groups.items()
    }


def bench_defenses(record: dict, image_prefix: str = "") -> str:
    section = record["defenses"]
    cells = _defense_cells(record)
    defenses = list(dict.fromkeys(key[0] for key in cells))
    pools = ("mnist-train", "fashion-mnist")
    rows = []
    for defense in defenses:
        benign = cells[defense, pools[0], OUTPUT_NAMES[0]]["benign"]
        rows.append(
            [defense, pm(benign, 2)]
            + [pm(cells[defense, pool, output]["accuracy"], 2) for pool in pools for output in OUTPUT_NAMES]
        )
    seeds = len({row["seed"] for row in section["rows"]})
    lines = [
        f"This project's attack (random selection, default training, {plural(section['epochs'], 'epoch')}, "
        f"{count(section['queries'])} queries) against each defended victim, {plural(seeds, 'seed')}; benign "
        "accuracy is MNIST test answered through the defense (top-1). ART's postprocessors at their documented "
        "defaults, applied to each query batch as ART's `predict` applies them. Clone accuracy on MNIST test:",
        "",
        table(
            [
                "defense",
                "benign accuracy",
                "MNIST-train pool, probabilities",
                "MNIST-train pool, labels",
                "Fashion pool, probabilities",
                "Fashion pool, labels",
            ],
            rows,
        ),
        "",
        # The docs pages sit in docs/, beside the figures; the quick run's page names its own prefix.
        f"![defenses]({image_prefix}{record['plot'] if image_prefix else record['plot'].removeprefix('docs/')})",
        "",
        "Reading it, attack by attack (lowest mean clone accuracy among defenses keeping mean benign accuracy >= 98%):",
        "",
    ]
    for pool in pools:
        for output in OUTPUT_NAMES:
            undefended = cells["none", pool, output]
            usable = [
                (d, cells[d, pool, output])
                for d in defenses
                if d != "none" and cells[d, pool, output]["benign"]["mean"] >= 0.98
            ]
            best_name, best = min(usable, key=lambda item: item[1]["accuracy"]["mean"])
            lines.append(
                f"- {pool} pool, {output}: undefended {pm(undefended['accuracy'], 2)}; best {best_name}, "
                f"{pm(best['accuracy'], 2)} (benign {pm(best['benign'], 2)})."
            )
    return "\n".join(lines)


def bench_limits(record: dict) -> str:
    limits = record["limits"]
    study = record["study"]["rows"]
    return "\n".join(
        [
            table(
                ["quantity", "value"],
                [
                    [
                        "LeNet-5 forward FLOPs per image (FlopCounterMode)",
                        f"{limits['forward_flops_per_image'] / 1e6:.3f} M",
                    ],
                    ["peak fp32 matmul (2048x2048, best of 10)", f"{limits['peak_matmul_flops'] / 1e9:.1f} GFLOP/s"],
                    [
                        "victim inference, batch 1,024",
                        f"{count(limits['inference_images_per_s'])} images/s = "
                        f"{pct(limits['inference_fraction_of_peak'])} of peak",
                    ],
                    [
                        "clone training, batch 256 (forward + backward = 3x forward FLOPs)",
                        f"{count(limits['training_images_per_s'])} images/s = "
                        f"{pct(limits['training_fraction_of_peak'])} of peak",
                    ],
                ],
            ),
            "",
            "FLOPs count the convolutions and matrix products (pooling and activations are not counted). What "
            "helps a network this small is fewer passes over the data rather than faster arithmetic: section 2's "
            f"default reaches {pct(study['mea default']['accuracy'])} in {study['mea default']['epochs']} epochs, "
            f"the study's configuration {pct(study['study best']['accuracy'])} in {study['study best']['epochs']}.",
        ]
    )


def benchmarks_page(record: dict, root: str = ".") -> str:
    """A whole page from one benchmarks.run record (the quick run's page, outside the repository's docs)."""
    return "\n\n".join(
        [
            "# Benchmarks (quick)" if record["plan"]["quick"] else "# Benchmarks",
            bench_header(record),
            "## 1. Clone training: this project vs ART",
            bench_clone(record),
            "## 2. The study's best configuration vs this project's default",
            bench_study(record),
            "## 3. Defenses: this project's OOD-gated defense vs ART's postprocessors",
            bench_defenses(record, f"{root}/"),
            "## 4. Limits: throughput against the machine's peak",
            bench_limits(record),
        ]
    )


# --- README.md: the victim and the default attack --------------------------------------------------


def _load_note(load: dict | None, cores: int) -> str:
    """`load 0.3` for a timing, flagged when the machine was busy."""
    if not load or load.get("start") is None:
        return ""
    busy = load["start"] >= 0.25 * cores
    return f"; 1-minute load {load['start']:.1f}" + (", **busy: inflated**" if busy else "")


def readme_headlines(results: Results) -> str:
    """The README's three results, each from its file, each with a link to the page that holds it."""
    lines = []
    headline = results.get("headline.json")
    if headline is not None:
        attack, victim = headline["attack"], headline["victim"]
        lines.append(
            f"- **Stealing** ([attacks](docs/attacks.md)): the default attack, {count(attack['queries'])} "
            f"`{attack['config']['output']}` answers to public MNIST images, clones the {pct(victim['accuracy'])} "
            f"victim to **{pct(attack['clone']['accuracy'])}** accuracy ({pct(attack['clone']['fidelity'])} "
            f"agreement with it) in **{attack['time_s']['train']:.1f} s** of training on "
            f"{headline['provenance']['machine']['cores']} cores; the study we started from reached 98.11% in 590 s."
        )
    keys, adaptive = results.get("defense_keys.json"), results.get("adaptive_attackers.json")
    if keys is not None:
        summary = keys["summary"]
        fashion = summary["clone_accuracy"]["fashion-mnist"]
        text = (
            f"- **Defending** ([the defense](docs/defense.md)): through the OOD gate a Fashion-MNIST attacker's "
            f"clone falls from {pm(fashion['undefended'])} to **{pm(fashion['defended'])}**, for "
            f"{summary['benign_accuracy']['drop_pp']['mean']:.2f} pp of benign accuracy"
        )
        cells = {(r["attacker"], r["defender"]): r for r in (adaptive or {}).get("summary", [])}
        jbda = cells.get(("jbda-tr, label-only, 150 seeds", "service gate"))
        if jbda is not None and "steps" in adaptive:
            text += (
                f"; the service refuses a label-only JBDA-TR thief {_after(jbda['refused_after'])}, its clone no "
                "better than its seeds"
            )
        lines.append(text + ".")
    ownership, calibration = results.get("ownership.json"), results.get("verify_calibration.json")
    if ownership is not None and calibration is not None:
        strong = [c for c in ownership["clones"] if c["queries"] >= 5_000 and c["spec"]["pool"] == "mnist-train"]
        summary = calibration["summary"]
        accused = sum(any(v["derived"] for v in r["verdicts"].values()) for r in calibration["innocents"])
        lines.append(
            f"- **Proving theft** ([ownership](docs/ownership.md)): `mea verify` shows "
            f"**{sum(c['derived'] for c in strong)} of {len(strong)}** clones of 5,000 queries or more derived at "
            f"p < {ownership['alpha']:g}, from the watermark alone, and **{accused} of {summary['innocents']}** "
            f"innocent models ({summary['victim_recipe']} of them trained exactly as the victim was, with other "
            "seeds)."
        )
    return "\n".join(lines) if lines else "Not yet measured."


def readme_victim(results: Results) -> str:
    record = results["headline.json"]
    victim = record["victim"]
    train = victim["config"]["train"]
    start, end = victim["train_images"].split("[", 1)[1].rstrip("]").split(":")  # "mnist train[0:55000]"
    images = f"{int(end) - int(start):,} images"
    cores = record["provenance"]["machine"]["cores"]
    timing = record.get("victim_training")
    if timing is None:
        time_text = "training time not measured by this file (`--train-victim` measures it)"
    else:
        same = "" if timing["matches_victim"] else " (a victim with other weights: see the file)"
        time_text = (
            f"trained in {timing['time_s']['train']:.0f} s{same} "
            f"({cores} cores{_load_note(timing['load_average_1min'], cores)})"
        )
    return "\n".join(
        [
            f"`{victim['command'].removesuffix(' -q')}` ({train['epochs']} epochs, {train['schedule']}, random "
            f"shifts up to {train['shift']} px, {images}): **{pct(victim['accuracy'])}** MNIST test accuracy, "
            f"macro F1 {victim['f1']:.4f}, {time_text}; fingerprint `{victim['fingerprint'][:12]}`.",
            "",
            source(record["provenance"], "`benchmarks/results/headline.json`"),
        ]
    )


def readme_default_attack(results: Results) -> str:
    record = results["headline.json"]
    attack = record["attack"]
    config, train = attack["config"], attack["config"]["train"]
    clone, victim = attack["clone"], attack["victim"]
    cores = record["provenance"]["machine"]["cores"]
    seconds = attack["time_s"]
    return "\n".join(
        [
            f"`{attack['command']}` (the defaults: `{config['strategy']}` strategy, `{config['pool']}` pool, "
            f"{count(attack['queries'])} `{config['output']}` answers, LeNet_a, {train['epochs']} epochs "
            f"{train['schedule']} at peak LR {train['lr']:g}, batch {train['batch_size']}, distillation at "
            f"temperature {train['temperature']:g}, `--true-label-weight {train['true_label_weight']:g}`):",
            "",
            table(
                ["", "accuracy", "F1", "fidelity", "agreement on uniform noise", "query time", "training time"],
                [
                    ["victim", pct(victim["accuracy"]), f"{victim['f1']:.4f}", "", "", "", ""],
                    [
                        "clone (LeNet_a)",
                        f"**{pct(clone['accuracy'])}**",
                        f"{clone['f1']:.4f}",
                        f"**{pct(clone['fidelity'])}**",
                        pct(clone["uniform_agreement"]),
                        f"{seconds['query']:.1f} s",
                        f"**{seconds['train']:.1f} s**",
                    ],
                ],
            ),
            "",
            f"<sub>Times on {cores} cores{_load_note(attack['load_average_1min'], cores)}.</sub> "
            + source(record["provenance"], "`benchmarks/results/headline.json`"),
        ]
    )


_OP_NAMES = {
    "aten::convolution_backward": "convolution backward",
    "aten::max_pool2d_with_indices": "max-pooling",
    "aten::mkldnn_convolution": "convolution forward",
    "Optimizer.step#Adam.step": "Adam",
    "aten::max_pool2d_with_indices_backward": "max-pooling backward",
    "aten::threshold_backward": "ReLU backward",
    "aten::mm": "matrix products",
    "aten::fill_": "filling",
    "aten::clamp_min": "ReLU",
    "aten::addmm": "matrix products",
}


def readme_time_to_98(results: Results) -> str:
    record = results["clone_time_to_98.json"]
    table_record = results.get("seed_table.json")
    target = record["target"]
    ours = next(r for r in record["default_runs"] if r["accuracy"] >= target)
    study = record["study_best"]
    first = next((h for h in study["history"] if h["accuracy"] >= target), None)
    cores = record["provenance"]["machine"]["cores"]
    load = record["provenance"]["load_average_1min"]
    lines = []
    if table_record is not None:
        run4 = max(table_record["rows"], key=lambda r: r["study"]["accuracy"])["study"]
        lines.append(
            f"The study's best run reached {run4['accuracy']:.2f}% in {run4['time_s']:.0f} s on its own machine. "
            "Where the difference comes from, measured:"
        )
        lines.append("")
    if first is None:
        study_text = f"does not reach {target:.0%} in {len(study['history'])} epochs ({study['train_s']:.1f} s)"
    else:
        study_text = (
            f"needs {first['epoch']} epochs, **{first['train_s']:.1f} s** ({first['train_s'] / ours['train_s']:.1f}x "
            f"longer), and ends at {pct(study['accuracy'])} after {len(study['history'])} epochs in "
            f"{study['train_s']:.0f} s"
        )
    lines.append(
        "- *A better schedule and loss.* One-cycle (Smith & Topin 2017) at a high peak rate, and distillation at "
        "temperature 4 on the log of the answers (Hinton et al. 2015), which recovers the small probabilities a "
        "confident victim hides at temperature 1. `python -m benchmarks.clone_time_to_98 --victim runs/victim` "
        f"({count(record['queries'])} probability answers, training time only): {target:.0%} clone accuracy after "
        f"**{ours['train_s']:.1f} s** ({plural(ours['config']['epochs'], 'epoch')}, {pct(ours['accuracy'])}); "
        "the study's best setting (Adam, LR 5e-4, batch 512, constant LR, plain cross-entropy) run by this same loop "
        f"{study_text}. <sub>Times on {cores} cores{_load_note(load, cores)}.</sub>"
    )
    return "\n".join(lines)


def readme_training_loop(results: Results) -> str:
    record = results["clone_time_to_98.json"]
    layout = results["channels_last.json"]
    speedup = layout["speedup"]
    shares = ", ".join(f"{_OP_NAMES.get(row['op'], row['op'])} {pct(row['share'], 0)}" for row in record["profile"][:5])
    cores = layout["provenance"]["machine"]["cores"]
    return "\n".join(
        [
            "- *A faster loop.* Tensors in memory, the channels-last memory format for oneDNN's convolutions "
            f"(`python -m benchmarks.channels_last`: {speedup['training']:.1f}x faster training, "
            f"{speedup['inference']:.1f}x faster inference on {cores} cores"
            f"{_load_note(layout['provenance']['load_average_1min'], cores)}), pooling before ReLU (the same "
            "function, a quarter of the ReLU work), one thread per core. Where an epoch's time goes now "
            f"(`clone_time_to_98`'s torch profiler, share of self CPU time): {shares}.",
            "",
            source(record["provenance"], "`benchmarks/results/clone_time_to_98.json`", timed=True),
            source(layout["provenance"], "`benchmarks/results/channels_last.json`", timed=True),
        ]
    )


def readme_fidelity_60k(results: Results) -> str:
    """Fidelity against training time with the whole budget (benchmarks.fidelity_60k)."""
    record = results["fidelity_60k.json"]
    cores = record["provenance"]["machine"]["cores"]
    rows = [
        [
            f"`{row['strategy']}`",
            f"`{row['loss']}`",
            str(row["epochs"]),
            f"{pct(row['fidelity_mean'])} (min {pct(row['fidelity_min'])})",
            pct(row["agreement_on_victim_errors_mean"], 1),
            pct(row["accuracy_mean"]),
            f"{row['train_s_mean']:.1f} s",
        ]
        for row in record["summary"]
    ]
    reached = [row for row in record["summary"] if row["fidelity_min"] >= 0.995]
    fastest = min(reached, key=lambda row: row["train_s_mean"]) if reached else None
    verdict = (
        f"99.5% on every seed first with `{fastest['strategy']}` queries and the `{fastest['loss']}` loss at "
        f"{fastest['epochs']} epochs, {fastest['train_s_mean']:.0f} s of training here"
        if fastest
        else "No setting reaches 99.5% on every seed"
    )
    seeds = record["summary"][0]["seeds"]
    return "\n".join(
        [
            f"60,000 probability answers, no self-training, mean of {plural(seeds, 'seed')} (victim: "
            f"{pct(record['victim']['accuracy'])}, {record['victim']['test_errors']} test errors; "
            "*on its errors*: the share of those the clone gets wrong the victim's way):",
            "",
            table(["queries", "loss", "epochs", "fidelity", "on its errors", "accuracy", "training"], rows),
            "",
            f"{verdict}. <sub>Times on {cores} cores"
            f"{_load_note(record['provenance']['load_average_1min'], cores)}.</sub>",
            "",
            "![Fidelity against training time](fidelity_60k.png)",
            "",
            source(record["provenance"], "`benchmarks/results/fidelity_60k.json`", timed=True),
        ]
    )


def readme_fidelity_budgets(results: Results) -> str:
    """The earlier and the current small-budget recipe against the same victim (benchmarks.fidelity_budgets)."""
    record = results["fidelity_budgets.json"]
    machine = record["provenance"]["machine"]
    summary = record["summary"]  # in reading order: benchmarks.fidelity_budgets.summarise
    before_of = {(row["output"], row["budget"]): row for row in summary if row["recipe"] == "before"}

    def cell(row: dict) -> str:
        spread = f" ± {100 * row['fidelity_std']:.2f}" if row["fidelity_std"] is not None else ""
        return f"{100 * row['fidelity_mean']:.2f}{spread}"

    rows = [
        [
            f"{after['budget']:,}",
            after["output"],
            str(after["seeds"]),
            cell(before),
            f"**{cell(after)}**",
            pct(after["agreement_on_victim_errors_mean"], 0),
            f"{pct(after['target'], 1)}: {'met' if after['target_met'] else '**not met**'}",
            f"{before['train_s_mean']:.0f} s / {after['train_s_mean']:.0f} s",
        ]
        for after in summary
        if after["recipe"] == "after" and (before := before_of.get((after["output"], after["budget"]))) is not None
    ]
    return "\n".join(
        [
            table(
                [
                    "queries",
                    "answers",
                    "seeds",
                    "before: fidelity %",
                    "after: fidelity %",
                    "after: on its errors",
                    "issue 16's target",
                    "training before / after",
                ],
                rows,
            ),
            "",
            "Mean ± sample standard deviation over seeds; *on its errors*: the share of the victim's test errors "
            "the clone makes the victim's way. Training times: the mean of the trials' own (in the JSONL), one "
            f"trial at a time on {machine['cores']} cores with {machine['torch_threads']} threads.",
            "",
            f"The victim here is fingerprint `{record['victim']['fingerprint'][:12]}` "
            f"({pct(record['victim']['accuracy'])} accurate, {record['victim']['test_errors']} test errors), "
            f"trained by `mea train-victim` with the same seed on this run's machine "
            f"({machine['cpu']}): not the victim of the other results, since "
            "another CPU's kernels give seeded training other weights. Compare the two recipes with each "
            "other, not with the curves above.",
            "",
            "![Fidelity against the budget, before and after](docs/fidelity_budgets.png)",
            "",
            source(
                record["provenance"],
                "`benchmarks/results/fidelity_budgets.json` (trials in `fidelity_budgets.jsonl`)",
            ),
        ]
    )


def readme_seed_table(results: Results) -> str:
    record = results["seed_table.json"]
    header = [
        "Run",
        "LR",
        "Epochs",
        "Clone accuracy (%)",
        "F1",
        "Time (s)",
        "Fidelity (%)",
        "Study accuracy (%)",
        "Study F1",
        "Study time (s)",
        "Time vs study",
    ]
    rows = []
    for row in record["rows"]:
        study, clone, seconds = row["study"], row["clone"], row["time_s"]["train"]
        rows.append(
            [
                str(study["run"]),
                f"{study['lr']:g}",
                str(study["epochs"]),
                f"{100 * clone['accuracy']:.2f}",
                f"{clone['f1']:.3f}",
                f"{seconds:.1f}",
                f"{100 * clone['fidelity']:.2f}",
                f"{study['accuracy']:.2f}",
                f"{study['f1']:.2f}",
                f"{study['time_s']:.2f}",
                f"{seconds / study['time_s']:.2f}x",
            ]
        )
    beats = [r for r in record["rows"] if 100 * r["clone"]["accuracy"] > r["study"]["accuracy"]]
    ratios = [r["time_s"]["train"] / r["study"]["time_s"] for r in record["rows"]]
    if len(beats) == len(record["rows"]):
        verdict = (
            f"Every row beats the study's accuracy, in {min(ratios):.0%}-{max(ratios):.0%} of the study's time "
            "(its times are from its own machine), with the study's own hyperparameters."
        )
    else:
        behind = ", ".join(str(r["study"]["run"]) for r in record["rows"] if r not in beats)
        verdict = f"Row(s) {behind} do not beat the study's accuracy; the others do."
    seeds = sorted({s for r in record["rows"] for s in r["seeds"]})
    cores = record["provenance"]["machine"]["cores"]
    return "\n".join(
        [
            table(header, rows),
            "",
            f"{verdict} {'Seeds' if len(seeds) > 1 else 'Seed'} {', '.join(map(str, seeds))}; time is the clone's "
            f"training time on {cores} cores"
            f"{_load_note(record['provenance']['load_average_1min'], cores)}.",
            "",
            source(record["provenance"], "`benchmarks/results/seed_table.json`"),
        ]
    )


# --- README.md: the defense --------------------------------------------------------------------------

SOURCE_NAMES = {"fashion-mnist": "`fashion-mnist`", "gaussian": "`gaussian`", "uniform": "`uniform`"}


def _keys_source(record: dict) -> str:
    return source(record["provenance"], "`benchmarks/results/defense_keys.json`")


def _draws(record: dict) -> int:
    return len(record["draws"])


def readme_defense_table(results: Results) -> str:
    record = results["defense_keys.json"]
    summary = record["summary"]
    benign, flagged = summary["benign_accuracy"], summary["benign_flagged_rate"]
    queries = record["draws"][0]["config"]["queries"]
    rows = [
        [
            "benign accuracy (MNIST test through the defense)",
            pct(benign["undefended"]["mean"]),
            f"**{pm(benign['defended'], 2)}** (drop {benign['drop_pp']['mean']:.2f} pp; "
            f"{pct(flagged['mean'])} of benign queries flagged)",
        ]
    ]
    for source_name in ("fashion-mnist", "gaussian", "uniform", "mnist-train"):
        cell = summary["clone_accuracy"][source_name]
        defended = cell["defended"]
        rows.append(
            [
                f"clone accuracy, {count(queries)} `{source_name}` queries",
                pm(cell["undefended"]),
                f"**{pm(defended)}** ({span(defended)})",
            ]
        )
    detector = record["detector"]
    return "\n".join(
        [
            f"Policy `{record['policy']}`, target benign false-positive rate {pct(detector['target_fpr'], 0)}, "
            f"{count(queries)} queries per source:",
            "",
            table(["", "undefended", f"defended, {_draws(record)} keys"], rows),
            "",
            f"Each cell: mean ± sample standard deviation over {_draws(record)} draws (range in brackets); "
            'draw d uses the noise key SHA-256("mea-benchmark-key/d") and attacker seed d, undefended and '
            "defended alike.",
            "",
            _keys_source(record),
        ]
    )


def readme_detector(results: Results) -> str:
    record = results["defense_keys.json"]
    detection = record["summary"]["detector"]

    def auroc(name: str) -> str:
        return f"{detection[name]['auroc']['mean']:.4f}"

    def flagged(name: str) -> str:
        return pct(detection[name]["flagged_rate"]["mean"], 1)

    config = record["detector"]
    layers = " and ".join(f"`{layer}`" for layer in config["layers"])
    return (
        "Detector (after Lee et al. 2018: class-conditional Gaussians with a tied covariance on the spatially "
        f"averaged {layers} activations, plus the victim's max-softmax confidence as log(-log p_max), each "
        "standardised on training data and summed; threshold at the calibration split's "
        f"{1 - config['target_fpr']:.0%} quantile): AUROC against MNIST test **{auroc('fashion-mnist')}** for "
        f"Fashion-MNIST ({flagged('fashion-mnist')} flagged), {auroc('uniform')} for uniform and "
        f"{auroc('gaussian')} for Gaussian noise ({flagged('uniform')} and {flagged('gaussian')} flagged), "
        f"{auroc('mnist-train')} for `mnist-train` ({flagged('mnist-train')} flagged: it *is* MNIST)."
    )


LAYER_ORDER = (
    "conv1",
    "conv2",
    "fc1",
    "fc2",
    "logits",
    "confidence",
    "conv1+conv2",
    "fc2+confidence",
    "all layers",
    "all layers+confidence",
    "conv1+conv2+confidence (default)",
)


def readme_defense_findings(results: Results) -> str:
    record = results["defense_keys.json"]
    summary = record["summary"]
    draws, swept = _draws(record), summary["sweep_draws"]
    study = summary["layer_study"]
    fashion = {name: study[name]["fashion-mnist"]["mean"] for name in study}
    ranked = sorted(fashion, key=fashion.get)
    layers = ", ".join(
        (f"**`{name}` {fashion[name]:.4f}**" if "default" in name else f"`{name}` {fashion[name]:.3f}")
        for name in LAYER_ORDER
        if name in fashion
    )
    tradeoff = summary["tradeoff"]
    rates = " / ".join(f"{100 * row['target_fpr']['mean']:g}%" for row in tradeoff)
    benign_line = " / ".join(f"{100 * row['benign_accuracy']['mean']:.2f}" for row in tradeoff)
    clone_line = " / ".join(f"{pm(row['clone_accuracy[fashion-mnist]'])}" for row in tradeoff)
    policies = summary["policies"]
    policy_text = "; ".join(
        f"`{row['policy']}` {100 * row['benign_accuracy']['mean']:.2f}% / {pm(row['clone_accuracy[fashion-mnist]'])}"
        for row in policies
    )
    by_name = {row["policy"].split(":")[0]: row for row in policies}
    argmax_note = ""
    top1, misinformation = by_name.get("top1-preserving"), by_name.get("misinformation")
    clone = "clone_accuracy[fashion-mnist]"
    if top1 and misinformation and top1[clone]["mean"] > misinformation[clone]["mean"]:
        argmax_note = " Noise that keeps the argmax still teaches the clone the argmax."
    guarantee = summary["guarantee"]
    undefended = summary["benign_accuracy"]["undefended"]["mean"]
    ramps = summary["severity_ramps"]
    ramp_text = "; ".join(
        f"ramp {row['severity_ramp']['mean']:g}: benign accuracy {pm(row['benign_accuracy'], 2)}, Fashion-MNIST "
        f"clone {pm(row['clone_accuracy[fashion-mnist]'])} ({span(row['clone_accuracy[fashion-mnist]'])})"
        for row in ramps
    )
    ramp = record["detector"]["severity_ramp"]
    top1_text = ""
    if top1:
        top1_text = (
            f"Top-1-preserving: benign top-1 accuracy unchanged by construction (measured "
            f"{pct(top1['benign_accuracy']['mean'])} = {pct(undefended)}). "
        )
    return "\n".join(
        [
            "- **The layer matters more than the method.** AUROC for Fashion-MNIST by layer (`layer_study`): "
            f"{layers}. Lowest: `{ranked[0]}` and `{ranked[1]}`; highest: `{ranked[-1]}`.",
            f"- **Threshold trade-off** (`tradeoff`, mean ± sd over the first {swept} keys): at target FPR {rates}, "
            f"benign accuracy is {benign_line}% and the Fashion-MNIST clone {clone_line}.",
            f"- **Policies** (`policies`: benign accuracy / Fashion-MNIST clone, {swept} keys): {policy_text}."
            f"{argmax_note}",
            f"- **Guarantee.** {top1_text}Label-changing policies: only flagged queries are answered differently, "
            f"so the benign loss is at most the benign flagged rate, {guarantee['bound_pp']['mean']:.2f} pp "
            f"(measured {pm({k: v / 100 for k, v in guarantee['measured_drop_pp'].items()}, 2, ' pp')}).",
            "- **Repeat-proof.** Every noisy answer is a deterministic function of the image and a 256-bit "
            "secret (an HMAC-SHA256 seeds the noise), so asking again returns the identical answer and averaging "
            "gains nothing (tested). "
            + (
                "Here the noise was keyed on a coarse code of the image (`mea.keying`)."
                if record.get("keying") == "coarse"
                else "In this run the noise was keyed on the exact 8-bit pixels; mea now keys it on a coarse code "
                "of the image (`mea.keying`), so that jittered copies share it too (measured in the adaptive "
                "attackers' section); these figures predate that."
            ),
            "- **Severity.** Answers grow more wrong the further a query lies past the threshold (0 at the "
            "threshold, full misinformation at the score that only 1/"
            f"{ramp:g} as many calibration images exceed: the severity ramp), following Kariyappa & Qureshi 2020. "
            f"Over {draws} keys: {ramp_text}.",
            "",
            _keys_source(record),
        ]
    )


def readme_in_distribution(results: Results) -> str:
    record = results["defense_keys.json"]
    cell = record["summary"]["clone_accuracy"]["mnist-train"]
    queries = record["draws"][0]["config"]["queries"]
    return (
        "**What OOD gating does not do.** An attacker who queries natural in-distribution images (here: public "
        f"MNIST) is not slowed: {pm(cell['defended'], 2)} clone accuracy at {count(queries)} queries with the "
        f"defense, {pm(cell['undefended'], 2)} without ({_draws(record)} keys and seeds). Its queries *are* "
        "benign queries, so any detector that keeps benign accuracy lets them through. What raises its cost is "
        "what limits every user: per-key quotas and rate limits on the served API, and poorer answers "
        "(label-only or rounded outputs, set per key); the attack suite below measures how much each of those "
        "costs it."
    )


def _levels(values: list) -> str:
    """Query counts over the draws: 'never', one value, or a range with how many draws reached it."""
    reached = [v for v in values if v is not None]
    if not reached:
        return "never"
    text = count(reached[0]) if min(reached) == max(reached) else f"{count(min(reached))}-{count(max(reached))}"
    return text if len(reached) == len(values) else f"{text} ({len(reached)} of {len(values)} draws)"


def _after(values: list) -> str:
    """'after N queries' over the draws, naming how many draws reached it when not all did."""
    reached = [v for v in values if v is not None]
    if not reached:
        return "never"
    text = count(reached[0]) if min(reached) == max(reached) else f"{count(min(reached))}-{count(max(reached))}"
    partial = "" if len(reached) == len(values) else f" in {len(reached)} of {len(values)} draws"
    return f"after {text} queries{partial}"


def readme_prada(results: Results) -> str:
    record = results["defense_keys.json"]
    prada = record["prada"]
    streams = list(record["draws"][0]["client_detection"])
    rows = []
    for stream in streams:
        states = [draw["client_detection"][stream] for draw in record["draws"]]
        rows.append(
            [
                f"{stream} ({count(states[0]['queries'])})",
                _levels([s["prada_flagged_at"] for s in states]),
                _levels([s["suspect_at"] for s in states]),
                _levels([s["refused_at"] for s in states]),
                f"{statistics.fmean(s['final_statistic'] for s in states if s['final_statistic'] is not None):.3f}"
                if any(s["final_statistic"] is not None for s in states)
                else "",
            ]
        )
    benign = record.get("benign_streams")
    benign_text = ""
    if benign:
        lowest = min(benign["streams"], key=lambda s: s["statistic"])
        flagged = sum(1 for s in benign["streams"] if s["prada_flagged_at"] is not None)
        benign_text = (
            f" Benign streams ({benign['description']}): lowest W {lowest['statistic']:.3f} "
            f"({lowest['name']}); {flagged} of {len(benign['streams'])} flagged."
        )
    return "\n".join(
        [
            "**Per-client detection** after PRADA (Juuti et al. 2019): per key, the minimum L2 distance of each "
            "query to that client's earlier queries of the same predicted class; a Shapiro-Wilk W below "
            f"{prada['threshold']:.2f} after {prada['min_distances']} distances flags the stream; with the client's "
            f"running OOD rate (suspect at {prada['ood_suspect_rate']:.0%}, refused at "
            f"{prada['ood_refuse_rate']:.0%}, after {prada['ood_min_queries']} queries) the service escalates: a "
            "suspect client gets every answer through the response policy, a refused one gets 403."
            + (
                f" A window of {prada['step_window']} queries holding {prada['step_count']} synthetic steps (queries "
                f"within L-infinity {prada['step_radius']:.2f} of an earlier query of the client: "
                "`mea.defenses.steps`) refuses it too."
                if "step_radius" in prada
                else ""
            )
            + " Measured by "
            f"`mea defend eval`'s `client_detection` over {_draws(record)} draws (query counts; W: the stream's "
            f"final Shapiro-Wilk statistic, mean over draws).{benign_text}",
            "",
            table(["client stream", "PRADA flagged at", "suspect at", "refused at", "final W"], rows),
            "",
            _keys_source(record),
        ]
    )


# --- README.md: the service -----------------------------------------------------------------------


def readme_serve_throughput(results: Results) -> str:
    record = results["serve_throughput.json"]
    rows = record["rows"]

    def cell(defense: bool | None, encoding: str, batch: int) -> dict | None:
        return next((r for r in rows if (r["defense"], r["encoding"], r["batch"]) == (defense, encoding, batch)), None)

    lines = []
    model = cell(None, "in-process", 256), cell(None, "in-process", 1)
    if model[0] is not None:
        lines.append(
            [
                "in-process oracle (no server)",
                f"{count(model[0]['images_per_s'])} images/s, p50 {model[0]['p50_ms']:.1f} ms",
                "",
                f"{count(model[1]['images_per_s'])} images/s, p50 {model[1]['p50_ms']:.2f} ms",
            ]
        )
    for defense in (False, True):
        b256, j256, b1 = cell(defense, "binary", 256), cell(defense, "json", 256), cell(defense, "binary", 1)
        lines.append(
            [
                "`mea serve`, defended" if defense else "`mea serve`, undefended",
                f"{count(b256['images_per_s'])} images/s, p50 {b256['p50_ms']:.0f} ms, p99 {b256['p99_ms']:.0f} ms",
                f"{count(j256['images_per_s'])} images/s",
                f"{count(b1['images_per_s'])} images/s, p50 {b1['p50_ms']:.1f} ms",
            ]
        )
    off, on = cell(False, "binary", 256), cell(True, "binary", 256)
    cost = 1 - on["images_per_s"] / off["images_per_s"]
    findings = [f"The defense's measured cost at batch 256 (binary): {cost:+.0%} of throughput."]
    if "share_of_in_process" in on:
        rounds = on["share_of_in_process"]["rounds"]
        reference = on["share_of_in_process"]["reference"]
        findings.append(
            # One decimal: the issue's target is a share of 60%, and 59.5% must not read as met.
            f"Served with the defense, binary batch 256 runs at {on['share_of_in_process']['median']:.1%} of the "
            f"in-process oracle's rate (the median over {len(rounds)} rounds, each against {reference} it: "
            f"{', '.join(f'{share:.0%}' for share in rounds)}; undefended: "
            f"{off['share_of_in_process']['median']:.0%})."
        )
    elif model[0] is not None:
        findings.append(
            f"Served with the defense, binary batch 256 runs at {on['images_per_s'] / model[0]['images_per_s']:.0%} "
            f"of the in-process oracle's rate measured in the same run (undefended: "
            f"{off['images_per_s'] / model[0]['images_per_s']:.0%})."
        )
    provenance = record.get("provenance")
    where = (
        source(provenance, "`benchmarks/results/serve_throughput.json`", timed=True)
        if provenance
        else f"<sub>From `benchmarks/results/serve_throughput.json`, measured {record['date']} on "
        f"{record['cpus']} cores (no load average recorded).</sub>"
    )
    return "\n".join(
        [
            f"Server and {record['clients']} client threads on the same machine, loopback, {record['rounds']} "
            "alternating rounds per configuration (the median), fresh MNIST images for every request; the "
            "server and the in-process oracle with the same torch threads:",
            "",
            table(["", "binary FP32, batch 256", "JSON, batch 256", "binary, batch 1"], lines),
            "",
            " ".join(findings),
            "",
            where,
        ]
    )


def readme_serve_ab(results: Results) -> str:
    """Two revisions of the defended server measured in turns in one run (benchmarks.serve_ab)."""
    record = results["serve_ab.json"]
    rows = {(r["role"], r["batch"]): r for r in record["rows"]}
    baseline, candidate = rows[("baseline", 256)]["revision"], rows[("candidate", 256)]["revision"]
    lines = []
    for batch in sorted({batch for _, batch in rows}, reverse=True):
        before, after = rows[("baseline", batch)], rows[("candidate", batch)]
        lines.append(
            [
                f"batch {batch}",
                f"{count(before['images_per_s'])} images/s, p50 {before['p50_ms']:.1f} ms",
                f"{count(after['images_per_s'])} images/s, p50 {after['p50_ms']:.1f} ms",
                f"{after['images_per_s'] / before['images_per_s']:.2f}x",
            ]
        )
    return "\n".join(
        [
            f"The defended server at two revisions, served in turns in one run ({record['clients']} client "
            f"threads, binary FP32, {len(rows[('baseline', 256)]['samples'])} rounds each, the median):",
            "",
            table(["", f"before ({baseline})", f"after ({candidate})", "throughput"], lines),
            "",
            source(record["provenance"], "`benchmarks/results/serve_ab.json`", timed=True),
        ]
    )


def readme_detector_overhead(results: Results) -> str:
    record = results["detector_overhead.json"]
    runs = record["runs"]
    rows = []
    for i, row in enumerate(runs[0]):
        same = [run[i] for run in runs]

        def both(key: str, fmt: str, bold: bool = False, same: list = same) -> str:
            text = " / ".join(
                format(r[key] * (100 if fmt.endswith("%") else 1), fmt[:-1] if fmt.endswith("%") else fmt)
                + ("%" if fmt.endswith("%") else "")
                for r in same
            )
            return f"**{text}**" if bold else text

        rows.append(
            [
                count(row["batch"]),
                both("victim_us", ".1f"),
                both("detector_only_overhead", "+.1f%", bold=True),
                both("defended_id_overhead", "+.1f%"),
                both("ood_overhead", "+.0f%"),
            ]
        )
    worst = max(r["detector_only_overhead"] for run in runs for r in run)
    return "\n".join(
        [
            table(
                [
                    "batch",
                    "victim (us/image)",
                    "detector",
                    "defended, benign traffic",
                    "defended, Fashion-MNIST traffic",
                ],
                rows,
            ),
            "",
            f"{len(runs)} runs back to back (a / b). The detector alone costs at most {worst:+.0%} of the victim's "
            "time at any batch size measured.",
            "",
            source(record["provenance"], "`benchmarks/results/detector_overhead.json`", timed=True),
        ]
    )


LOAD_FAULT_COMMAND = "python -m benchmarks.load_fault --victim runs/victim --defense runs/defense"


def _statuses(counts: dict) -> str:
    return ", ".join(f"{code}: {count(n)}" for code, n in sorted(counts.items()))


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.1f} ms"


def readme_load_fault(results: Results) -> str:
    """benchmarks/results/load_fault.json (benchmarks.load_fault): steady load, memory bomb, kill -9."""
    record = results.get("load_fault.json")
    if record is None:
        return f"Not yet measured: `{LOAD_FAULT_COMMAND}` writes `benchmarks/results/load_fault.json`."
    steady, bomb, kill = record["steady"], record["memory_bomb"], record["kill9"]
    kinds = [
        [kind, count(row["requests"]), _statuses(row["statuses"]), _ms(row["p50_ms"]), _ms(row["p99_ms"])]
        for kind, row in steady["by_kind"].items()
    ]
    rss = steady["server_rss_mb"]
    bomb_rss = bomb["server_rss_mb"]
    alone, during = bomb["benign_alone"], bomb["benign_during"]
    resent = _statuses(kill["resent_after_restart"]) or "none"
    return "\n".join(
        [
            f"Steady mixed traffic for {steady['seconds']:.0f} s: {count(steady['requests'])} requests "
            f"({steady['requests_per_s']:.0f}/s), {count(steady['answered_images_per_s'])} images answered per "
            f"second; **{steady['server_5xx']} answers 5xx**; server memory {rss['start']:.0f} MB at the start, "
            f"{rss['peak']:.0f} MB at the peak.",
            "",
            table(["traffic", "requests", "statuses", "p50", "p99"], kinds),
            "",
            f"- Audit log: {count(steady['audit_rows_answered'])} rows for {count(steady['answered_requests'])} "
            f"answered requests, **{steady['answered_missing_from_audit']} answers missing**; "
            f"{count(steady['refused_requests'])} refused requests, counted per minute "
            f"({count(steady['refusals_counted'])} in the counts) instead of one row each.",
            f"- Quota: {count(steady['quota_charged'])} images charged for {count(steady['images_answered'])} "
            f"answered ({steady['quota_mismatches']} keys where the two differ).",
            f"- Memory bomb (shape [1, 1, 28, 28] carrying 7,000,000 numbers, sent announced, within the byte limit "
            f"and chunked; answers {_statuses({k: sum(v.values()) for k, v in bomb['bomb_requests'].items()})}): "
            f"server memory {bomb_rss['before']:.0f} MB before, {bomb_rss['peak']:.0f} MB at the peak "
            f"(**{bomb_rss['growth']:+.0f} MB**); a benign client's p50/p99 {_ms(alone['p50_ms'])} / "
            f"{_ms(alone['p99_ms'])} alone, {_ms(during['p50_ms'])} / {_ms(during['p99_ms'])} during the bomb.",
            f"- `kill -9` after {kill['kill_after_s']:.0f} s of load: {count(kill['answered_before_kill'])} answers "
            f"received, **{kill['answered_missing_from_audit']} missing from the audit log**; "
            f"{kill['in_flight_at_kill']} requests in flight, {kill['charged_but_unanswered_requests']} charged but "
            f"never answered ({kill['charged_but_unanswered_in_flight']} of them in flight); `PRAGMA "
            f"integrity_check`: `{kill['integrity_check']}` (after the restart: "
            f"`{kill['integrity_check_after_restart']}`). The in-flight requests resent with their Idempotency-Key: "
            f"{resent}; {count(kill['charged_on_resend_images'])} images charged for "
            f"{count(kill['answered_afresh_on_resend_images'])} answered afresh.",
            "",
            source(record["provenance"], "`benchmarks/results/load_fault.json`", timed=True),
        ]
    )


OWNERSHIP_COMMAND = "python -m benchmarks.ownership --victim runs/victim --defense runs/defense --threads 1"


def _p(value: float) -> str:
    return "< 1e-300" if value <= 0 else f"{value:.1e}"


def _ownership_cells(row: dict) -> str:
    fingerprint = _p(row["fingerprint_p_value"]) if "fingerprint_p_value" in row else "-"
    verdict = "**derived**" if row["derived"] else "not shown"
    return f"{_p(row.get('watermark_p_value', 1.0))} | {fingerprint} | {verdict} |"


def _first_evidence(model: dict) -> dict:
    """An independent model's verdict against the first reference clone's evidence."""
    return next(value for key, value in model.items() if key.startswith("with_"))


def ownership_markdown(results: dict) -> str:
    """The proof-of-theft tables (benchmarks/results/ownership.json, benchmarks.ownership)."""
    rate = results["watermark"]["rate"]
    benign = [r for r in results["benign"] if r["rate"] is not None]
    default = next(r for r in benign if r["rate"] == rate)
    gate_only = benign[0]["label_accuracy"]
    clones, population, removal = results["clones"], results["population"], results["removal"]
    strong = [c for c in clones if c["queries"] >= 5_000 and c["spec"]["pool"] == "mnist-train"]
    missed = [c["name"] for c in strong if not c["derived"]]
    alpha = results["alpha"]
    passive = results["passive"]
    storage = results["storage"]
    victim = results["victim"]
    header = [
        "suspect",
        "attacker's queries",
        "clone accuracy",
        "watermarked answers it got",
        "watermark p (decides)",
        "fingerprint rank p (indicative)",
        "verdict",
    ]
    clone_rows = []
    for row in clones:
        spec = row["spec"]
        label = f"{spec['strategy']}, {spec['output']}, {spec['pool']}, {spec['arch']}"
        label += ", self-training" if spec["self_training"] else ""
        label += f", r = {spec['rate']:g}" if spec["rate"] != rate else ""
        label += f", **{spec['keys']} keys (Sybil)**" if spec["keys"] > 1 else ""
        clone_rows.append(
            f"| {label} | {row['queries']:,} | {row['accuracy']:.2%} | {row['flips_recorded']} | "
            + _ownership_cells(row)
        )
    removal_rows = [
        f"| {row['base']} then **{row['attack']}** | | {row['accuracy']:.2%} | | " + _ownership_cells(row)
        for row in removal
    ]
    population_rows = [
        f"| independent: {m['name']} | | {m['accuracy']:.2%} | | " + _ownership_cells(_first_evidence(m))
        for m in population
    ]
    evidence_sets = sum(1 for c in clones if c["flips_recorded"])
    lines = [
        f"Measured against victim `{victim['fingerprint'][:12]}` ({victim['accuracy']:.2%}), trained on this "
        "machine with `mea train-victim` (not the victim of the other results: seeded training gives other "
        "weights on another CPU). "
        f"Watermark rate r = {rate:g} (keyed per client and image, group-consistent flips, the runner-up class "
        f"kept as the victim's); verification spends at most {results['verification_budget']['max_queries']:,} queries "
        f"on a suspect; the decision is the exact watermark test's alone, at p < {alpha:g}.",
        "",
        f"- **Benign cost:** a benign client's MNIST-test stream, label answers: {gate_only:.2%} through the OOD "
        f"gate alone, {default['label_accuracy']:.2%} with the watermark at r = {rate:g} "
        f"(**{100 * (gate_only - default['label_accuracy']):.2f} pp**).",
        f"- **Clones from >= 5,000 mnist-train queries shown derived: {sum(c['derived'] for c in strong)} of "
        f"{len(strong)}**"
        + (f" (not: {', '.join(missed)})" if missed else "")
        + f"; largest watermark p {_p(max(c['p_value'] for c in strong))}; at most "
        f"{max(c.get('verify_queries', 0) for c in clones):,} queries to a suspect.",
        f"- **Independent models shown derived: {sum(m['derived_with_any_evidence'] > 0 for m in population)} of "
        f"{len(population)}**, each against every clone's evidence ({evidence_sets} sets); smallest watermark p "
        f"{_p(min(m['smallest_p_over_all_evidence'] for m in population))}. The false-positive claim rests on the "
        "larger held-out population below.",
        f"- **Passive fingerprint** (no answer changed; indicative only), the 60,000-query clone against the "
        f"independent population: AUROC {passive['fingerprint_all']['auroc_clone_60k']:.3f}, rank p "
        f"{_p(passive['fingerprint_all']['clone_60k_rank_p_vs_population'])} (the smallest {len(population)} models "
        f"can give: {_p(1 / (len(population) + 1))}); the natural-error baseline (the victim's own test errors): "
        f"AUROC {passive['natural_errors']['auroc_clone_60k']:.3f}.",
        f"- **Storage:** {storage['sqlite_bytes_per_record']:,.0f} bytes per record in SQLite, "
        f"{storage['sqlite_mb_per_million_queries']:.1f} MB per million queries at r = {storage['rate']:g}.",
        "",
        table(header, []),
    ]
    lines += clone_rows + removal_rows + population_rows
    lines += [
        "",
        "| flip rate r | benign label accuracy | lost (pp) | runner-up as the victim's |",
        "|---|---|---|---|",
    ]
    for row in benign:
        lost = 100 * (gate_only - row["label_accuracy"])
        lines.append(f"| {row['rate']:g} | {row['label_accuracy']:.2%} | {lost:.2f} | {row['runner_up_kept']:.1%} |")
    lines += [
        "",
        "| passive evidence | inputs | 60k clone | independent (mean / max) | AUROC 60k clone "
        "| AUROC clones >= 5k | rank p (60k clone among the population) |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, row in passive.items():
        spread = row["population_rates"]
        lines.append(
            f"| {key} | {row['size']} | {row['clone_60k_rate']:.1%} | {spread['mean']:.1%} / {spread['max']:.1%} | "
            f"{row['auroc_clone_60k']:.3f} | {row['auroc_all_clones_5k_up']:.3f} | "
            f"{_p(row['clone_60k_rank_p_vs_population'])} |"
        )
    forms = ("previous_budget", "equal_weights", "no_neighbours")
    lines += [
        "",
        "<details><summary>What each part of the test buys (the same clones, other forms of the test)</summary>",
        "",
        "| clone (>= 5,000 mnist-train queries) | at most 1,000 queries | equal weights | no neighbours | this test |",
        "|---|---|---|---|---|",
    ]
    for row in strong:
        ablation = row["ablation"]
        lines.append(
            f"| {row['name']} | {_p(ablation['previous_budget'])} | {_p(ablation['equal_weights'])} | "
            f"{_p(ablation['no_neighbours'])} | {_p(row['p_value'])} |"
        )
    lines.append(
        f"| shown derived at p < {alpha:g} | "
        + " | ".join(f"{sum(r['ablation'][f] < alpha for r in strong)} of {len(strong)}" for f in forms)
        + f" | {sum(r['p_value'] < alpha for r in strong)} of {len(strong)} |"
    )
    lines += ["", "</details>"]
    return "\n".join(lines)


def readme_ownership(results: Results) -> str:
    record = results.get("ownership.json")
    if record is None:
        return f"Not yet measured: `{OWNERSHIP_COMMAND}` writes `benchmarks/results/ownership.json`."
    return ownership_markdown(record) + "\n\n" + source(record["provenance"], "`benchmarks/results/ownership.json`")


VERIFY_CALIBRATION_COMMAND = "python -m benchmarks.verify_calibration --victim runs/victim --defense runs/defense"
_GROUPS = {
    "victim-recipe": "the victim's own recipe and data, other seeds (`mea train-victim --seed N`)",
    "stronger": "stronger recipes (more epochs, affine augmentation, the whole public set)",
    "weaker": "weaker recipes (one to three epochs, no augmentation)",
    "subset": "the victim's recipe on 1,000 to 20,000 of its images",
    "public": "the whole public training set, the owner's calibration split included",
    "student": "clones distilled from independent teachers",
    "not-in-mea": "architectures mea does not ship (a wide CNN with batch norm, tanh LeNet, a deep MLP, softmax)",
}


def verify_calibration_markdown(record: dict) -> str:
    """The false-positive side of `mea verify` (benchmarks/results/verify_calibration.json)."""
    summary, rows, fingerprint = record["summary"], record["innocents"], record["fingerprint"]
    alpha = record["alpha"]
    thefts = record["thefts"]
    victim = record["victim"]
    evidence = ", ".join(
        f"{name} answers, {theft['queries']:,} queries ({theft['records']} watermarked answers recorded)"
        for name, theft in thefts.items()
    )
    lines = [
        f"Measured against victim `{victim['fingerprint'][:12]}`, trained on this machine with `mea train-victim` "
        "(not the victim of the other results). Evidence from two real thefts through `mea serve` with the "
        f"fitted defense (`mea attack --url`): {evidence}.",
        "",
        f"- **Innocent models shown derived: {summary['derived']} of {summary['verdicts']} verdicts** "
        f"({summary['innocents']} innocent models, {summary['victim_recipe']} of them with the victim's own recipe, "
        f"each against both thefts' evidence) at p < {alpha:g}; the smallest watermark p of any innocent "
        f"{_p(summary['smallest_watermark_p'])}. The watermark test is exact, so P(p < {alpha:g}) <= {alpha:g} "
        "for every innocent model by construction; the population checks that construction, it does not replace it.",
        "- **The thieves' clones:** "
        + "; ".join(
            f"{name}: {theft['clone_accuracy']:.2%} accurate, watermark p {_p(theft[name]['watermark_p'])}, "
            f"{'**derived**' if theft[name]['derived'] else 'not shown'}"
            for name, theft in thefts.items()
        )
        + ".",
        f"- **The passive fingerprint is left out of the decision**: it ranks a suspect among "
        f"{fingerprint['references_ranking']} reference models (`mea fingerprint make --references "
        f"{2 * fingerprint['references_ranking']}`), so its smallest possible p is "
        f"{fingerprint['smallest_p_value']:.3f}, and on this population its p-values "
        + (
            "are within their 99% binomial intervals at every threshold below."
            if all(row["within"] for row in summary["fingerprint_calibration"])
            else "fall outside their 99% binomial intervals (below): its references do not stand for every innocent."
        ),
        "",
        "| test | t | innocents at p <= t | a valid p-value's 99% interval | within |",
        "|---|---|---|---|---|",
    ]
    checks = [
        (f"watermark, {name} evidence (decides)", rows_) for name, rows_ in summary["watermark_calibration"].items()
    ]
    checks.append(("fingerprint rank (indicative)", summary["fingerprint_calibration"]))
    for name, calibration in checks:
        for row in calibration:
            lines.append(
                f"| {name} | {row['t']:g} | {row['count']} of {row['n']} ({row['fraction']:.1%}) | "
                f"{row['interval'][0]}-{row['interval'][1]} | {'yes' if row['within'] else '**no**'} |"
            )
    lines += [
        "",
        "| innocent models | n | test accuracy | smallest watermark p | fingerprint p <= 0.05 | derived |",
        "|---|---|---|---|---|---|",
    ]
    for group, label in _GROUPS.items():
        members = [r for r in rows if r["group"] == group]
        if not members:
            continue
        accuracy = [r["accuracy"] for r in members]
        smallest = min(v["watermark_p"] for r in members for v in r["verdicts"].values())
        flagged = sum(r["verdicts"]["label"]["fingerprint_p"] <= 0.05 for r in members)
        derived = sum(v["derived"] for r in members for v in r["verdicts"].values())
        lines.append(
            f"| {label} | {len(members)} | {min(accuracy):.2%}-{max(accuracy):.2%} | {_p(smallest)} | {flagged} | "
            f"{derived} |"
        )
    lines += [
        "",
        "The five models issue 32 found accused, trained again the same way and verified with the documented "
        "command (`mea verify --suspect M --evidence E --fingerprint F --victim V --defense D`, the label thief's "
        "records):",
        "",
        "| model | test accuracy | fingerprint p (indicative) | watermark p | verdict |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        if "cli" in row:
            cli = row["cli"]
            lines.append(
                f"| `{row['command']}` | {row['accuracy']:.2%} | {_p(cli['fingerprint_p'])} | {_p(cli['watermark_p'])} "
                f"| {'**derived**' if cli['derived'] else 'not shown'} |"
            )
    return "\n".join(lines)


def readme_verify_calibration(results: Results) -> str:
    record = results.get("verify_calibration.json")
    if record is None:
        return f"Not yet measured: `{VERIFY_CALIBRATION_COMMAND}` writes `benchmarks/results/verify_calibration.json`."
    return (
        verify_calibration_markdown(record)
        + "\n\n"
        + source(record["provenance"], "`benchmarks/results/verify_calibration.json`")
    )


def readme_startup(results: Results) -> str:
    """benchmarks/results/startup.json (benchmarks.startup): `mea --help` in fresh processes, before and now."""
    record = results["startup.json"]
    trees = record["trees"]
    now_name = next(name for name, tree in trees.items() if tree["dirty"] or name == "working tree")
    before_name = next(name for name in trees if name != now_name)
    now, before = trees[now_name]["commands"], trees[before_name]["commands"]
    rows = [
        [f"`{command}`", f"{before[command]['median_s']:.3f} s", f"{now[command]['median_s']:.3f} s"]
        for command in now
        if command in before
    ]
    load = record["machine"]["load_average_before"][0]
    cores = record["machine"]["cpus"]
    busy = " (**a busy machine: the times are inflated**)" if load >= 0.25 * cores else ""
    help_ratio = before["mea --help"]["median_s"] / now["mea --help"]["median_s"]
    return "\n".join(
        [
            table(["command (median wall time of fresh processes)", f"before (revision {before_name})", "now"], rows),
            "",
            f"`mea --help` starts {help_ratio:.0f}x faster. <sub>From `benchmarks/results/startup.json`, written by "
            f"`{record['command']}` on {record['date'][:16].replace('T', ' ')} UTC ({cores} cores, 1-minute load "
            f"{load:.1f} at the start{busy}).</sub>",
        ]
    )


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:02.0f} s"


def readme_suite_time(results: Results) -> str:
    """benchmarks/results/suite_time.json (benchmarks.suite_time): the test suite alone and on a busy machine."""
    record = results["suite_time.json"]
    neighbour = record["busy"]["neighbour"]
    rows = []
    for name, run in (("alone", record["alone"]), ("beside the default attack, restarted in a loop", record["busy"])):
        counts = run["counts"]
        outcome = ", ".join(f"{n:,} {kind}" for kind, n in counts.items())
        load = run["load_average_1min"]
        loads = f"{load['start']:.1f} → {load['end']:.1f}" if load["start"] is not None else "n/a"
        rows.append([name, _minutes(run["wall_s"]), outcome, loads])
    ratio = record["busy"]["wall_s"] / record["alone"]["wall_s"]
    attacks = neighbour["attacks_finished"]
    return "\n\n".join(
        [
            table(["the suite (`pytest -q`, CI=true)", "wall time", "outcome", "1-minute load, start → end"], rows),
            f"On a busy machine the suite takes {ratio:.2f}x as long and passes: no test has a wall-clock limit "
            f"(the neighbour finished {plural(attacks, 'default attack')} meanwhile). "
            + source(record["provenance"], "`benchmarks/results/suite_time.json`"),
        ]
    )


def readme_thread_contention(results: Results) -> str:
    """benchmarks/results/thread_contention.json (benchmarks.thread_contention): a job beside a copy of itself."""
    record = results["thread_contention.json"]
    jobs = {"attack": "`mea attack` (60,000 queries, clone training)", "victim": "`mea train-victim` (victim training)"}
    rows = []
    for row in record["rows"]:
        threads = "/".join(str(run["threads"]) for run in row["runs"])
        rows.append([jobs[row["job"]], row["setting"], f"{row['train_s']:.1f} s", f"**{row['ratio']:.2f}x**", threads])
    return "\n\n".join(
        [
            table(
                ["job", "setting", "training time (median of the copies)", "vs alone", "torch threads at each end"],
                rows,
            ),
            source(record["provenance"], "`benchmarks/results/thread_contention.json`", timed=True),
        ]
    )


def readme_omp_wait_policy(results: Results) -> str:
    """benchmarks/results/omp_wait_policy.json (benchmarks.omp_wait_policy): OpenMP's idle threads."""
    record = results["omp_wait_policy.json"]
    rows = record["rows"]
    baseline = next(r["train_s"] for r in rows if r["setting"] == "alone" and r["policy"].startswith("default"))
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    cells = {(r["policy"], r["setting"]): r["train_s"] for r in rows}
    body = [
        [f"`{policy}`" if not policy.startswith("default") else policy]
        + [f"{cells[policy, setting]:.1f} s ({cells[policy, setting] / baseline:.2f}x)" for setting in settings]
        for policy in policies
    ]
    return "\n\n".join(
        [
            table(["OMP_WAIT_POLICY", *(f"`mea attack`: {s}" for s in settings)], body),
            "Training time of the clone (median of the copies), and in brackets against the default policy alone.",
            source(record["provenance"], "`benchmarks/results/omp_wait_policy.json`", timed=True),
        ]
    )


# --- README.md: the attack suite -----------------------------------------------------------------


def _fidelity_cell(row: dict | None, digits: int) -> str:
    """A curve's point: mean ± sd of the fidelity in percent, or its one seed's value."""
    if row is None:
        return ""
    if row["fidelity_std"] is None:
        return f"{100 * row['fidelity_mean']:.{digits}f} (1 seed)"
    return f"{100 * row['fidelity_mean']:.{digits}f} ± {100 * row['fidelity_std']:.{digits}f}"


FASHION_POOLS = {
    "mnist-train": "MNIST digits",
    "uniform": "uniform noise",
    "gaussian": "Gaussian noise",
    "fashion-mnist": "Fashion-MNIST itself (reference)",
}


def readme_fashion_mnist(results: Results) -> str:
    """benchmarks/results/fashion_mnist.json (benchmarks.fashion_mnist): the second task end to end."""
    record = results["fashion_mnist.json"]
    victim = record["victim"]
    budgets = sorted({row["queries"] for row in record["curves"]})
    cells = {(row["strategy"], row["pool"], row["queries"]): row for row in record["curves"]}
    rows = []
    for strategy, pool in sorted(
        {(r["strategy"], r["pool"]) for r in record["curves"]}, key=lambda k: (list(FASHION_POOLS).index(k[1]), k[0])
    ):
        line = [f"`{strategy}`", FASHION_POOLS[pool]]
        for budget in budgets:
            line.append(_fidelity_cell(cells.get((strategy, pool, budget)), 1))
        rows.append(line)
    defense = record["defense"]
    defense_rows = [
        [
            FASHION_POOLS.get(source, source),
            f"{found['auroc']:.3f}",
            pct(found["flagged_rate"], 1),
            f"{pct(found['clone_undefended'], 1)} → **{pct(found['clone_defended'], 1)}**",
        ]
        for source, found in defense["sources"].items()
    ]
    benign = defense["benign_accuracy"]
    seeds = max(row["seeds"] for row in record["curves"])
    return "\n\n".join(
        [
            f"Victim: LeNet-5 trained on Fashion-MNIST, **{pct(victim['accuracy'])}** on its 10,000 test images "
            f"({victim['train_s']:.0f} s of training). Clone fidelity (% agreement with the victim on Fashion-MNIST "
            f"test) against the query budget, probability answers, no true labels, mean ± sd over {seeds} seeds:",
            table(["attack", "attacker's pool", *(f"{b:,} queries" for b in budgets)], rows),
            f"The defense fitted on this victim (`mea defend fit`, calibrated on Fashion-MNIST's held-out split), "
            f"each attacker with {defense['queries']:,} queries; benign accuracy {pct(benign['undefended'])} "
            f"undefended, {pct(benign['defended'])} defended ({pct(defense['benign_flagged_rate'], 1)} of "
            "Fashion-MNIST test flagged):",
            table(
                [
                    "attacker's pool",
                    "detector AUROC vs Fashion-MNIST test",
                    "queries flagged",
                    "clone accuracy: undefended → defended",
                ],
                defense_rows,
            ),
            "![Fashion-MNIST: fidelity against the budget](fashion_mnist.png)",
            source(
                record["provenance"],
                "`benchmarks/results/fashion_mnist.json` (trials in `fashion_mnist_trials.jsonl`)",
            ),
        ]
    )


def readme_attack_curves(results: Results) -> str:
    record = results["attack_curves.json"]
    summary = record["summary"]
    budgets = sorted({row["budget"] for row in summary})
    curves = sorted({row["curve"] for row in summary})
    cells = {(row["curve"], row["budget"]): row for row in summary}
    rows = []
    for curve in curves:
        line = [curve]
        for budget in budgets:
            line.append(_fidelity_cell(cells.get((curve, budget)), 2))
        rows.append(line)
    provenance = record["provenance"]
    counts = sorted({row["seeds"] for row in summary})
    seeds = f"{counts[0]} seeds"
    if len(counts) > 1:
        most = sorted({row["budget"] for row in summary if row["seeds"] == counts[-1]})
        seeds += f", {counts[-1]} at {' and '.join(count(b) for b in most)} queries"
    return "\n".join(
        [
            table(["curve (fidelity %, mnist-train pool)", *(count(b) for b in budgets)], rows),
            "",
            f"Mean ± sample standard deviation over {seeds} ({provenance['trials_finished']} of "
            f"{provenance['trials_planned']} trials finished); a defended trial of seed s meets the noise key of "
            "draw s.",
            "",
            source(provenance, "`benchmarks/results/attack_curves.json` (trials in `attack_curves.jsonl`)"),
        ]
    )


def readme_attack_findings(results: Results) -> str:
    summary = results["attack_curves.json"]["summary"]
    cells = {(row["curve"], row["budget"]): row for row in summary}

    def fid(curve: str, budget: int) -> str:
        row = cells.get((curve, budget))
        return "n/a" if row is None else f"{100 * row['fidelity_mean']:.2f}%"

    budgets = sorted({b for c, b in cells if c.startswith("random")})
    jbda = sorted({b for c, b in cells if c.startswith("jbda")})
    top = jbda[-1] if jbda else None
    gap = max(
        100
        * (cells["random, probabilities", b]["fidelity_mean"] - cells["public labels, no queries", b]["fidelity_mean"])
        for b in budgets
    )
    lines = [
        "- **Few queries suffice.** Active selection (uncertainty + k-center) with self-training: "
        + " / ".join(fid("active, probabilities", b) for b in budgets)
        + f" fidelity at {' / '.join(count(b) for b in budgets)} probability queries; label-only "
        + " / ".join(fid("active, label", b) for b in budgets)
        + ". Random selection with the same training: "
        + " / ".join(fid("random, probabilities", b) for b in budgets)
        + ".",
        "- **The value of stealing is small when the attacker already holds labelled data.** The zero-query "
        "reference (the same training on as many public labelled images): "
        + " / ".join(fid("public labels, no queries", b) for b in budgets)
        + f", within {gap:.1f} points of random stealing at every budget. What stealing buys is fidelity to "
        "*this* victim, and active selection buys most of it.",
    ]
    if top is not None:
        lines.append(
            f"- **JBDA** from 150 seeds, label-only, {count(top)} labels: {fid('jbda, label', top)} (targeted "
            f"{fid('jbda-tr, label', top)}); through the defense {fid('jbda, label, defended', top)} / "
            f"{fid('jbda-tr, label, defended', top)}. Papernot et al. 2017 report a substitute of about 81% on "
            "MNIST after six rounds (150 x 2^6 = 9,600 labels); that figure is quoted from the paper's table as "
            "recalled, not re-checked here."
        )
    defended = sorted(b for c, b in cells if c == "random, probabilities, defended")
    if defended:
        lines.append(
            "- **The defense does not slow an in-distribution attacker**: random probabilities at "
            + " and ".join(count(b) for b in defended)
            + " queries give "
            + " / ".join(fid("random, probabilities, defended", b) for b in defended)
            + " against the defended victim, "
            + " / ".join(fid("random, probabilities", b) for b in defended)
            + " undefended; quotas bound it."
        )
    return "\n".join(lines)


ADAPTIVE_ROWS = (
    ("random fashion-mnist", "random Fashion-MNIST"),
    ("random fashion-mnist + repeat averaging x4", "... + repeat each query 4x and average"),
    ("random fashion-mnist + jitter consensus x3", "... + 3 copies jittered by 2 grey levels, keep consistent answers"),
    (
        "random fashion-mnist + jitter consensus x3, 16 grey levels (scheme-aware)",
        "... + 3 copies jittered by 16 grey levels (knows the coarse keying)",
    ),
    (
        "random fashion-mnist + consensus x3 of copies shifted by 1 px (scheme-aware)",
        "... + 3 copies shifted by up to a pixel (knows the coarse keying)",
    ),
    ("the 150 seeds alone, label-only", "the 150 MNIST seeds alone, label-only (what JBDA starts from)"),
    ("jbda, label-only, 150 seeds", "JBDA, label-only, 150 MNIST seeds"),
    ("jbda-tr, label-only, 150 seeds", "JBDA-TR, label-only, 150 MNIST seeds"),
    ("jbda-tr + 4:1 cover traffic of mnist-train", "... hidden in 4:1 cover traffic of natural MNIST"),
    ("jbda-tr + 9:1 cover traffic of mnist-train", "... hidden in 9:1 cover traffic"),
    ("jbda-tr + 19:1 cover traffic of mnist-train", "... hidden in 19:1 cover traffic"),
    ("jbda-tr + 49:1 cover traffic of mnist-train", "... hidden in 49:1 cover traffic"),
    ("random mnist-train (in-distribution)", "random `mnist-train` (in-distribution)"),
)


def readme_adaptive(results: Results) -> str:
    record = results["adaptive_attackers.json"]
    cells = {(row["attacker"], row["defender"]): row for row in record["summary"]}
    draws = max(row["draws"] for row in record["summary"])
    rows = []
    for attacker, label in ADAPTIVE_ROWS:
        line = [label]
        for defender in ("none", "defended oracle", "service gate"):
            row = cells.get((attacker, defender))
            if row is None:
                line.append("")
                continue
            if row["clone_accuracy"] is None:
                line.append(f"no clone: refused {_after(row['refused_after'])}, before any answer")
                continue
            text = pm(row["clone_accuracy"])
            if row.get("no_clone"):
                text += f" ({row['no_clone']} of {row['draws']} draws refused before any answer: no clone)"
            notes = []
            kept, spent = row["answers_kept"], row["queries_spent"]
            if kept["mean"] < spent["mean"] and defender != "service gate":
                notes.append(f"kept {count(kept['mean'])} of {count(spent['mean'])} answers")
            if defender == "service gate":
                refusals = row["refused_after"]
                if any(r is not None for r in refusals):
                    notes.append(f"refused {_after(refusals)}")
                elif all(f is None for f in row["prada_flagged_at"]):
                    notes.append("never flagged")
            line.append(text + (f" ({'; '.join(notes)})" if notes else ""))
        rows.append(line)
    budgets = sorted({row["budget"] for row in record["summary"]})
    lines = [
        table(["attacker", "no defense", "defended oracle", "service gate"], rows),
        "",
        f"Clone accuracy on MNIST test, mean ± sample standard deviation over {draws} draws (attacker seed d, "
        f"noise key of draw d); budgets {', '.join(count(b) for b in budgets)} queries.",
    ]
    if record.get("benign"):
        lines += ["", _adaptive_benign(record)]
    if record.get("http"):
        lines += ["", _adaptive_http(record)]
    lines += ["", source(record["provenance"], "`benchmarks/results/adaptive_attackers.json`")]
    return "\n".join(lines)


def _adaptive_benign(record: dict) -> str:
    """Benign clients through the service gate, over the draws."""
    by_client: dict[str, list[dict]] = {}
    for row in record["benign"]:
        by_client.setdefault(row["client"], []).append(row)
    rows = []
    for client, group in by_client.items():
        refused = sum(r["refused_after"] is not None or r["level"] >= 2 for r in group)
        escalated = sum(r["level"] >= 1 for r in group)
        gate = statistics.mean(r["accuracy"] for r in group)
        plain = statistics.mean(r["without_escalation_accuracy"] for r in group)
        own = statistics.mean(r["undefended_accuracy"] for r in group)
        rows.append(
            [
                f"{client} ({count(group[0]['queries'])})",
                f"{refused} of {len(group)}",
                f"{escalated} of {len(group)}",
                str(sum(r["steps"] for r in group)),
                pct(own),
                f"{pct(plain)} ({100 * (own - plain):.2f} pp)",
                f"{pct(gate)} (**{100 * (plain - gate):.2f} pp**)",
            ]
        )
    return table(
        [
            "benign client (label answers)",
            "refused",
            "escalated",
            "steps marked",
            "undefended",
            "OOD gate + watermark (drop)",
            "service gate (drop from escalation)",
        ],
        rows,
    )


def _adaptive_http(record: dict) -> str:
    """The synthetic-step attackers and a natural client over HTTP against `mea serve`."""
    by_client: dict[str, list[dict]] = {}
    for row in record["http"]:
        by_client.setdefault(row["client"], []).append(row)
    rows = []
    for client, group in by_client.items():
        accuracy = [r["clone_accuracy"] for r in group]
        rows.append(
            [
                f"{client} ({count(group[0]['queries'])} queries)",
                _after([r["refused_after"] for r in group]).replace("after ", ""),
                pm({"mean": statistics.mean(accuracy), "sd": statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0}),
            ]
        )
    return (
        "Over HTTP (`mea serve --defense`, a label-only key each, `mea attack --url`, "
        f"{len(next(iter(by_client.values())))} draws):\n\n"
        + table(["client", "refused after", "clone accuracy"], rows)
    )


def readme_adaptive_findings(results: Results) -> str:
    record = results["adaptive_attackers.json"]
    cells = {(row["attacker"], row["defender"]): row for row in record["summary"]}

    def acc(attacker: str, defender: str) -> str:
        return pm(cells[attacker, defender]["clone_accuracy"])

    names = [a for a, _ in ADAPTIVE_ROWS]
    plain, repeat, jitter, harder, shifted, seeds, jbda, targeted = names[:8]
    covers = names[8:12]
    kept = cells[jitter, "defended oracle"]["answers_kept"]["mean"]
    repeated = cells[repeat, "defended oracle"]["answers_kept"]["mean"]
    steps = record.get("steps") or {}
    caught = [c for c in covers if all(r is not None for r in cells[c, "service gate"]["refused_after"])]
    missed = [c for c in covers if c not in caught]
    ratio = caught[-1].split(" + ")[1].split(" cover")[0] if caught else None
    cover_text = (
        f"every draw refused up to {ratio} cover ({_after(cells[caught[-1], 'service gate']['refused_after'])} there)"
        if caught
        else "no ratio measured was refused in every draw"
    )
    if missed:
        cover_text += f"; at {missed[0].split(' + ')[1].split(' cover')[0]} not in every draw"
    return "\n".join(
        [
            "- **Repeating** a query returns the identical keyed answer, so averaging buys nothing: "
            f"{acc(repeat, 'defended oracle')} with repeats (from {count(repeated)} distinct images) against "
            f"{acc(plain, 'defended oracle')} without.",
            "- **Jitter consensus**: the misinformation is keyed on a coarse code of the image (`mea.keying`), so "
            f"jittered copies mostly get the same wrong answer and the consensus keeps them: {count(kept)} images "
            f"kept, clone {acc(jitter, 'defended oracle')} against {acc(jitter, 'none')} undefended. An attacker who "
            f"knows the scheme and pushes its copies into other codes gets {acc(harder, 'defended oracle')} with "
            f"16-grey-level jitter and {acc(shifted, 'defended oracle')} with copies shifted by a pixel. Through "
            "the service gate the copies themselves are near-duplicates, and the step detector refuses the client "
            f"{_after(cells[jitter, 'service gate']['refused_after'])}.",
            f"- **JBDA and JBDA-TR** make every query after the seeds from an earlier one by a signed step of 0.1; "
            f"the step detector (radius {steps.get('radius', 0):.3f} in L-infinity, calibrated as half the closest "
            "approach of any benign calibration stream) refuses them "
            f"{_after(cells[jbda, 'service gate']['refused_after'])} and "
            f"{_after(cells[targeted, 'service gate']['refused_after'])}, with clones of "
            f"{acc(jbda, 'service gate')} and {acc(targeted, 'service gate')}: the "
            f"{seeds.split(' ')[1]} seeds alone give {acc(seeds, 'none')}. **Cover traffic** does not dilute a "
            f"window: {cover_text}.",
            "- The **in-distribution attacker** is untouched by every layer, as the defense section says.",
        ]
    )


# --- README.md: sweeps, the ART comparison, the quick start --------------------------------------


def readme_sweep_timings(results: Results) -> str:
    record = results["sweep_timings.json"]
    twenty = record["twenty"]
    parts = [f"locally {twenty['local']['wall_s']:.1f} s"]
    if "ray" in twenty:
        same = "identical" if twenty.get("identical_records") else "**different**"
        parts.append(
            f"on a local Ray instance {twenty['ray']['wall_s']:.1f} s (mostly Ray's start-up), with {same} records "
            "apart from timings"
        )
    text = (
        f"The test suite's 20-trial sweep (`mlp` clones, 300-400 queries, half of them defended, 5 seeds) on one "
        f"worker of one torch thread took {', and '.join(parts)}; rerunning it took "
        f"{twenty['rerun_local_wall_s']:.1f} s and ran nothing."
    )
    if "budgets" in record:
        budgets = record["budgets"]
        text += (
            f" The budget sweep below: {budgets['trials']} trials ({budgets['base']['train']['epochs']} epochs, at "
            f"least {budgets['base']['train']['min_steps']} steps, no self-training) in {budgets['wall_s']:.0f} s on "
            "one worker."
        )
    return "\n".join([text, "", source(record["provenance"], "`benchmarks/results/sweep_timings.json`", timed=True)])


def readme_art_summary(results: Results) -> str:
    record = results["benchmarks_full.json"]
    cells = _clone_cells(record)
    rows = []
    for (queries, output, attacker), cell in cells.items():
        if attacker != "mea random":
            continue
        art = cells[queries, output, "ART CopycatCNN"]
        rows.append(
            [
                count(queries),
                output,
                f"{pm(cell['accuracy'], 2)} in {cell['time_s']:.1f} s",
                f"{pm(art['accuracy'], 2)} in {art['time_s']:.1f} s",
            ]
        )
    defense = _defense_cells(record)
    names = list(dict.fromkeys(key[0] for key in defense))
    ours = next(name for name in names if name.startswith("mea"))
    art_names = [
        n for n in names if n.startswith("ART") and defense[n, "mnist-train", "probabilities"]["benign"]["mean"] >= 0.9
    ]
    broken = [n for n in names if defense[n, "mnist-train", "probabilities"]["benign"]["mean"] < 0.9]

    def rng(output: str) -> str:
        values = [defense[n, "fashion-mnist", output]["accuracy"]["mean"] for n in art_names]
        return f"{100 * min(values):.0f}-{100 * max(values):.0f}%"

    queries = record["defenses"]["queries"]
    ours_cells = {o: defense[ours, "fashion-mnist", o] for o in OUTPUT_NAMES}
    none_cells = {o: defense["none", "fashion-mnist", o] for o in OUTPUT_NAMES}
    in_dist = [defense[n, "mnist-train", o]["accuracy"]["mean"] for n in names if n not in broken for o in OUTPUT_NAMES]
    naive = record["clone"]["art_on_logits"]
    study = record["study"]["rows"]
    benign_cost = (
        defense["none", "mnist-train", "probabilities"]["benign"]["mean"]
        - defense[ours, "mnist-train", "probabilities"]["benign"]["mean"]
    )
    slower = study["study best"]["time_s"] / study["mea default"]["time_s"]
    text = [
        table(["queries", "answers", "mea", "ART CopycatCNN"], rows),
        "",
        f"ART's probability attack works only when the victim wrapped for ART ends in a softmax: around a "
        f"logit-answering victim, CopycatCNN(use_probability=True) trains on logits as probabilities and reaches "
        f"{pct(naive['accuracy'])}. ART's thief: Adam, batch {record['clone']['art_thief']['batch_size_fit']}, "
        f"LR {record['clone']['art_thief']['lr']:g}. Against the same attack ({count(queries)} queries), this "
        f"project's OOD-gated defense holds a Fashion-MNIST attacker to "
        f"{pm(ours_cells['probabilities']['accuracy'])} (probabilities) "
        f"and {pm(ours_cells['label']['accuracy'])} (labels) for "
        f"{100 * benign_cost:.2f} points of benign accuracy; ART's postprocessors leave it "
        f"{rng('probabilities')} and {rng('label')} "
        f"(undefended: {pm(none_cells['probabilities']['accuracy'])} and {pm(none_cells['label']['accuracy'])})",
    ]
    for name in broken:
        text[-1] += (
            f", and its {name.removeprefix('ART ')}, as shipped, answers a batch with every row's top class in "
            f"every row (benign accuracy {pct(defense[name, 'mnist-train', 'probabilities']['benign']['mean'])})"
        )
    text[-1] += (
        f". No defense that keeps benign users served stops the in-distribution attacker "
        f"({100 * min(in_dist):.1f}-{100 * max(in_dist):.1f}%). The study's best training configuration reaches "
        f"{pct(study['study best']['accuracy'])} in {slower:.1f}x the default's time "
        f"({study['study best']['time_s']:.1f} s vs {study['mea default']['time_s']:.1f} s, "
        f"default {pct(study['mea default']['accuracy'])}); LeNet-5 inference runs at "
        f"{pct(record['limits']['inference_fraction_of_peak'], 0)} of this machine's measured peak matmul FLOP/s."
    )
    text += ["", source(record["provenance"], "`benchmarks/results/benchmarks_full.json`", timed=True)]
    return "\n".join(text)


def readme_quickstart(results: Results) -> str:
    record = results.get("quickstart.json")
    if record is None:
        return "(`python -m benchmarks.quickstart` times it.)"
    cores = record["provenance"]["machine"]["cores"]
    text = f"`mea demo` took {record['demo']['wall_s'] / 60:.1f} min on {cores} cores"
    text += _load_note(record["demo"]["load_average_1min"], cores)
    if "tests" in record:
        text += f"; the test command {record['tests']['pytest']['wall_s'] / 60:.1f} min"
    return text + f" ({record['provenance']['date']}, `python -m benchmarks.quickstart`)."


def _full(function: Callable[[dict], str]) -> Callable[[Results], str]:
    def block(results: Results) -> str:
        return function(results["benchmarks_full.json"])

    return block


DATA_FREE_BUDGETS = (10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000, 2_000_000)
DATA_FREE_DEFENDERS = {
    "none": "undefended",
    "ood-gate": "OOD gate (misinformation)",
    "mad": "MAD on every query",
    "ood-gate+mad": "OOD gate + MAD on the rest",
}


def _budget_label(budget: int) -> str:
    return f"{budget // 1_000_000}M" if budget >= 1_000_000 else f"{budget // 1_000}k"


def _query_count(value: int | None) -> str:
    return "never" if value is None else f"{value:,}"


def readme_data_free(results: Results) -> str:
    """benchmarks/results/data_free.json (benchmarks.data_free): curves, detection, the aware knob."""
    record = results["data_free.json"]
    curves = record["curves"]
    budgets = [b for b in DATA_FREE_BUDGETS if any(p["budget"] == b for r in curves for p in r["points"])]
    rows = []
    order = ["dfme", "maze", "dfms"]
    for row in sorted(
        curves, key=lambda r: (order.index(r["strategy"]), list(DATA_FREE_DEFENDERS).index(r["defender"]))
    ):
        at = {p["budget"]: p for p in row["points"]}
        name = f"`{row['strategy']}` ({row['output']})"
        cells = [pct(at[b]["accuracy"], 1) if b in at else "" for b in budgets]
        flagged = row["points"][-1]["flagged_rate"]
        rows.append([name, DATA_FREE_DEFENDERS[row["defender"]], *cells, "-" if flagged is None else pct(flagged, 1)])
    curve_table = table(["attacker", "defender", *map(_budget_label, budgets), "flagged"], rows)
    speed = "; ".join(
        f"`{row['strategy']}` {row['queries']:,} queries in {row['attack_time_s'] / 60:.1f} min "
        f"({row['queries_per_s']:,.0f} queries/s)"
        for row in curves
        if row["defender"] == "none"
    )
    detection_rows = []
    for row in record["detection"]:
        service = row["service"]
        detection_rows.append(
            [
                f"`{row['attacker']}`",
                _query_count(service["first_ood_flag_at"]),
                _query_count(service["prada_flagged_at"]),
                _query_count(service["suspect_at"]),
                _query_count(service["refused_after"]),
                pct(service["ood_rate"], 1),
                pct(service["clone_accuracy"], 1),
            ]
        )
    detection_table = table(
        [
            "attacker, one client of the service's gate",
            "first OOD flag at",
            "PRADA flags at",
            "suspect at",
            "refused after",
            "OOD rate",
            "clone accuracy",
        ],
        detection_rows,
    )
    aware_rows = [
        [
            f"{row['attacker'].partition(':')[2]}",
            pct(row["ood_gate"]["flagged_rate"], 1),
            pct(row["ood_gate"]["clone_accuracy"], 1),
            pct(row["ood_gate"]["undefended_clone_accuracy"], 1),
            _query_count(row["service"]["refused_after"]),
        ]
        for row in record["detection"]
        if "ood_gate" in row
    ]
    budget = next(row["ood_gate"]["budget"] for row in record["detection"] if "ood_gate" in row)
    aware_table = table(
        [
            "`dfme-aware` weight",
            f"flagged by the OOD gate ({budget:,} queries)",
            "clone through the gate",
            "clone undefended",
            "refused by the service after",
        ],
        aware_rows,
    )
    by_command: dict[str, list[str]] = {}
    for name, provenance in record["provenance"].items():
        by_command.setdefault(provenance["command"], []).append(name)
    sources = "\n".join(
        source(
            record["provenance"][names[0]],
            ", ".join(
                "`benchmarks/results/data_free_detection.json`"
                if name == "detection"
                else f"`benchmarks/results/data_free_curves/{name}.json`"
                for name in names
            ),
        )
        for names in by_command.values()
    )
    return "\n\n".join(
        [
            "Clone accuracy on MNIST test (one run per row, seed 0; nothing in a data-free attack depends on "
            "its budget, its learning rate only on the queries spent, so the clone after b queries is the one "
            "a run with budget b returns); `flagged`: the share of the attacker's queries the detector flagged:",
            curve_table,
            f"Attack time and speed on the undefended victim (1 torch thread): {speed}.",
            detection_table,
            "The detector-aware attacker (`--strategy dfme-aware:WEIGHT`): DFME whose generator is also pushed "
            "toward what the attacker believes is in-distribution (off its 150 public digits' principal subspace "
            "and its own clone's doubt, both penalised with this weight):",
            aware_table,
            sources,
        ]
    )


def readme_poisoning(results: Results) -> str:
    """benchmarks/results/poisoning.json (benchmarks.poisoning): MAD beside the gate's misinformation."""
    record = results["poisoning.json"]
    columns = [
        ("benign_accuracy", "benign accuracy"),
        ("clone[probabilities, mnist-train]", "clone, probabilities, `mnist-train`"),
        ("clone[probabilities, fashion-mnist]", "clone, probabilities, `fashion-mnist`"),
        ("clone[label, mnist-train]", "clone, labels, `mnist-train`"),
        ("clone[label, fashion-mnist]", "clone, labels, `fashion-mnist`"),
    ]
    digits = 2 if record["draws"] > 1 else 1
    rows = [
        [
            row["defender"],
            *[pm(row[key], digits) if record["draws"] > 1 else pct(row[key]["mean"], 1) for key, _ in columns],
        ]
        for row in record["summary"]
    ]
    head = (
        f"Random queries, {record['budget']:,} per attack; mean ± sd over {record['draws']} draws "
        "(draw d: noise key d of `benchmarks.defense_keys`, attacker seed d):"
    )
    by = {row["key"]: row for row in record["summary"]}
    plain, argmax, both = by["mad"], by["mad-argmax"], by["gate+mad-argmax"]
    natural, label = "clone[probabilities, mnist-train]", "clone[label, mnist-train]"
    gate_rows = [row for row in record["summary"] if row["key"].startswith("gate") and "+" not in row["key"]]
    ood_probabilities, ood_labels = "clone[probabilities, fashion-mnist]", "clone[label, fashion-mnist]"
    findings = [
        "- **On flagged queries only** (the gate's policy), clone from `fashion-mnist` with probabilities / "
        "labels: "
        + "; ".join(
            f"{row['defender'].removeprefix('OOD gate + ')} {pm(row[ood_probabilities])} / {pm(row[ood_labels])}"
            for row in gate_rows
        )
        + ". What the gate answers flagged queries with matters more than the gate itself: noise that keeps "
        "the top-1 class, MAD-argmax included, still teaches the clone the victim's labels.",
        f"- **MAD-argmax** keeps every benign top-1 label ({pct(argmax['benign_accuracy']['mean'])}, undefended "
        f"{pct(by['undefended']['benign_accuracy']['mean'])}) and, unlike the gate, hurts the attacker "
        f"with natural digits and probability answers: {pm(argmax[natural])} against "
        f"{pm(by['undefended'][natural])} undefended. A label-only attacker is untouched by construction "
        f"({pm(argmax[label])}).",
        f"- **Plain MAD** at the same L1 budget moves the top-1 too: benign accuracy {pm(plain['benign_accuracy'])}, "
        "a defense no operator can serve; its utility bound has to be much smaller to be usable.",
        f"- **Composed** with the gate, OOD attackers meet the gate's misinformation "
        f"({pm(both['clone[probabilities, fashion-mnist]'])}) and in-distribution probability attackers MAD "
        f"({pm(both[natural])}), for the gate's benign cost only ({pct(both['benign_accuracy']['mean'])}).",
    ]
    return "\n\n".join(
        [
            head,
            table(["defender", *[title for _, title in columns]], rows),
            "\n".join(findings),
            source(record["provenance"], "`benchmarks/results/poisoning.json`"),
        ]
    )


BLOCKS: dict[str, Callable[[Results], str]] = {
    "benchmarks-header": _full(bench_header),
    "benchmarks-clone": _full(bench_clone),
    "benchmarks-art-timing": bench_art_timing,
    "benchmarks-study": _full(bench_study),
    "benchmarks-defenses": _full(bench_defenses),
    "benchmarks-limits": _full(bench_limits),
    "quickstart": readme_quickstart,
    "headlines": readme_headlines,
    "startup": readme_startup,
    "suite-time": readme_suite_time,
    "thread-contention": readme_thread_contention,
    "omp-wait-policy": readme_omp_wait_policy,
    "victim": readme_victim,
    "default-attack": readme_default_attack,
    "time-to-98": readme_time_to_98,
    "training-loop": readme_training_loop,
    "fidelity-60k": readme_fidelity_60k,
    "fidelity-budgets": readme_fidelity_budgets,
    "seed-table": readme_seed_table,
    "defense-table": readme_defense_table,
    "detector": readme_detector,
    "defense-findings": readme_defense_findings,
    "in-distribution": readme_in_distribution,
    "prada": readme_prada,
    "serve-throughput": readme_serve_throughput,
    "serve-ab": readme_serve_ab,
    "detector-overhead": readme_detector_overhead,
    "load-fault": readme_load_fault,
    "ownership": readme_ownership,
    "verify-calibration": readme_verify_calibration,
    "attack-curves": readme_attack_curves,
    "fashion-mnist": readme_fashion_mnist,
    "attack-findings": readme_attack_findings,
    "adaptive": readme_adaptive,
    "adaptive-findings": readme_adaptive_findings,
    "data-free": readme_data_free,
    "poisoning": readme_poisoning,
    "sweep-timings": readme_sweep_timings,
    "art-summary": readme_art_summary,
    "tramer": readme_tramer,
}
