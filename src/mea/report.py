"""`mea report`: a sweep's results as figures and tables, in one self-contained HTML page (images
embedded) and in markdown beside the PNGs.

What it shows depends on what the results hold: the study's table when its five runs are there,
clone accuracy and fidelity against the query budget (mean and spread over seeds), the defense's
trade-off when some trials are defended, the best clone's confusion matrix and a table of every
configuration.
"""

from __future__ import annotations

import base64
import html
import json
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mea import plots
from mea.data.catalog import DEFAULT_DATASET, title
from mea.errors import ArtifactError
from mea.experiments.records import read_results, results_path
from mea.experiments.seed_table import HEADER as SEED_TABLE_HEADER
from mea.experiments.seed_table import cells as seed_table_cells
from mea.experiments.seed_table import mean_metrics, study_results
from mea.runs import run_directory

# Dimensions a budget curve runs along (x) or averages over (seeds); every other one tells curves apart.
X_KEY, SEED_KEY, DEFENSE_KEY = "queries", "seed", "defense"


@dataclass
class Section:
    title: str
    text: str = ""
    tables: list[tuple[list[str], list[list[str]]]] = field(default_factory=list)  # (header, rows)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (file name, caption)


def load_records(runs: Path) -> tuple[Path, list[dict]]:
    path = results_path(runs)
    if not path.is_file():
        raise ArtifactError(f"no results at {path}; pass a sweep's --out directory or its results.jsonl")
    records = list(read_results(path).records)  # a torn last line (a sweep in progress) is left out
    if not records:
        raise ArtifactError(f"{path} holds no finished trials yet")
    return path, records


def write_report(runs: Path, out: Path, force: bool = False) -> Path:
    """Write report.html, report.md and the PNGs into `out`; returns the HTML page's path."""
    path, records = load_records(runs)
    with run_directory(out, force) as scratch:
        sections = [
            s
            for s in (
                _overview(path, records),
                _seed_table(records),
                _budget_curves(records, scratch),
                _tradeoff(records, scratch),
                _best_clone(records, scratch),
                _all_configurations(records),
            )
            if s is not None
        ]
        title = f"mea sweep report: {path}"
        (scratch / "report.md").write_text(_markdown(title, sections))
        (scratch / "report.html").write_text(_html(title, sections, scratch))
    return out / "report.html"


# --- grouping --------------------------------------------------------------------------------


def flatten(config: dict) -> dict[str, str | int | float]:
    """One level of keys (train.lr, ...); the defense as one readable value."""
    flat: dict = {}
    for key, value in config.items():
        if key == DEFENSE_KEY:
            flat[key] = defense_label(value)
        elif isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def defense_label(defense: dict | None) -> str:
    if defense is None:
        return "undefended"
    parts = [defense.get("policy") or "own policy"]
    if defense.get("target_fpr") is not None:
        parts.append(f"FPR {defense['target_fpr']:g}")
    return "defended: " + ", ".join(parts)


# The order columns and labels name config keys in: the attack first, then how the clone is trained.
KEY_ORDER = ("strategy", "pool", "output", "queries", "clone_arch", "defense", "seed")


def varying(records: list[dict], exclude: tuple[str, ...]) -> list[str]:
    """The config keys whose value differs between records, but `exclude`."""
    flats = [flatten(r["config"]) for r in records]
    keys = sorted({k for f in flats for k in f}, key=lambda k: (KEY_ORDER.index(k) if k in KEY_ORDER else 99, k))
    return [k for k in keys if k not in exclude and len({json.dumps(f.get(k)) for f in flats}) > 1]


