"""`mea verify`, `mea fingerprint make`, `mea evidence export`: proof that a suspect was extracted."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click

from mea.cli.common import console, data_dir_option, extra_needed, force_option, positive_int, use_threads
from mea.config import MODEL_NAME
from mea.errors import MeaError
from mea.ownership.config import DEFAULT_ALPHA, Budget, FingerprintConfig

_BUDGET = Budget()
_FINGERPRINT = FingerprintConfig()


def _timestamp(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """Seconds since the epoch, from an ISO 8601 date-time (UTC unless it names a zone) or a number."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither an ISO 8601 date-time nor seconds since the epoch") from None
    if moment.tzinfo is None:
        from datetime import UTC

        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _alpha(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not 0 < value < 1:
        raise click.BadParameter(f"must lie in (0, 1), got {value}")
    return value


@click.command("verify")
@click.option(
    "--suspect", type=click.Path(path_type=Path), default=None, help="Suspect weights: mea .safetensors or .onnx."
)
@click.option(
    "--url", default=None, help="Or a suspect prediction API (Open Inference Protocol v2), e.g. http://host:8000."
)
@click.option(
    "--api-key", envvar="MEA_API_KEY", default=None, help="Key for --url [default: $MEA_API_KEY]; never recorded."
)
@click.option("--model", "model_name", default=MODEL_NAME, show_default=True, help="Model name at --url.")
@click.option(
    "--evidence",
    type=click.Path(path_type=Path),
    default=None,
    help="Watermark evidence: the service database (--db of `mea serve`) or an export (`mea evidence export`).",
)
@click.option("--client", "clients", multiple=True, help="Only this client's records (repeatable) [default: all].")
@click.option(
    "--before",
    callback=_timestamp,
    default=None,
    help="Only records made before this time (ISO 8601 or epoch seconds), e.g. the suspect's publication.",
)
@click.option(
    "--expect-head",
    default=None,
    help="A chain head recorded earlier (audit log, third party): it must be in the chain; later records are not used.",
)
@click.option(
    "--victim",
    "victim_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Victim directory: labels the probe images (with --defense).",
)
@click.option(
    "--defense",
    "defense_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Defense directory the service ran with: its secret keys the watermark (needs --victim).",
)
@click.option(
    "--fingerprint",
    type=click.Path(path_type=Path),
    default=None,
    help="Passive fingerprint (`mea fingerprint make`).",
)
@click.option(
    "--probes",
    type=int,
    default=None,
    help="Calibration images used as watermark probes, at most (0 = none) [default: what the query budget leaves].",
)
@click.option(
    "--neighbours",
    type=int,
    default=_BUDGET.neighbours,
    show_default=True,
    help="Nearest calibration images of each record asked with it (fewer when the budget is short; 0 = none).",
)
@click.option("--max-records", type=int, default=_BUDGET.max_records, show_default=True, help="Evidence records used.")
@click.option(
    "--max-queries",
    type=int,
    default=_BUDGET.max_queries,
    show_default=True,
    callback=positive_int,
    help="Images sent to the suspect, at most.",
)
@click.option("--alpha", type=float, default=DEFAULT_ALPHA, show_default=True, callback=_alpha, help="Significance.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory to create for verdict.json.")
@data_dir_option
@force_option
def verify_command(
    suspect,
    url,
    api_key,
    model_name,
    evidence,
    clients,
    before,
    expect_head,
    victim_dir,
    defense_dir,
    fingerprint,
    probes,
    neighbours,
    max_records,
    max_queries,
    alpha,
    out,
    data_dir,
    force,
) -> None:
    """Test whether a suspect model was extracted from the victim; print and write verdict.json."""
    from mea.runs import check_out, command_line, run_directory, write_json

    if (suspect is None) == (url is None):
        raise MeaError("name the suspect once: --suspect FILE (safetensors or ONNX) or --url URL (a prediction API)")
    if defense_dir is not None and victim_dir is None:
        raise MeaError("--defense needs --victim (the probes are labelled by the victim)")
    if evidence is not None and defense_dir is None:
        raise MeaError("--evidence needs --victim and --defense: the watermark key is the defense's secret")
    if (probes or 0) < 0 or neighbours < 0 or max_records < 0:
        raise MeaError("--probes, --neighbours and --max-records must be >= 0")
    check_out(out, force)
    use_threads()
    from mea import api

    victim = api.load_victim(victim_dir) if victim_dir is not None else None
    defense = api.load_defense(defense_dir, victim) if defense_dir is not None else None
    summary: dict = {}
    if evidence is not None:
        from mea.ownership.evidence import load_evidence

        records = load_evidence(evidence)
        summary = {"source": str(evidence), "records": len(records), "head": records.head}
        evidence = records
    if url is not None:
        with extra_needed("serve", "a suspect API (--url)"):
            import mea.serve.client  # noqa: F401  (a missing extra is named before anything is sent)
    verdict = api.verify(
        suspect if suspect is not None else url,
        victim=victim,
        defense=defense,
        evidence=evidence,
        fingerprint=fingerprint,
        clients=tuple(clients),
        before=before,
        expect_head=expect_head,
        alpha=alpha,
        budget=Budget(max_queries=max_queries, max_records=max_records, neighbours=neighbours, probes=probes),
        api_key=api_key,
        model=model_name,
        data_dir=data_dir,
    )
    if summary:
        summary["records_used"] = verdict.evidence.get("records_used")
    document = {**verdict.to_dict(), "evidence_source": summary, "command": command_line()}
    with run_directory(out, force) as scratch:
        write_json(scratch / "verdict.json", document)
    _print_verdict(verdict, out)


def _print_verdict(verdict, out: Path) -> None:
    from rich.table import Table

    table = Table(title=f"suspect: {verdict.suspect.get('source')}")
    for column in ("test", "images", "matches", "statistic (chance)", "p-value"):
        table.add_column(column, justify="left" if column == "test" else "right")
    for test in verdict.tests:
        table.add_row(
            test.name if test.counted else f"{test.name} (indicative, not counted)",
            str(test.images),
            f"{test.matches} ({test.match_rate:.1%}, chance {test.expected_match_rate:.1%})",
            f"{test.statistic:.3g} ({test.expected_statistic:.3g})",
            f"{test.p_value:.3g}",
        )
        for kind, part in test.parts.items():  # what each kind of image shows alone; the decision uses the row above
            table.add_row(
                f"  {kind} (weight {part['weight']})",
                str(part["images"]),
                f"{part['matches']} ({part['matches'] / part['images']:.1%})",
                f"{part['mean_rank']:.3g}",
                f"alone {part['p_value_alone']:.3g}",
            )
    console().print(table)
    for test in verdict.tests:
        if not test.counted:
            console().print(f"{test.name}: {test.note}")
    console().print(
        f"[bold]{verdict.decision}[/bold]; {verdict.queries} queries to the suspect; {out / 'verdict.json'}"
    )


@click.group("fingerprint")
def fingerprint_group() -> None:
    """The passive fingerprint: inputs on which this victim's label is idiosyncratic."""


@fingerprint_group.command("make")
@click.option("--victim", "victim_dir", type=click.Path(path_type=Path), required=True, help="Victim directory.")
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="Fingerprint file to create (.safetensors)."
)
@click.option(
    "--references",
    type=int,
    default=_FINGERPRINT.references,
    show_default=True,
    help="Innocent models the owner trains, the victim's own recipe with other seeds among them (half make "
    "the fingerprint, half are the population a suspect is ranked in).",
)
@click.option(
    "--surrogates",
    type=int,
    default=_FINGERPRINT.surrogates,
    show_default=True,
    help="The owner's own clones of the victim.",
)
@click.option(
    "--epochs",
    type=int,
    default=None,
    help="Training epochs of each of those models, for a quick and weaker population [default: each recipe's own].",
)
@click.option(
    "--candidates",
    type=int,
    default=_FINGERPRINT.candidates,
    show_default=True,
    help="Calibration images tried as starting points (the search's cost grows with them).",
)
@click.option("--size", type=int, default=_FINGERPRINT.size, show_default=True, help="Conferrable examples kept.")
@click.option(
    "--epsilon", type=float, default=_FINGERPRINT.epsilon, show_default=True, help="L-infinity perturbation radius."
)
@click.option("--seed", type=int, default=_FINGERPRINT.seed, show_default=True, help="Seed of every random choice.")
@data_dir_option
@force_option
def fingerprint_make(
    victim_dir, out, references, surrogates, epochs, candidates, size, epsilon, seed, data_dir, force
) -> None:
    """Train reference models and surrogates on the owner's data and make the fingerprint."""
    config = FingerprintConfig(
        references=references,
        surrogates=surrogates,
        epochs=epochs,
        candidates=candidates,
        size=size,
        epsilon=epsilon,
        seed=seed,
    )
    if out.exists() and not force:
        raise MeaError(f"{out} exists; choose another --out or pass --force to replace it")
    use_threads()
    from mea.ownership.config import check_victim_signature
    from mea.ownership.fingerprint import fingerprint_victim
    from mea.victim import load_victim

    victim = load_victim(victim_dir)
    check_victim_signature(victim.signature)
    made = fingerprint_victim(victim, config, data_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    made.save(out)
    rates = ", ".join(f"{m / len(made):.1%}" for m in made.reference_matches)
    console().print(
        f"{out}: {made.meta['conferrable']} conferrable examples and {made.meta['errors']} victim errors; "
        f"held-out reference models match {rates}; a suspect is ranked among {len(made.reference_matches)} "
        f"of them (smallest p-value {1 / (len(made.reference_matches) + 1):.2g}), indicative only"
    )


@click.group("evidence")
def evidence_group() -> None:
    """The watermark evidence store."""


@evidence_group.command("export")
@click.option(
    "--db", type=click.Path(path_type=Path), required=True, help="The service database (or a standalone store)."
)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="File to create (.safetensors).")
@force_option
def evidence_export(db, out, force) -> None:
    """Check the hash chain and write the evidence to one file that `mea verify` reads."""
    if out.exists() and not force:
        raise MeaError(f"{out} exists; choose another --out or pass --force to replace it")
    from mea import api

    evidence = api.export_evidence(db, out)
    console().print(f"{out}: {len(evidence)} records from {len(set(evidence.clients))} clients, head {evidence.head}")
