"""docs/defense.md: the OOD-gated defense, per-client detection, adaptive attackers."""

from __future__ import annotations

import statistics

from benchmarks.pages.format import Results, _after, _draws, _keys_source, _levels, count, pct, pm, source, span, table

SOURCE_NAMES = {"fashion-mnist": "`fashion-mnist`", "gaussian": "`gaussian`", "uniform": "`uniform`"}


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
        f"Measured against victim `{record['victim_fingerprint'][:12]}`, trained on this machine with `mea "
        "train-victim` (not the victim of the other results: seeded training gives other weights on another CPU).",
        "",
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
