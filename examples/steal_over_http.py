"""Steal a served model over HTTP: `mea serve` on 127.0.0.1, an API key with a quota, and an
attacker who sees only the answers (`mea.connect` is the HTTP oracle).

    python examples/steal_over_http.py [--victim runs/victim] [--queries 2000]
"""

from __future__ import annotations

from _common import parse, training, victim

import mea
from mea.serve.process import create_key

args = parse(__doc__.splitlines()[0])
target = victim(args)
db = args.work / "service.db"
db.unlink(missing_ok=True)
with mea.start_server(target.directory, db) as server:
    key = create_key(db, "--name", "thief", "--quota", str(args.queries))
    stolen = mea.attack(
        target, "random", queries=args.queries, oracle=mea.connect(server.url, key), train=training(args)
    )
print(f"{stolen.queries} queries over HTTP: clone accuracy {stolen.clone_accuracy:.2%}, fidelity {stolen.fidelity:.2%}")