def group(records: list[dict], by: list[str]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for record in records:
        flat = flatten(record["config"])
        groups[tuple(flat.get(k) for k in by)].append(record)
    return dict(groups)


def _label(keys: list[str], values: tuple) -> str:
    named = ("strategy", "output", DEFENSE_KEY)  # their values speak for themselves
    return ", ".join(str(v) if k in named else f"{k}={v}" for k, v in zip(keys, values, strict=True))


def _stats(records: list[dict], metric: Callable[[dict], float]) -> tuple[float, float]:
    values = [metric(r) for r in records]
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _accuracy(r: dict) -> float:
    return 100 * r["metrics"]["clone"]["accuracy"]


def _fidelity(r: dict) -> float:
    return 100 * r["metrics"]["clone"]["fidelity"]


def _benign(r: dict) -> float:
    return 100 * r["metrics"]["benign_accuracy"]


# --- sections --------------------------------------------------------------------------------


def _task(records: list[dict]) -> str:
    """The victims' test set, as reports name it ("MNIST"; records before datasets were a choice are MNIST's)."""
    return ", ".join(sorted({title(r.get("dataset", DEFAULT_DATASET)) for r in records}))


def _overview(path: Path, records: list[dict]) -> Section:
    versions = records[-1]["versions"]
    seeds = sorted({r["seed"] for r in records})
    victims = sorted({r["victim_fingerprint"][:12] for r in records})
    return Section(
        "Overview",
        f"{len(records)} finished trials from `{path}`; seeds {', '.join(map(str, seeds))}; "
        f"victim {', '.join(victims)}; mea {versions['mea']}, torch {versions['torch']}, "
        f"Python {versions['python']}. Accuracy and fidelity are measured on the {_task(records)} test images; "
        "fidelity is the share of them on which the clone's top-1 class equals the victim's. "
        "Spreads are one standard deviation over seeds.",
    )


def _seed_table(records: list[dict]) -> Section | None:
    rows = study_results(records)
    if not rows:
        return None
    header, body = list(SEED_TABLE_HEADER), seed_table_cells([(row, mean_metrics(found)) for row, found in rows])
    seeds = sorted({r["seed"] for _, found in rows for r in found})
    return Section(
        "The study's table, rerun",
        f"The study's settings (Adam, batch 512, constant learning rate, 60,000 probability answers to "
        f"{_task(records)} training images), beside its reported numbers; "
        f"mean over seeds {', '.join(map(str, seeds))}. "
        "Time is the clone's training time in seconds.",
        tables=[(header, body)],
    )


def _budget_curves(records: list[dict], out: Path) -> Section | None:
    keys = varying(records, exclude=(X_KEY, SEED_KEY)) or ["strategy", "output"]
    groups = group(records, keys)
    n_seeds = max(len({r["seed"] for r in found}) for found in groups.values())
    budgets = sorted({r["config"]["queries"] for r in records})
    logx = budgets[-1] >= 10 * budgets[0]
    victim = statistics.fmean(100 * r["metrics"]["victim"]["accuracy"] for r in records)
    section = Section(
        "Clone accuracy and fidelity against the query budget",
        f"One line per configuration ({', '.join(keys)}); points are means over up to {n_seeds} seeds, "
        "bars one standard deviation.",
    )
    for name, metric, ylabel, what in (
        ("accuracy_vs_budget.png", _accuracy, f"clone accuracy on {_task(records)} test (%)", "accuracy"),
        (
            "fidelity_vs_budget.png",
            _fidelity,
            f"fidelity: agreement with the victim on {_task(records)} test (%)",
            "fidelity",
        ),
    ):
        series, spreads = {}, {}
        for values, found in groups.items():
            by_budget = group(found, [X_KEY])
            xs = sorted(q for (q,) in by_budget)
            stats = [_stats(by_budget[(q,)], metric) for q in xs]
            label = _label(keys, values)
            series[label] = (xs, [m for m, _ in stats])
            spreads[label] = [s for _, s in stats]
        plots.line_plot(
            series,
            f"query budget (images{', log scale' if logx else ''})",
            ylabel,
            f"clone {what} vs query budget (mean ± sd over seeds)",
            out / name,
            spreads=spreads,
            logx=logx,
            references={f"victim accuracy {victim:.2f}%": victim} if what == "accuracy" else None,
        )
        section.figures.append((name, f"Clone {what} against the query budget."))
    return section


def _tradeoff(records: list[dict], out: Path) -> Section | None:
    if all(r["config"][DEFENSE_KEY] is None for r in records):
        return None
    keys = varying(records, exclude=(DEFENSE_KEY, SEED_KEY))
    attacks = {v: found for v, found in group(records, keys).items() if any(r["config"][DEFENSE_KEY] for r in found)}
    plt = plots.pyplot()

    fig, ax = plt.subplots(figsize=(6.8, 4.8), dpi=120)
    rows, annotated = [], set()
    for values, found in attacks.items():
        by_defense = group(found, [DEFENSE_KEY])
        points = sorted(
            ((d, _stats(rs, _benign), _stats(rs, _accuracy), rs) for (d,), rs in by_defense.items()),
            key=lambda p: -p[1][0],
        )
        label = _label(keys, values) or "attack"
        ax.errorbar(
            [b for _, (b, _), _, _ in points],
            [c for _, _, (c, _), _ in points],
            xerr=[s for _, (_, s), _, _ in points],
            yerr=[s for _, _, (_, s), _ in points],
            marker="o",
            markersize=4,
            capsize=3,
            label=label,
        )
        for defense, (b, _), (c, _), rs in points:
            if defense not in annotated:  # once per setting: the lines share their x
                annotated.add(defense)
                ax.annotate(defense, (b, c), textcoords="offset points", xytext=(4, 4), fontsize=7, color="dimgrey")
            flagged = [r["metrics"]["flagged_rate"] for r in rs if r["metrics"]["flagged_rate"] is not None]
            rows.append(
                [
                    label,
                    defense,
                    f"{b:.2f}",
                    f"{c:.2f}",
                    f"{100 * statistics.fmean(flagged):.1f}" if flagged else "-",
                    str(len(rs)),
                ]
            )
    ax.set_xlabel(f"benign accuracy: honest users' top-1 on {_task(records)} test (%)")
    ax.set_ylabel(f"clone accuracy on {_task(records)} test (%)")
    ax.set_title("defense trade-off: a defender wants the lower right", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "defense_tradeoff.png")
    plt.close(fig)
    return Section(
        "Defense trade-off",
        "What each defense setting costs honest users (benign accuracy) against what it leaves the attacker "
        "(clone accuracy); means over seeds, bars one standard deviation.",
        tables=[
            (
                ["attack", "defense", "benign accuracy (%)", "clone accuracy (%)", "attack queries flagged (%)", "n"],
                rows,
            )
        ],
        figures=[("defense_tradeoff.png", "Benign accuracy against clone accuracy, per defense setting.")],
    )


def _best_clone(records: list[dict], out: Path) -> Section:
    best = max(records, key=lambda r: r["metrics"]["clone"]["accuracy"])
    c = best["config"]
    description = (
        f"{c['strategy']}, {c['pool']}, {c['output']}, {c['queries']:,} queries, seed {c['seed']}, "
        f"{defense_label(c[DEFENSE_KEY])}"
    )
    plots.confusion_matrix_png(
        best["metrics"]["clone"]["confusion_matrix"],
        f"best clone: accuracy {best['metrics']['clone']['accuracy']:.2%}",
        out / "confusion_best_clone.png",
    )
    return Section(
        "The best clone",
        f"Trial {best['hash']} ({description}): accuracy {_accuracy(best):.2f}%, fidelity {_fidelity(best):.2f}%.",
        figures=[
            ("confusion_best_clone.png", f"Confusion matrix of the best clone on {_task(records)} test (counts).")
        ],
    )


def _all_configurations(records: list[dict]) -> Section:
    keys = varying(records, exclude=(SEED_KEY,)) or ["strategy", "output", X_KEY]
    rows = []
    for values, found in group(records, keys).items():
        acc, acc_sd = _stats(found, _accuracy)
        fid, fid_sd = _stats(found, _fidelity)
        seconds = statistics.fmean(r["time_s"]["total"] for r in found)
        rows.append(
            [
                *map(str, values),
                str(len(found)),
                f"{acc:.2f} ± {acc_sd:.2f}",
                f"{fid:.2f} ± {fid_sd:.2f}",
                f"{statistics.fmean(map(_benign, found)):.2f}",
                f"{seconds:.1f}",
            ]
        )
    header = [*keys, "seeds", "clone accuracy (%)", "fidelity (%)", "benign accuracy (%)", "time per trial (s)"]
    return Section("Every configuration", "Mean ± sd over seeds.", tables=[(header, rows)])


# --- rendering -------------------------------------------------------------------------------


def _markdown(title: str, sections: list[Section]) -> str:
    parts = [f"# {title}\n"]
    for s in sections:
        parts.append(f"## {s.title}\n\n{s.text}\n")
        for header, rows in s.tables:
            parts.append(
                "\n".join(
                    [
                        "| " + " | ".join(header) + " |",
                        "|" + "---|" * len(header),
                        *("| " + " | ".join(row) + " |" for row in rows),
                    ]
                )
                + "\n"
            )
        parts.extend(f"![{caption}]({name})\n" for name, caption in s.figures)
    return "\n".join(parts)


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.85rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: right; }
th { background: #f2f2f2; }
figure { margin: 1rem 0; } img { max-width: 100%; } figcaption { color: #555; font-size: 0.85rem; }
"""


def _html(title: str, sections: list[Section], directory: Path) -> str:
    e = html.escape
    body = [f"<h1>{e(title)}</h1>"]
    for s in sections:
        body.append(f"<h2>{e(s.title)}</h2><p>{e(s.text)}</p>")
        for header, rows in s.tables:
            head = "".join(f"<th>{e(h)}</th>" for h in header)
            cells = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
        for name, caption in s.figures:
            data = base64.b64encode((directory / name).read_bytes()).decode()
            body.append(
                f'<figure><img alt="{e(caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{e(caption)}</figcaption></figure>"
            )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{e(title)}</title><style>{_STYLE}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
