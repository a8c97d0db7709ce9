"""The README's headlines and quick start; docs/getting-started.md and docs/sweeps.md: the tools' own timings."""

from __future__ import annotations

from benchmarks.pages.format import Results, _after, _load_note, _minutes, count, pct, plural, pm, source, table


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


def readme_quickstart(results: Results) -> str:
    record = results.get("quickstart.json")
    if record is None:
        return "(`python -m benchmarks.quickstart` times it.)"
    cores = record["provenance"]["machine"]["cores"]
    text = f"`mea demo` took {record['demo']['wall_s'] / 60:.1f} min on {cores} cores"
    text += _load_note(record["demo"]["load_average_1min"], cores)
    if "tests" in record:
        text += f"; the test command {record['tests']['pytest']['wall_s'] / 60:.1f} min"
    text += f" ({record['provenance']['date']}, `python -m benchmarks.quickstart`)."
    ci = results.get("ci.json")
    if ci is not None:
        run = ci["ci"]
        text += f" CI's whole script, `.ci/run` on a fresh clone, took {run['wall_s'] / 60:.1f} min"
        text += _load_note(run["load_average_1min"], ci["provenance"]["machine"]["cores"])
        text += f", {run['pytest']}" if run["pytest"] else ""
        text += f" ({ci['provenance']['date']}, `python -m benchmarks.ci`)."
    return text


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
