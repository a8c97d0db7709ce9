"""docs/benchmarks.md (the peer benchmarks, `python -m benchmarks.run`) and the ART summary on docs/peers.md."""

from __future__ import annotations

import statistics

from benchmarks.pages.format import Results, count, machine_text, mean_sd, pct, plural, pm, source, table

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
