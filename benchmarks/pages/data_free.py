"""docs/data-free.md: attackers without data, and prediction poisoning."""

from __future__ import annotations

from benchmarks.pages.format import Results, pct, pm, source, table

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
