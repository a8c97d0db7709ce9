"""Run a sweep: the trials not yet in the results file, on a backend, one appended line each.

Resuming is the default: a trial whose hash is already recorded is skipped, so rerunning after a
crash or a kill redoes only the trials that were in flight.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from mea.data.fetch import cache_root
from mea.defenses.store import load_defense
from mea.errors import ArtifactError, ConfigError, MeaError
from mea.experiments.backends import Backend
from mea.experiments.records import RESULTS_NAME, open_results
from mea.experiments.sweep_config import SweepSpec
from mea.experiments.trial import Outcome, TrialContext, defense_digest
from mea.runs import write_json
from mea.victim import load_victim


@dataclass(frozen=True)
class SweepResult:
    path: Path
    total: int  # trials in the sweep
    skipped: int  # already recorded before this run
    finished: int  # recorded by this run
    failed: tuple[Outcome, ...]
    wall_s: float
    records: tuple[dict, ...]  # every record in the file after this run


def bar_allowed() -> bool:
    """Progress bars only for a person at a terminal: not in CI, not into a log file."""
    return os.environ.get("CI") != "true" and sys.stderr.isatty()


def run_sweep(
    spec: SweepSpec,
    out: Path,
    backend: Backend,
    data_dir: Path | None = None,
    fresh: bool = False,
    quiet: bool = False,
) -> SweepResult:
    """Run `spec`'s unfinished trials into out/results.jsonl (`fresh`: forget earlier results first)."""
    start = time.perf_counter()
    context, identity = _context(spec, data_dir, backend.name)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{out} exists and is not a directory; choose another --out")
    with open_results(out / RESULTS_NAME, fresh=fresh) as store:
        earlier = store.contents
        _check_compatible(earlier.records, identity, store.path)
        write_json(
            out / "sweep.json",
            {
                "name": spec.name,
                "source": spec.source,
                "victim": str(context.victim_dir),
                "defense": None if context.defense_dir is None else str(context.defense_dir),
                "trials": [{"hash": t.hash, **t.to_dict()} for t in spec.trials],
            },
        )
        done = earlier.hashes
        pending = [t for t in spec.trials if t.hash not in done]
        say = (lambda text: None) if quiet else (lambda text: tqdm.write(text, file=sys.stderr))
        say(
            f"{spec.name}: {len(spec.trials)} trials, {len(spec.trials) - len(pending)} already in {store.path}"
            + (f", {len(pending)} to run on {backend.describe(len(pending))}" if pending else "")
            + (" (a torn last line was cut off)" if earlier.torn else "")
        )
        records, failed = list(earlier.records), []
        bar = tqdm(total=len(pending), desc="sweep", unit="trial", disable=quiet or not bar_allowed(), file=sys.stderr)
        with bar:
            for n, outcome in enumerate(backend.run(pending, context), start=1):
                prefix = f"[{n}/{len(pending)}] {outcome.trial.hash[:8]} {outcome.trial.describe()}"
                if outcome.record is None:
                    failed.append(outcome)
                    say(f"{prefix}: FAILED: {outcome.error}")
                else:
                    store.append(outcome.record)
                    records.append(outcome.record)
                    clone = outcome.record["metrics"]["clone"]
                    say(
                        f"{prefix}: clone {clone['accuracy']:.2%}, fidelity {clone['fidelity']:.2%} "
                        f"({outcome.record['time_s']['total']:.1f} s)"
                    )
                bar.update()
    return SweepResult(
        store.path,
        len(spec.trials),
        len(spec.trials) - len(pending),
        len(pending) - len(failed),
        tuple(failed),
        time.perf_counter() - start,
        tuple(records),
    )


def check_failures(result: SweepResult) -> None:
    """A sweep with failed trials ends in an error naming the first (the finished ones are kept)."""
    if result.failed:
        first = result.failed[0]
        raise MeaError(
            f"{len(result.failed)} of {result.total} trials failed and were not recorded (rerun to retry them); "
            f"first: {first.trial.hash} {first.trial.describe()}: {first.error}"
        )


def _context(spec: SweepSpec, data_dir: Path | None, backend: str) -> tuple[TrialContext, dict]:
    """Check the victim and defense here, before any worker starts; absolute paths for the workers.

    Also returns the fingerprints that earlier records must carry to count as finished here.
    """
    if spec.victim_dir is None:
        raise ConfigError(f"{spec.source}: no victim: set `victim:` in the sweep file or pass --victim DIR")
    victim = load_victim(spec.victim_dir)
    identity = {"victim_fingerprint": victim.fingerprint, "defense_fingerprint": None}
    defense_dir = spec.defense_dir.resolve() if spec.defense_dir is not None else None
    if spec.needs_defense:
        if defense_dir is None:
            raise ConfigError(
                f"{spec.source}: some trials are defended but there is no defense: "
                "set `defense_dir:` in the sweep file or pass --defense DIR"
            )
        identity["defense_fingerprint"] = defense_digest(load_defense(defense_dir, victim).directory)
    context = TrialContext(
        victim_dir=Path(spec.victim_dir).resolve(),
        defense_dir=defense_dir,
        data_dir=cache_root(data_dir).resolve(),
        backend=backend,
    )
    return context, identity


def _check_compatible(records: tuple[dict, ...], identity: dict, path: Path) -> None:
    """Refuse to mix results against another victim (or defense) into one file: their trials would
    look finished here."""
    for number, record in enumerate(records, start=1):
        for key, what in (("victim_fingerprint", "victim"), ("defense_fingerprint", "defense")):
            expected, found = identity[key], record.get(key)
            if (key == "victim_fingerprint" or (expected and found)) and found != expected:
                raise ArtifactError(
                    f"{path}:{number}: these results are against another {what} "
                    f"({str(found)[:12]}, not {str(expected)[:12]}); "
                    "choose another --out, or pass --force to start over"
                )
