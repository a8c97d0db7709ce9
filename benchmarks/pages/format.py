"""Formatting shared by every page's blocks, and the committed results files as blocks read them."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"


class MissingResults(Exception):
    """A results file a block needs is not there."""


class Results:
    """The committed results files, read once each."""

    def __init__(self, directory: Path = RESULTS_DIR) -> None:
        self.directory = Path(directory)
        self._cache: dict[str, dict | None] = {}

    def get(self, name: str) -> dict | None:
        """The parsed file, or None if it does not exist."""
        if name not in self._cache:
            path = self.directory / name
            self._cache[name] = json.loads(path.read_text()) if path.exists() else None
        return self._cache[name]

    def __getitem__(self, name: str) -> dict:
        record = self.get(name)
        if record is None:
            raise MissingResults(f"benchmarks/results/{name} is missing; the block's command writes it")
        return record


def pct(value: float, digits: int = 2) -> str:
    return f"{100 * value:.{digits}f}%"


def pm(spread: dict, digits: int = 1, unit: str = "%") -> str:
    """mean ± sd of a fraction, in percent (the spread of benchmarks.defense_keys.spread)."""
    return f"{100 * spread['mean']:.{digits}f} ± {100 * spread['sd']:.{digits}f}{unit}"


def span(spread: dict, digits: int = 1) -> str:
    """min-max of a fraction, in percent."""
    return f"{100 * spread['min']:.{digits}f}-{100 * spread['max']:.{digits}f}%"


def count(value: float) -> str:
    return f"{value:,.0f}"


def plural(number: int, word: str) -> str:
    return f"{number:,} {word}{'s' * (number != 1)}"


def mean_sd(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def machine_text(provenance: dict, timed: bool) -> str:
    info = provenance["machine"]
    threads = info["torch_threads"]
    text = f"{info['cores']} cores ({info['cpu']}), torch {info['torch']} with {threads} thread{'s' * (threads != 1)}"
    if timed:
        load = provenance["load_average_1min"]["start"]
        if load is not None:
            text += f", 1-minute load {load:.1f} at the start"
            if load >= 0.25 * info["cores"]:
                text += " (**a busy machine: the times are inflated**)"
    return text


def source(provenance: dict, files: str, timed: bool = False) -> str:
    """The line under a block: which file, which command, when, on what machine."""
    revision = provenance["revision"]
    commit = (revision["commit"] or "unknown")[:10] + (" with local changes" if revision["dirty"] else "")
    return (
        f"<sub>From {files}, written by `{provenance['command']}` on {provenance['date']} "
        f"(revision {commit}; {machine_text(provenance, timed)}).</sub>"
    )


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _load_note(load: dict | None, cores: int) -> str:
    """`load 0.3` for a timing, flagged when the machine was busy."""
    if not load or load.get("start") is None:
        return ""
    busy = load["start"] >= 0.25 * cores
    return f"; 1-minute load {load['start']:.1f}" + (", **busy: inflated**" if busy else "")


def _p(value: float) -> str:
    return "< 1e-300" if value <= 0 else f"{value:.1e}"


def _after(values: list) -> str:
    """'after N queries' over the draws, naming how many draws reached it when not all did."""
    reached = [v for v in values if v is not None]
    if not reached:
        return "never"
    text = count(reached[0]) if min(reached) == max(reached) else f"{count(min(reached))}-{count(max(reached))}"
    partial = "" if len(reached) == len(values) else f" in {len(reached)} of {len(values)} draws"
    return f"after {text} queries{partial}"


def _levels(values: list) -> str:
    """Query counts over the draws: 'never', one value, or a range with how many draws reached it."""
    reached = [v for v in values if v is not None]
    if not reached:
        return "never"
    text = count(reached[0]) if min(reached) == max(reached) else f"{count(min(reached))}-{count(max(reached))}"
    return text if len(reached) == len(values) else f"{text} ({len(reached)} of {len(values)} draws)"


def _keys_source(record: dict) -> str:
    return source(record["provenance"], "`benchmarks/results/defense_keys.json`")


def _draws(record: dict) -> int:
    return len(record["draws"])


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:02.0f} s"


def _full(function: Callable[[dict], str]) -> Callable[[Results], str]:
    def block(results: Results) -> str:
        return function(results["benchmarks_full.json"])

    return block
