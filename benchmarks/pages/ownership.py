"""docs/ownership.md: proof of theft, and what `mea verify` says about innocent models."""

from __future__ import annotations

from benchmarks.pages.format import Results, _p, source, table

OWNERSHIP_COMMAND = "python -m benchmarks.ownership --victim runs/victim --defense runs/defense --threads 1"


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
    forms = ("equal_weights", "no_neighbours")
    lines += [
        "",
        "<details><summary>What each part of the test buys (the same clones, other forms of the test)</summary>",
        "",
        "| clone (>= 5,000 mnist-train queries) | equal weights | no neighbours | this test |",
        "|---|---|---|---|",
    ]
    for row in strong:
        ablation = row["ablation"]
        lines.append(
            f"| {row['name']} | {_p(ablation['equal_weights'])} | {_p(ablation['no_neighbours'])} | "
            f"{_p(row['p_value'])} |"
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
        f"each against both thefts' evidence) at p < {alpha:g}: a false-positive rate per innocent model below "
        f"{_clopper_pearson_upper(summary['derived'], summary['innocents']):.1%} (one-sided 95% Clopper-Pearson "
        f"bound from this population alone); the smallest watermark p of any innocent "
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
        "| test | t | innocents at p <= t | a uniform p-value's 99% interval | reading |",
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
                f"{row['interval'][0]}-{row['interval'][1]} | {_reading(row)} |"
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


def _reading(row: dict) -> str:
    """A count within a uniform p-value's interval; below it, a conservative test (still valid:
    P(p <= t) <= t, as an exact test whose p is often near 1 gives); above it, a test that accuses
    more innocents than its p-values promise."""
    low, high = row["interval"]
    if row["count"] > high:
        return "**above: more than a valid p-value allows**"
    return "within" if row["count"] >= low else "below (conservative, still valid)"


def _clopper_pearson_upper(k: int, n: int, level: float = 0.95) -> float:
    """The one-sided upper confidence bound of a binomial rate after k successes in n trials."""
    from scipy import stats

    return 1.0 if k >= n else float(stats.beta.ppf(level, k + 1, n - k))
