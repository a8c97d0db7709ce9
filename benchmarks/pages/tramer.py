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
PAPER_FE = (
    "Jagielski et al. 2020 (§5) and Carlini et al. 2020 (§4) recover a one-hidden-layer ReLU network from its "
    "logits up to the units' order and scale; ART 1.20's `FunctionallyEquivalentExtraction` implements the "
    "former for two dense layers"
)


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
    if record.get("functionally_equivalent"):
        lines += _functionally_equivalent(record)
    if record.get("defended"):
        lines += _defended(record["defended"])
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


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.1f} s"


def _functionally_equivalent(record: dict) -> list[str]:
    from benchmarks.pages.format import table

    rows = []
    for r in record["functionally_equivalent"]:
        attack = "mea `functionally-equivalent`" if r["attack"] == "mea" else "ART `FunctionallyEquivalentExtraction`"
        if r["attack"] == "mea" and not r.get("polish", True):
            attack += ", no polish"
        extracted = r["status"] == "extracted"
        rows.append(
            [
                attack,
                r["answers"],
                str(r["seed"]),
                "extracted" if extracted else f"{r['status']}: {r.get('error', '').split(' (at ')[0]}",
                f"{r['queries']:,}",
                _pct(r.get("test_agreement")) if extracted else "",
                _pct(r.get("uniform_agreement")) if extracted else "",
                _err(r.get("max_logit_error")) if extracted else "",
                _seconds(r.get("wall_s")),
            ]
        )
    header = ["`digits-relu`", "answers read", "seed", "outcome", "queries", "test", "uniform"]
    lines = [table([*header, "largest logit error", "wall time"], rows)]
    lines.append(
        f"\nThe papers: {PAPER_FE}. Largest logit error: the largest difference of the two models' logits, each "
        "less its mean over the classes, on the test and the uniform inputs.\n"
    )
    return lines


def _solved(r: dict) -> str:
    if r.get("status") == "refused":
        return f"refused the key after {r['answered']:,} answers"
    if r.get("status") == "failed":
        return f"failed: {r['error']}"
    error = r.get("relative_parameter_error")
    return f"{_pct(r['test_agreement'])} / {_pct(r['uniform_agreement'])}" + (
        "" if error is None else f" / {error:.1e}"
    )


def _defended(defended: dict) -> list[str]:
    lines = []
    intros = {
        "digits": "`digits-softmax` (a feature-vector victim, 650 unknowns)",
        "mnist": "`mnist-softmax` (7,850 unknowns)",
    }
    for name, intro in intros.items():
        if defended.get(name):
            lines += _service(intro, defended[name])
    if lines:
        lines.append(
            "Cells: test agreement / uniform agreement / largest parameter error over the largest parameter. "
            "`mea verify`: derived at alpha 1e-6, with the counted test's p-value, or why it could not run.\n"
        )
    return lines


def _service(intro: str, record: dict) -> list[str]:
    """One victim behind `mea serve --defense`: the benign client, then each equation-solving run."""
    from benchmarks.pages.format import table

    watermark = record["watermark_rate"]
    steps = record["steps"]
    parts = ["detector", "misinformation", "synthetic-step detector" if steps else None]
    parts.append(f"watermark rate {watermark}" if watermark else "no watermark (it keys 28x28 images)")
    benign = record["benign"]
    if benign["refused_after"] is None:
        benign_text = (
            f"a benign client sending the victim's {benign['queries']:,} test inputs in order is never refused and "
            f"reads {_pct(benign['accuracy'])} accuracy (undefended {_pct(benign['undefended_accuracy'])})"
        )
    else:
        benign_text = (
            f"a benign client sending the victim's test inputs in order is **refused after "
            f"{benign['refused_after']:,}**"
        )
    lines = [
        f"{intro} behind `mea serve --defense` (fitted by `mea.fit_defense`: {', '.join(p for p in parts if p)}), "
        f"equation-solving over HTTP; the detector flags {_pct(record['test_flagged'])} of the victim's test "
        f"inputs, and {benign_text}:",
        "",
    ]
    verified = watermark is not None
    rows = []
    pairs: dict = {}
    for r in record["rows"]:
        pairs.setdefault((r["points"], r["queries"], r["robust_solver"]), {})[r["defended_service"]] = r
    for (points, queries, robust), cells in pairs.items():
        served = cells[True]
        row = [
            points,
            f"{queries:,}",
            "drops inconsistent answers" if robust else "plain least squares",
            _pct(served["flagged"]),
            _solved(cells[False]),
            _solved(served),
            str(served.get("details", {}).get("ratios_dropped", "")),
        ]
        if verified:
            verify = served.get("verify", {})
            row += [_verdict(verify.get("evidence")), _verdict(verify.get("probes"))]
        rows.append(row)
    header = ["points", "queries", "solver", "flagged", "in process, undefended", "through the defended service"]
    header.append("ratios dropped")
    if verified:
        header += ["`mea verify`, evidence", "`mea verify`, probes"]
    lines += [table(header, rows), ""]
    return lines


def _verdict(verdict: dict | None) -> str:
    if not verdict:
        return ""
    if verdict["p_value"] is None:
        return verdict["decision"]
    return ("derived" if verdict["derived"] else "not shown") + f" (p = {verdict['p_value']:.2g})"
