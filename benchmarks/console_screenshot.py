"""The operator console's screenshot for the README, from a real run.

Starts `mea serve` with the defense, sends three clients' traffic over HTTP (a benign reader of
MNIST test, an in-distribution thief querying MNIST train, a Fashion-MNIST thief that the service
refuses), opens /console in the system's Chromium with an administrator's key, selects the refused
client and saves the page at 1280x800 and at phone width (390x844).

    python -m benchmarks.console_screenshot --victim runs/victim --defense runs/defense
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import httpx

from benchmarks.provenance import ROOT
from mea.data import load
from mea.serve.process import create_key, start_server, stop_all

INFER = "/v2/models/lenet-mnist/infer"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def body(images) -> dict:
    data = images.reshape(-1).tolist()
    return {"inputs": [{"name": "input", "shape": list(images.shape), "datatype": "FP32", "data": data}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--victim", type=Path, required=True)
    parser.add_argument("--defense", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "console.png")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="mea-console-") as tmp:
        root = Path(tmp)
        server = start_server(args.victim, root / "db", root / "log", "--defense", str(args.defense))
        try:
            admin = create_key(server.db, "--name", "operator", "--admin")
            clients = {
                "benign-reader": (
                    create_key(server.db, "--name", "benign-reader"),
                    load("mnist", "test", args.data_dir),
                ),
                "mnist-thief": (
                    create_key(server.db, "--name", "mnist-thief", "--quota", "60000"),
                    load("mnist", "train", args.data_dir),
                ),
                "fashion-thief": (
                    create_key(server.db, "--name", "fashion-thief", "--quota", "60000"),
                    load("fashion-mnist", "train", args.data_dir),
                ),
            }
            with httpx.Client(base_url=server.url, timeout=60) as http:
                for start in range(0, 3000, 100):
                    for name, (token, data) in clients.items():
                        size = 100 if name != "mnist-thief" else 300
                        images = data.images[start * (size // 100) : start * (size // 100) + size].numpy()
                        http.post(INFER, json=body(images), headers={"X-API-Key": token})
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.goto(f"{server.url}/console")
                page.fill("#key", admin)
                page.click("button[type=submit]")
                refused = clients["fashion-thief"][0].split("_")[1]
                page.locator(f'tr[data-client="{refused}"][data-level="refused"]').click()
                page.wait_for_selector("#chart-w canvas")
                page.wait_for_timeout(2500)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out), full_page=True)
                page.set_viewport_size({"width": 390, "height": 844})
                page.wait_for_timeout(1000)
                phone = args.out.with_name(args.out.stem + "-phone.png")
                page.screenshot(path=str(phone), full_page=False)
                browser.close()
        finally:
            stop_all(server)
    print(f"wrote {args.out} and {phone}")


if __name__ == "__main__":
    main()
