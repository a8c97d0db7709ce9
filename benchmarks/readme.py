"""Render the generated blocks of README.md and docs/*.md from benchmarks/results/, or check them.

Those documents are written by hand except for their generated blocks, each between

    <!-- mea:begin NAME -->
    ...
    <!-- mea:end NAME -->

whose content is `benchmarks.render.BLOCKS[NAME]` applied to the committed results files.  Every
figure of both files sits in such a block, so a figure cannot drift from the file it comes from.

    python -m benchmarks.readme            # rewrite every block in place
    python -m benchmarks.readme --check    # exit 1 naming every block that differs from its files

Pure Python: reads JSON, imports neither torch nor mea, runs in a fraction of a second.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks.render import BLOCKS, MissingResults, Results

ROOT = Path(__file__).resolve().parent.parent
# The front door, then the docs site's pages (mkdocs.yml).
DOCUMENTS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
BLOCK = re.compile(
    r"(?P<begin><!-- mea:begin (?P<name>[\w-]+) -->\n)(?P<body>.*?)(?P<end>\n?<!-- mea:end (?P=name) -->)", re.S
)
STALE = "differs from its results files; run `python -m benchmarks.readme`"
MARKER = re.compile(r"<!-- mea:(begin|end) ([\w-]+) -->")


@dataclass(frozen=True)
class Finding:
    document: str
    block: str
    problem: str

    def __str__(self) -> str:
        return f"{self.document}: block {self.block}: {self.problem}"


def render_document(text: str, results: Results, document: str) -> tuple[str, list[Finding]]:
    """The document with every block re-rendered, and what was wrong with it before."""
    findings = []
    begins = [m.group(2) for m in MARKER.finditer(text) if m.group(1) == "begin"]
    ends = [m.group(2) for m in MARKER.finditer(text) if m.group(1) == "end"]
    matched = [m.group("name") for m in BLOCK.finditer(text)]
    for name in sorted(set(begins) | set(ends)):
        if begins.count(name) != ends.count(name) or matched.count(name) != begins.count(name):
            findings.append(Finding(document, name, "unbalanced or nested markers"))
        if begins.count(name) > 1:
            findings.append(Finding(document, name, "appears more than once"))

    def replace(match: re.Match) -> str:
        name = match.group("name")
        if name not in BLOCKS:
            findings.append(Finding(document, name, f"unknown block (known: {', '.join(sorted(BLOCKS))})"))
            return match.group(0)
        try:
            body = BLOCKS[name](results).strip("\n")
        except MissingResults as missing:
            findings.append(Finding(document, name, str(missing)))
            return match.group(0)
        except (KeyError, IndexError, TypeError, StopIteration) as error:
            problem = f"its results file lacks what it reads ({type(error).__name__}: {error}); rerun its command"
            findings.append(Finding(document, name, problem))
            return match.group(0)
        if body != match.group("body").strip("\n"):
            findings.append(
                Finding(document, name, "differs from its results files; run `python -m benchmarks.readme`")
            )
        return f"{match.group('begin')}{body}\n<!-- mea:end {name} -->"

    return BLOCK.sub(replace, text), findings


def run(check: bool, documents: tuple[Path, ...] = DOCUMENTS, results_dir: Path | None = None) -> list[Finding]:
    results = Results(results_dir) if results_dir else Results()
    findings: list[Finding] = []
    used: set[str] = set()
    for path in documents:
        text = path.read_text()
        used |= {m.group("name") for m in BLOCK.finditer(text)}
        rendered, found = render_document(text, results, path.name)
        findings += found
        if not check and rendered != text:
            path.write_text(rendered)
    if documents == DOCUMENTS:
        for name in sorted(set(BLOCKS) - used):
            findings.append(Finding("README.md/docs", name, "defined in benchmarks.render but placed nowhere"))
    return findings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if any block is stale")
    args = parser.parse_args()
    findings = run(args.check)
    stale = [f for f in findings if args.check or f.problem != STALE]
    for finding in stale:
        print(f"error: {finding}", file=sys.stderr)
    if stale:
        sys.exit(1)
    print("README.md and docs/*.md: every block " + ("up to date" if args.check else "rendered"))


if __name__ == "__main__":
    main()
