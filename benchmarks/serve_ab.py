"""`mea serve`'s throughput at two revisions, measured in turns in one run.

A shared machine's speed drifts by more than most changes to the service are worth (the in-process
oracle's own rate moved by a quarter between two runs of one evening), so a change is judged against
its baseline measured in turns with it, never against an older results file.
Each revision's `src/` is taken from git (`git archive`) and served by this checkout's interpreter;
the traffic is `benchmarks.serve_throughput`'s (binary tensors, benign MNIST images, fresh keys).

    python -m benchmarks.serve_ab --baseline REV --victim DIR --defense DIR
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import uuid
from pathlib import Path

import numpy as np

from benchmarks.provenance import RESULTS, ROOT, Provenance
from benchmarks.serve_throughput import measure
from mea.data import load
from mea.serve.client import binary_infer_request
from mea.serve.db import Database
from mea.serve.keys import KeyStore
from mea.serve.process import start_server, stop_all


def source_tree(revision: str, root: Path) -> Path:
    """The revision's `src/` under `root` (the working tree's own for "WORKTREE")."""
    if revision == "WORKTREE":
        return ROOT / "src"
    out = root / revision
    out.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", revision, "src"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out / "src"


def resolve(revision: str) -> str:
    """A revision's short commit hash (so that "HEAD" in a results file still names a commit later)."""
    if revision == "WORKTREE":
        return revision
    done = subprocess.run(["git", "rev-parse", "--short", revision], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: {revision!r} is not a git revision here; give a commit, tag or branch")
    return done.stdout.strip()


def serve_and_measure(
    src: Path, args: argparse.Namespace, images: np.ndarray, batch: int, root: Path
) -> dict[str, float]:
    """Start the revision's server (its code first on the path), measure, stop it."""
    name = uuid.uuid4().hex[:8]
    path = os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")]))
    server = start_server(
        args.victim,
        root / f"{name}.db",
        root / f"{name}.log",
        "--defense",
        str(args.defense),
        threads=1,
        env={"PYTHONPATH": path},
    )
    try:
        store = KeyStore(Database(server.db))
        keys = [store.create(f"ab-{i}")[1] for i in range(9)]
        measure(server.url, keys[:1], images, batch, binary_infer_request, 1.0, 1)  # warm-up
        return measure(server.url, keys[1:], images, batch, binary_infer_request, args.seconds, args.clients)
    finally:
        stop_all(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="git revision to compare against")
    parser.add_argument("--candidate", default="WORKTREE", help="git revision, or WORKTREE (this checkout)")
    parser.add_argument("--victim", type=Path, required=True)
    parser.add_argument("--defense", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "serve_ab.json")
    args = parser.parse_args()
    provenance = Provenance()
    images = np.concatenate([load("mnist", part).images.numpy() for part in ("test", "train")])
    root = Path(tempfile.mkdtemp(prefix="mea-serve-ab-"))
    revisions = {"baseline": resolve(args.baseline), "candidate": resolve(args.candidate)}
    trees = {role: source_tree(revision, root) for role, revision in revisions.items()}
    samples: dict[tuple[str, int], list[dict]] = {}
    for round_ in range(args.rounds):
        for batch in (256, 1):
            for role in ("baseline", "candidate"):  # in turns: a slow spell hits both
                result = serve_and_measure(trees[role], args, images, batch, root)
                samples.setdefault((role, batch), []).append(result)
                print(f"round {round_ + 1} {role:9s} batch {batch:3d}: {result['images_per_s']:8.0f} images/s, "
                      f"p50 {result['p50_ms']:6.2f} ms", flush=True)  # fmt: skip
    rows = [
        {
            "role": role,
            "revision": revisions[role],
            "batch": batch,
            "images_per_s": statistics.median(s["images_per_s"] for s in runs),
            "p50_ms": statistics.median(s["p50_ms"] for s in runs),
            "samples": runs,
        }
        for (role, batch), runs in samples.items()
    ]
    for batch in (256, 1):
        base, cand = (next(r for r in rows if r["role"] == role and r["batch"] == batch) for role in revisions)
        print(f"batch {batch:3d}: candidate/baseline throughput {cand['images_per_s'] / base['images_per_s']:.2f}x, "
              f"p50 {base['p50_ms']:.2f} -> {cand['p50_ms']:.2f} ms")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"provenance": provenance.record(), "defense": True, "clients": args.clients, "rows": rows}
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
