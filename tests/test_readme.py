"""README.md and docs/benchmarks.md against their results files: every generated block must be what
`python -m benchmarks.readme` renders from the committed files under benchmarks/results/, and no
figure may sit outside a block.  Pure Python: reads JSON, trains nothing."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from benchmarks import readme
from benchmarks.render import BLOCKS, Results

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def test_every_block_matches_its_results_files():
    findings = readme.run(check=True)
    assert not findings, "\n".join(map(str, findings))


def test_every_block_is_placed_exactly_once():
    text = "".join(path.read_text() for path in readme.DOCUMENTS)
    for name in BLOCKS:
        assert text.count(f"<!-- mea:begin {name} -->") == 1, name


def _first_number_in_block(text: str, name: str) -> int:
    """Where the first decimal figure of block `name` starts in `text`."""
    block = re.search(rf"<!-- mea:begin {name} -->\n(.*?)<!-- mea:end {name} -->", text, re.S)
    assert block is not None
    number = re.search(r"\d+\.\d+", block.group(1))
    assert number is not None
    return block.start(1) + number.start()


def _new(findings: list, baseline: list) -> list[tuple[str, str]]:
    """The findings that `baseline` (the same check before the change) did not have."""
    return [(f.block, f.problem) for f in findings if f not in baseline]


def _holding(name: str) -> Path:
    """The document that holds block `name`."""
    return next(path for path in readme.DOCUMENTS if f"<!-- mea:begin {name} -->" in path.read_text())


def test_check_names_a_block_whose_figure_was_edited_by_hand():
    path = _holding("victim")
    text = path.read_text()
    at = _first_number_in_block(text, "victim")
    edited = text[:at] + "1" + text[at:]
    _, baseline = readme.render_document(text, Results(), path.name)
    _, findings = readme.render_document(edited, Results(), path.name)
    assert _new(findings, baseline) == [("victim", readme.STALE)]


@pytest.fixture
def results(tmp_path) -> Path:
    """A copy of the committed results files, to change."""
    copy = tmp_path / "results"
    shutil.copytree(RESULTS, copy)
    return copy


def test_check_names_the_blocks_of_a_results_file_that_changed(results):
    baseline = readme.run(check=True, results_dir=results)
    record = json.loads((results / "headline.json").read_text())
    record["victim"]["accuracy"] -= 0.01
    (results / "headline.json").write_text(json.dumps(record))
    new = _new(readme.run(check=True, results_dir=results), baseline)
    assert sorted(new) == [("headlines", readme.STALE), ("victim", readme.STALE)]  # the README's, and its page's


def test_a_missing_results_file_is_named(results):
    baseline = readme.run(check=True, results_dir=results)
    (results / "headline.json").unlink()
    new = dict(_new(readme.run(check=True, results_dir=results), baseline))
    assert set(new) == {"victim", "default-attack", "headlines"}
    assert all("headline.json is missing" in new[block] for block in ("victim", "default-attack"))
    assert new["headlines"] == readme.STALE  # the README's headlines leave out what they cannot read


def test_load_and_fault_block_follows_its_file(results, tmp_path):
    """Without load_fault.json the block says so; once the file exists, the block must show it."""
    placeholder = BLOCKS["load-fault"](Results(tmp_path / "nothing"))
    assert placeholder.startswith("Not yet measured")
    if (results / "load_fault.json").exists():
        assert BLOCKS["load-fault"](Results(results)) != placeholder
        (results / "load_fault.json").unlink()
        assert BLOCKS["load-fault"](Results(results)) == placeholder
    else:
        baseline = readme.run(check=True, results_dir=results)
        record = json.loads((results / "headline.json").read_text())  # any provenance will do
        (results / "load_fault.json").write_text(json.dumps(LOAD_FAULT_EXAMPLE | {"provenance": record["provenance"]}))
        assert _new(readme.run(check=True, results_dir=results), baseline) == [("load-fault", readme.STALE)]


# Results measured against another machine's victim: seeded training gives other weights on
# another CPU's kernels.  Each compares settings against its own victim within one run, and its
# block names that victim (accuracy and fingerprint) beside the figures.
OWN_VICTIM = {
    "fidelity_budgets.json": "fidelity-budgets",
    "ownership.json": "ownership",
    "verify_calibration.json": "verify-calibration",
    "adaptive_attackers.json": "adaptive",
}


def _victim_fingerprint(record: dict) -> str | None:
    """The victim a results file was measured against, in either of the places files keep it."""
    return record.get("victim_fingerprint") or (record.get("victim") or {}).get("fingerprint")


def test_every_results_file_names_the_same_victim():
    fingerprints = {}
    for path in sorted(RESULTS.glob("*.json")):
        found = _victim_fingerprint(json.loads(path.read_text()))
        if found is not None and path.name not in OWN_VICTIM:
            fingerprints[path.name] = found
    assert "headline.json" in fingerprints
    assert set(fingerprints.values()) == {fingerprints["headline.json"]}, fingerprints


@pytest.mark.parametrize(("name", "block"), sorted(OWN_VICTIM.items()))
def test_a_result_against_another_victim_names_it_in_its_block(name, block):
    record = json.loads((RESULTS / name).read_text())
    text = _holding(block).read_text()
    body = text[text.index(f"<!-- mea:begin {block} -->") : text.index(f"<!-- mea:end {block} -->")]
    headline = json.loads((RESULTS / "headline.json").read_text())
    readme_victim = _victim_fingerprint(headline)
    assert readme_victim is not None and _victim_fingerprint(record) != readme_victim
    assert f"`{_victim_fingerprint(record)[:12]}`" in body
    assert "not the victim of the other results" in body


# A figure: a number with a decimal point or a thousands separator, a percentage, a duration or a
# ratio.  Outside the generated blocks and code, none may appear; versions, an arXiv number and
# the code's own parameters (the split, the demo's budget, the noise set) are not measurements.
FIGURE = re.compile(r"\b\d+(?:[.,]\d+)+\b|\b\d+(?:\.\d+)?\s?(?:%|ms\b|s\b|min\b|x\b)")
ALLOWED = re.compile(
    r"Python 3\.11|torch 2\.13\.0|ART 1\.20|uPlot 1\.6\.32|arXiv \d+\.\d+|5,000-image calibration split|"
    r"with 60,000 queries|10,000 uniform-noise\s+images"
)


@pytest.mark.parametrize("path", readme.DOCUMENTS, ids=lambda p: p.name)
def test_no_figure_outside_the_generated_blocks(path):
    text = path.read_text()
    text = readme.BLOCK.sub("", text)
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # commands
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code: options and defaults
    text = ALLOWED.sub("", text)
    stray = [m.group(0) for m in FIGURE.finditer(text)]
    assert not stray, f"figures outside generated blocks in {path.name}: {stray}"


LOAD_FAULT_EXAMPLE = {  # the shape benchmarks.load_fault writes
    "steady": {
        "seconds": 60.0,
        "requests": 1000,
        "requests_per_s": 16.7,
        "answered_images_per_s": 5000.0,
        "by_kind": {"benign binary x32": {"requests": 900, "statuses": {"200": 900}, "p50_ms": 20.0, "p99_ms": 80.0}},
        "server_5xx": 0,
        "server_rss_mb": {"start": 400.0, "peak": 500.0},
        "answered_requests": 900,
        "audit_rows_answered": 900,
        "answered_missing_from_audit": 0,
        "images_answered": 28800,
        "quota_charged": 28800,
        "quota_mismatches": 0,
        "refused_requests": 100,
        "refusals_counted": 100,
    },
    "memory_bomb": {
        "bomb_requests": {"announced": {"413": 10}},
        "server_rss_mb": {"before": 450.0, "peak": 460.0, "growth": 10.0},
        "benign_alone": {"requests": 100, "p50_ms": 10.0, "p99_ms": 30.0},
        "benign_during": {"requests": 90, "p50_ms": 12.0, "p99_ms": 40.0},
    },
    "kill9": {
        "kill_after_s": 10.0,
        "answered_before_kill": 300,
        "answered_missing_from_audit": 0,
        "in_flight_at_kill": 3,
        "charged_but_unanswered_requests": 1,
        "charged_but_unanswered_in_flight": 1,
        "integrity_check": "ok",
        "integrity_check_after_restart": "ok",
        "resent_after_restart": {"replayed": 1, "200": 2},
        "charged_on_resend_images": 64,
        "answered_afresh_on_resend_images": 64,
    },
}
