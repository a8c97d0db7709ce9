"""Prove a theft afterwards: a label-only thief steals through the defended service, whose
watermark flips a keyed fraction of the answers and records them; the owner exports the evidence
and `mea.verify` tests the thief's clone and an innocent model against it.

    python examples/prove_theft.py [--victim runs/victim] [--queries 3000]
"""

from __future__ import annotations

import dataclasses

from _common import parse, training, victim

import mea
from mea.config import VICTIM_TRAINING
from mea.serve.process import create_key

args = parse(__doc__.splitlines()[0])
target = victim(args)
defense = mea.fit_defense(target, args.work / "defense", watermark_rate=0.02, force=True)
db = args.work / "service.db"
db.unlink(missing_ok=True)
with mea.start_server(target.directory, db, defense=defense.directory) as server:
    key = create_key(db, "--name", "thief", "--output", "label")
    stolen = mea.attack(
        target, "random", queries=args.queries, oracle=mea.connect(server.url, key), train=training(args)
    )
evidence = mea.export_evidence(db, args.work / "evidence.safetensors")
# An independent model: an MLP the owner of another service trained on MNIST; it never queried this one.
quick = dataclasses.replace(VICTIM_TRAINING, epochs=1, shift=0)
innocent = mea.train_victim(args.work / "innocent", arch="mlp", train=quick, seed=7, force=True)
for name, suspect in (("the thief's clone", stolen.clone), ("an innocent model", innocent.model)):
    verdict = mea.verify(suspect, victim=target, defense=defense, evidence=evidence)
    print(f"{name}: {verdict.decision}")
