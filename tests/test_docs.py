"""The docs site: `mkdocs build --strict` passes, and every page of the built site loads in
Chromium with no broken link, no missing image and no error, as a reader would open it."""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path, PurePosixPath
from urllib.parse import urljoin, urlparse

import pytest

from browser import CHROMIUM_ARGS, chromium, collect_errors

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def served(site):
    """The built site on 127.0.0.1, as `mkdocs serve` would show it (search needs http, not file://)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_the_site_has_a_page_for_every_topic_and_the_api(site):
    pages = {path.parent.name or "index" for path in site.rglob("index.html")}
    assert {"getting-started", "attacks", "tramer", "defense", "serving", "data-free", "ownership", "sweeps"} <= pages
    api = (site / "api" / "index.html").read_text()
    # The reference is generated from the docstrings: every public name, with its signature.
    for name in ("train_victim", "attack", "fit_defense", "verify", "AttackResult"):
        assert f'id="mea.api.{name}"' in api, name


def test_every_page_loads_with_no_broken_link_or_image(served):
    executable = chromium()
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    visited, queue, images, broken = set(), [served], {}, []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            collect_errors(page, errors)
            while queue:
                url = queue.pop()
                if url in visited:
                    continue
                visited.add(url)
                if PurePosixPath(urlparse(url).path).suffix not in ("", ".html"):
                    # A file the page links to (a sweep's YAML): the browser would download it, not show it.
                    fetched = page.request.get(url)
                    if fetched.status != 200:
                        broken.append(f"{url}: {fetched.status}")
                    continue
                response = page.goto(url, wait_until="load")
                if response is None or response.status != 200:
                    broken.append(f"{url}: {None if response is None else response.status}")
                    continue
                for href in page.eval_on_selector_all("a[href]", "links => links.map(a => a.href)"):
                    target = href.split("#")[0]
                    if urlparse(target).netloc == urlparse(served).netloc and target not in visited:
                        queue.append(target)
                for image in page.eval_on_selector_all(
                    "img", "imgs => imgs.map(i => [i.currentSrc || i.src, i.complete && i.naturalWidth > 0])"
                ):
                    images[image[0]] = image[1]
        finally:
            browser.close()
    assert not broken, broken
    assert not errors, errors
    assert len(visited) >= 12, sorted(visited)
    assert images and all(images.values()), [src for src, ok in images.items() if not ok]
    assert urljoin(served, "ownership/") in visited and urljoin(served, "api/") in visited
