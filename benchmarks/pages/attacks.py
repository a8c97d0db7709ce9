"""docs/attacks.md: the victim, the default attack, the study's table, the attack suite, the second task."""

from __future__ import annotations

from benchmarks.pages.format import Results, _load_note, count, pct, plural, source, table

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
            "![Fidelity against the budget, before and after](fidelity_budgets.png)",
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
