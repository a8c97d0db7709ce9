"""The README's `tramer` block: Tramèr et al. 2016 reproduced, from benchmarks/results/tramer.json
(written by `python -m benchmarks.tramer`), each of the paper's figures beside ours by table and row.

The paper's figures are quoted as benchmarks' ANCHORS summary gives them (Tramèr et al. 2016,
arXiv 1609.02943): not re-checked against the paper here, and said so under the tables."""

from __future__ import annotations

PAPER_EQUATION = {
    ("cancer-logreg", "needed"): "Table 4 / §4.1.1, binary LR: d+1 queries, exact",
    ("digits-softmax", "650"): "Table 4, Digits softmax: 100% / 100% at 650 (as many as unknowns)",
    ("digits-softmax", "325"): "Table 4, Digits softmax: about 99.9% at 325 (half)",
    ("digits-ovr", "650"): "Table 4, Digits OvR: 100% / 100% at 650",
    ("digits-ovr", "325"): "Table 4, Digits OvR: about 99.9% at 325",
    ("digits-mlp", "3020"): "Table 4, MLP 20 hidden (2,225 unknowns, its dataset): 99.89% / 99.82% at 2x unknowns",
}
PAPER_TREES = "§4.2 (BigML trees through their API): German credit about 1,150 queries, Steak survey about 4,000"
PAPER_LABEL = "§6: label-only retraining of a neural net at 100x unknowns: 99.16% test agreement"
PAPER_ROUNDING = "§8: rounding to 4-5 decimals did not stop the attacks; 2-3 decimals weakened them"


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}%"


def _err(value: float | None) -> str:
    return "" if value is None else f"{value:.1e}"


def readme_tramer(results) -> str:
    from benchmarks.pages.format import source, table

    record = results["tramer.json"]
    victims = record["victims"]
    lines = []
    described = [
        f"`{name}` ({v['signature']}, {v['accuracy']:.2%} test accuracy"
        + (f", {v['unknowns']:,} unknowns" if v["unknowns"] else f", {v['leaves']} leaves, depth {v['depth']}")
        + ")"
        for name, v in victims.items()
    ]
    lines.append("Victims (scikit-learn, `mea train-victim`): " + "; ".join(described) + ".")
    lines.append("")
    rows = []
    for r in record["equation_solving"]:
        paper = PAPER_EQUATION.get((r["victim"], r["setting"]), "")
        seed = f", seed {r['seed']}" if "seed" in r else ""
        rows.append(
            [
                f"`{r['victim']}`{seed}",
                f"{r['queries']:,}",
                _pct(r["test_agreement"]),
                _pct(r["uniform_agreement"]),
                _err(r["test_tv"]),
                _err(r["relative_parameter_error"]),
                f"{r['compute_s']:.3f} s",
                paper,
            ]
        )
    header = ["equation-solving", "queries", "test agreement", "uniform agreement", "TV distance (test)"]
    lines.append(table([*header, "largest parameter error / largest parameter", "compute", "the paper"], rows))
    lines.append("")
    rows = [
        [
            f"`{r['victim']}`",
            r["setting"],
            f"{r['queries']:,}",
            f"{r['details']['leaves']}",
            _pct(r["test_agreement"]),
            _pct(r["uniform_agreement"]),
        ]
        for r in record["path_finding"]
    ]
    lines.append(table(["path-finding", "leaf identity", "queries", "leaves found", "test", "uniform"], rows))
    lines.append(f"\nThe paper: {PAPER_TREES}.\n")
    for r in record["lowd_meek"]:
        lines.append(
            f"`lowd-meek` on `{r['victim']}` (labels only, {r['setting']}): {r['queries']:,} queries, "
            f"test agreement {_pct(r['test_agreement'])}, uniform {_pct(r['uniform_agreement'])}."
        )
    lines.append("")
    if record["label_only"]:
        lines += _label_only(record)
    if record["rounding"]:
        lines += _rounding(record)
    if record.get("partial"):
        lines.append("**A partial run**: the benchmark was stopped before its last rows; those are missing above.\n")
    lines.append(
        "Agreement: the share of inputs where clone and victim name the same class, on the victim's test inputs "
        "and on 10,000 uniform inputs in its feature ranges; TV: mean total-variation distance of the two "
        "probability vectors. The paper's figures are quoted from the project's summary of the paper "
        "(`ANCHORS.md`), not re-checked against the paper here."
    )
    lines.append("")
    lines.append(source(record["provenance"], "`benchmarks/results/tramer.json`", timed=True))
    return "\n".join(lines)


def _label_only(record: dict) -> list[str]:
    from benchmarks.pages.format import table

    lines = []
    multiples = sorted({r["multiple"] for r in record["label_only"]})
    names = list(dict.fromkeys((r["victim"], r["setting"]) for r in record["label_only"]))
    rows = []
    for victim, setting in names:
        cells = {r["multiple"]: r for r in record["label_only"] if (r["victim"], r["setting"]) == (victim, setting)}
        rows.append(
            [f"`{victim}`", f"`{setting}`"]
            + [
                f"{_pct(cells[m]['test_agreement'])} / {_pct(cells[m]['uniform_agreement'])}" if m in cells else ""
                for m in multiples
            ]
        )
    lines.append(
        table(["label-only retraining", "queries"] + [f"{m}x unknowns (test / uniform)" for m in multiples], rows)
    )
    lines.append(f"\nThe paper: {PAPER_LABEL}.\n")
    return lines


def _rounding(record: dict) -> list[str]:
    from benchmarks.pages.format import table

    lines = []
    decimals = sorted({r["decimals"] for r in record["rounding"]})
    rows = []
    for victim in dict.fromkeys(r["victim"] for r in record["rounding"]):
        cells = {r["decimals"]: r for r in record["rounding"] if r["victim"] == victim}
        queries = next(iter(cells.values()))["queries"]
        rows.append(
            [f"`{victim}` ({queries:,} queries)"]
            + [f"{_pct(cells[k]['test_agreement'])} / {_pct(cells[k]['uniform_agreement'])}" for k in decimals]
        )
    lines.append(table(["equation-solving, answers rounded to"] + [f"{k} decimals" for k in decimals], rows))
    lines.append(f"\nThe paper: {PAPER_ROUNDING}.\n")
    return lines
