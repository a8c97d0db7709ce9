"""The operator console and /metrics, run for real: a server on 127.0.0.1, traffic over HTTP, and the
page driven in the system's Chromium."""

from __future__ import annotations

import re
import sqlite3
import threading

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from browser import CHROMIUM_ARGS, chromium, collect_errors
from mea.data import load
from mea.serve.db import Database
from mea.serve.keys import KeyStore
from mea.serve.metrics import MAX_CLIENTS
from mea.serve.process import create_key, start_server, stop_all

INFER = "/v2/models/lenet-mnist/infer"


def body(images: np.ndarray) -> dict:
    return {
        "inputs": [
            {"name": "input", "shape": list(images.shape), "datatype": "FP32", "data": images.reshape(-1).tolist()}
        ]
    }


@pytest.fixture(scope="module")
def served(victim_dir, defense_dir, data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("console")
    server = start_server(victim_dir, root / "db", root / "log", "--defense", str(defense_dir), data_dir=data_dir)
    yield server
    stop_all(server)


def key_id(token: str) -> str:
    return token.split("_")[1]


def login(url: str, token: str) -> tuple[httpx.Client, str | None]:
    """A browser-like session: the login form, then the page's CSRF token (None if refused)."""
    client = httpx.Client(base_url=url)
    if client.post("/console/login", data={"key": token}).status_code != 303:
        return client, None
    page = client.get("/console").text
    found = re.search(r'<meta name="csrf" content="([^"]+)">', page)
    return client, found.group(1) if found else None


def test_keys_keep_to_their_side_and_actions_need_the_csrf_token(served, data_dir):
    admin, user = create_key(served.db, "--name", "ops", "--admin"), create_key(served.db, "--name", "alice")
    images = load("mnist", "test", data_dir).images[:4].numpy()
    # An administrator's key cannot run inference.
    refused = httpx.post(f"{served.url}{INFER}", json=body(images), headers={"X-API-Key": admin})
    assert refused.status_code == 403 and "console, not inference" in refused.json()["error"]
    # An inference key opens neither the page nor its API.
    client, csrf = login(served.url, user)
    assert csrf is None and "Log in" in client.get("/console").text
    assert client.get("/console/api/overview").status_code == 401
    assert httpx.get(f"{served.url}/console/api/overview", headers={"X-API-Key": user}).status_code == 401
    assert client.post(f"/console/api/clients/{key_id(user)}/suspend").status_code == 401
    # The administrator's session reads everything; an action without the CSRF token is refused.
    session, csrf = login(served.url, admin)
    assert csrf is not None
    names = [c["name"] for c in session.get("/console/api/overview").json()["clients"]]
    assert "alice" in names and "ops" not in names
    assert session.post(f"/console/api/clients/{key_id(user)}/suspend").status_code == 403
    assert (
        session.post(f"/console/api/clients/{key_id(user)}/suspend", headers={"X-CSRF-Token": "forged"}).status_code
        == 403
    )
    assert httpx.post(f"{served.url}{INFER}", json=body(images), headers={"X-API-Key": user}).status_code == 200
    # With it: suspend, and the next request is refused; lift, and it is answered; change the quota.
    csrf_header = {"X-CSRF-Token": csrf}
    assert session.post(f"/console/api/clients/{key_id(user)}/suspend", headers=csrf_header).status_code == 200
    assert httpx.post(f"{served.url}{INFER}", json=body(images), headers={"X-API-Key": user}).status_code == 403
    assert session.post(f"/console/api/clients/{key_id(user)}/lift", headers=csrf_header).status_code == 200
    assert httpx.post(f"{served.url}{INFER}", json=body(images), headers={"X-API-Key": user}).status_code == 200
    quota = session.post(f"/console/api/clients/{key_id(user)}/quota", headers=csrf_header, json={"quota": 10})
    assert quota.status_code == 200 and quota.json()["detail"] == "quota None -> 10"
    over = httpx.post(f"{served.url}{INFER}", json=body(images), headers={"X-API-Key": user})
    assert over.status_code == 429  # 8 used, 4 more asked of 10
    with sqlite3.connect(served.db) as db:
        actions = db.execute(
            "SELECT endpoint, actor FROM audit WHERE key_id = ? AND endpoint LIKE 'admin:%' ORDER BY id",
            (key_id(user),),
        ).fetchall()
    assert actions == [(f"admin:{name}", key_id(admin)) for name in ("suspend", "lift", "quota")]
    # Nothing reveals a key: not the page, not its API, not /metrics.
    shown = (
        session.get("/console").text
        + session.get("/console/api/overview").text
        + httpx.get(f"{served.url}/metrics").text
    )
    for token in (admin, user):
        assert token not in shown and token.split("_", 2)[2] not in shown  # the secret may hold "_" itself


def test_metrics_parse_and_per_client_series_are_capped(served, data_dir):
    keys = KeyStore(Database(served.db))  # in process: one `mea keys create` each would take a minute
    tokens = [keys.create(f"c{i}")[1] for i in range(MAX_CLIENTS + 5)]
    images = load("mnist", "test", data_dir).images[:3].numpy()
    assert httpx.post(f"{served.url}{INFER}", json=body(images), headers={"X-API-Key": tokens[0]}).status_code == 200
    text = httpx.get(f"{served.url}/metrics").text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    levels = families["mea_client_level"].samples
    assert len(levels) == MAX_CLIENTS  # the most recently active, no more
    assert any(sample.labels["client"] == key_id(tokens[0]) for sample in levels)
    assert families["mea_clients_total"].samples[0].value >= MAX_CLIENTS + 5
    statuses = {s.labels["status"]: s.value for s in families["mea_requests"].samples if s.name == "mea_requests_total"}
    assert statuses["200"] >= 1
    histogram = families["mea_request_latency_seconds"].samples
    count = next(s.value for s in histogram if s.name.endswith("_count"))
    assert count == statuses["200"]


def test_the_console_shows_an_attacker_refused_and_revokes_a_key(served, data_dir, tmp_path):
    """In Chromium: the page updates itself while a Fashion-MNIST attacker is refused and a benign client
    stays normal; a revoke clicked on the page makes that key's next request fail with 401."""
    executable = chromium()
    from playwright.sync_api import sync_playwright

    admin = create_key(served.db, "--name", "operator", "--admin")
    benign = create_key(served.db, "--name", "benign-reader")
    thief = create_key(served.db, "--name", "fashion-thief")
    mnist = load("mnist", "test", data_dir).images[:600].numpy()
    fashion = load("fashion-mnist", "test", data_dir).images[:600].numpy()
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            collect_errors(page, errors)
            page.goto(f"{served.url}/console")
            page.fill("#key", admin)
            page.click("button[type=submit]")
            thief_row = page.locator(f'tr[data-client="{key_id(thief)}"]')
            benign_row = page.locator(f'tr[data-client="{key_id(benign)}"]')
            thief_row.wait_for()
            assert thief_row.get_attribute("data-level") == "normal"

            def traffic() -> None:  # both clients send while the page is open
                with httpx.Client(base_url=served.url, timeout=60) as http:
                    for start in range(0, 600, 50):
                        http.post(INFER, json=body(mnist[start : start + 50]), headers={"X-API-Key": benign})
                        http.post(INFER, json=body(fashion[start : start + 50]), headers={"X-API-Key": thief})

            sender = threading.Thread(target=traffic)
            sender.start()
            # No reload: the page's own polling must turn the attacker's row to refused.
            page.wait_for_selector(f'tr[data-client="{key_id(thief)}"][data-level="refused"]', timeout=120_000)
            sender.join()
            page.wait_for_function(
                "id => document.querySelector(`tr[data-client='${id}'] td[data-label='Requests/min']`)"
                ".textContent !== '0.0'",
                arg=key_id(benign),
            )
            assert benign_row.get_attribute("data-level") == "normal"
            thief_row.click()  # its charts
            page.wait_for_selector("#chart-images canvas")
            page.screenshot(path=str(tmp_path / "console-1280.png"), full_page=True)
            for width, height in ((1280, 800), (390, 844)):
                page.set_viewport_size({"width": width, "height": height})
                page.wait_for_timeout(300)
                overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
                assert overflow <= 0, f"horizontal scrolling at {width}x{height}: {overflow} px"
            page.screenshot(path=str(tmp_path / "console-390.png"), full_page=True)
            page.set_viewport_size({"width": 1280, "height": 800})
            # Revoke the benign client from the page (the button asks for a second click, and stays
            # armed while the page's refresh rebuilds the table between the two clicks).
            revoke = benign_row.locator('button[data-action="revoke"]')
            revoke.click()
            page.wait_for_timeout(2500)  # at least one refresh (every 2 s) between the clicks
            benign_row.locator('button[data-action="revoke"][data-armed="1"]').wait_for()
            revoke.click()
            page.wait_for_selector(f'tr[data-client="{key_id(benign)}"][data-level="revoked"]')
        finally:
            browser.close()
    after = httpx.post(f"{served.url}{INFER}", json=body(mnist[:4]), headers={"X-API-Key": benign})
    assert after.status_code == 401
    assert errors == []
    assert (tmp_path / "console-1280.png").stat().st_size > 10_000
