"""`mea report`: figures and tables from a real (tiny) sweep, in one self-contained HTML page."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import pytest

from browser import CHROMIUM_ARGS, chromium, collect_errors
from cli import mea
from mea.errors import ArtifactError
from mea.experiments.backends import LocalBackend
from mea.experiments.records import read_results
from mea.experiments.seed_table import STUDY_ROWS, study_trials, write_seed_table
from mea.experiments.sweep import run_sweep
from mea.experiments.sweep_config import load_sweep
from mea.report import write_report
from sweeps import TWENTY, write_sweep

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sweep_dir(twenty_trials, victim_dir, defense_dir, data_dir, tmp_path_factory) -> Path:
    """The suite's 20-trial sweep (two budgets, undefended and defended, five seeds) resumed in a copy
    with two label-only trials added: the report groups by output mode too."""
    directory = tmp_path_factory.mktemp("report-sweep")
    shutil.copytree(twenty_trials / "out", directory / "out")
    label = [{"output": "label"}, {"output": "label", "queries": 400}]
    config = write_sweep(directory / "sweep.yaml", victim_dir, defense_dir, grid=TWENTY, trials=label)
    result = run_sweep(load_sweep(config), directory / "out", LocalBackend(1), data_dir, quiet=True)
    assert (result.skipped, result.finished, result.failed) == (20, 2, ())
    return directory / "out"


def test_report_renders_figures_tables_and_one_self_contained_page(sweep_dir, tmp_path):
    out = tmp_path / "report"
    done = mea("report", str(sweep_dir), "--out", str(out))
    assert done.returncode == 0, done.stderr
    figures = ["accuracy_vs_budget.png", "fidelity_vs_budget.png", "defense_tradeoff.png", "confusion_best_clone.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*figures, "report.html", "report.md"])
    for name in figures:
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000, name

    page = (out / "report.html").read_text()
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(embedded) == len(figures)
    assert {base64.b64decode(e) for e in embedded} == {(out / n).read_bytes() for n in figures}
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing fetched from elsewhere
    assert "Defense trade-off" in page and "benign accuracy (%)" in page and "undefended" in page

    markdown = (out / "report.md").read_text()
    assert all(f"]({name})" in markdown for name in figures)
    assert "| output | queries | defense | seeds | clone accuracy (%) |" in markdown
    assert "Study accuracy" not in markdown  # no study rows in this sweep: no seed table


def test_report_puts_the_seed_table_beside_the_study(sweep_dir, tmp_path):
    # The study's runs take minutes each; its table is rendered here from real records relabelled
    # with the study's five configs (the report reads configs and numbers, not how they came about).
    records = [r for r in read_results(sweep_dir / "results.jsonl").records if not r["config"]["defense"]]
    lines = []
    for seed in (0, 1):
        for trial, record in zip(study_trials(seed), records[: len(STUDY_ROWS)], strict=True):
            lines.append(json.dumps({**record, "config": json.loads(json.dumps(trial.to_dict())), "seed": seed}))
    path = tmp_path / "study.jsonl"
    path.write_text("\n".join(lines) + "\n")
    page = write_report(path, tmp_path / "report").read_text()
    assert "The study&#x27;s table, rerun" in page and "Study accuracy (%)" in page
    for row in STUDY_ROWS:
        assert f"<td>{row.accuracy:.2f}</td>" in page
    assert "mean over seeds 0, 1" in page
    # The preset's own summary, written beside its results, reads the same records.
    table = write_seed_table(list(read_results(path).records), tmp_path)
    assert table.count("\n") == 2 + len(STUDY_ROWS) and "| 1 | 0.0001 | 10 |" in table
    assert "Seeds: 0, 1 (mean)" in (tmp_path / "seed_table.md").read_text()
    assert len(json.loads((tmp_path / "seed_table.json").read_text())) == len(STUDY_ROWS)
    assert not (tmp_path / "report" / "defense_tradeoff.png").exists()  # no defended trials


def test_report_without_results_is_a_clear_error(tmp_path):
    with pytest.raises(ArtifactError, match="no results at"):
        write_report(tmp_path, tmp_path / "report")
    (tmp_path / "results.jsonl").write_text('{"hash": "a", "format": 1')  # only a torn line
    with pytest.raises(ArtifactError, match="holds no finished trials"):
        write_report(tmp_path, tmp_path / "report")


def test_report_opens_in_a_headless_browser_without_errors(sweep_dir, tmp_path):
    """The page as a reader sees it: rendered by Chromium, every figure decoded and on screen, no errors."""
    executable = chromium()
    from playwright.sync_api import sync_playwright

    url = write_report(sweep_dir, tmp_path / "report").resolve().as_uri()
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            collect_errors(page, errors)
            page.goto(url, wait_until="load")
            figures = page.locator("img")
            count = figures.count()
            seen = []
            for i in range(count):
                figure = figures.nth(i)
                figure.scroll_into_view_if_needed()
                box = figure.bounding_box()
                seen.append(
                    {
                        "alt": figure.get_attribute("alt"),
                        "visible": figure.is_visible(),
                        "natural_width": figure.evaluate("img => img.naturalWidth"),
                        "complete": figure.evaluate("img => img.complete"),
                        "shown_width": box["width"] if box else 0,
                    }
                )
            title = page.title()
        finally:
            browser.close()
    assert errors == []
    assert count == 4, seen  # the four figures of this sweep (test above)
    for figure in seen:
        assert figure["visible"] and figure["complete"], figure
        assert figure["natural_width"] > 100 and figure["shown_width"] > 100, figure
    assert title
