"""Proof of theft, measured: the watermark and the fingerprint against every attack, independent
models, removal attacks, many keys, and what benign users pay.

- Clones from every attack the project has, through the deployed defense (OOD gate + watermark),
  each attacker under its own client id, its watermarked answers kept in an evidence store.
- A population of independently trained models (three architectures, several seeds, MNIST train
  with true labels; a second victim trained independently; clones distilled from that victim):
  the false-positive side.
- Removal attacks on the 60,000-query clones (fine-tuning, distillation, pruning, label-smoothed
  and noisy-student retraining): what each costs the thief and what is left of the evidence.
- Sybil attackers spreading their queries over 1, 4 and 16 keys.
- The benign cost per flip rate r: label accuracy of the MNIST-test stream a benign client sends.
- The passive fingerprint (conferrable examples and the victim's errors) against the natural-error
  baseline, as AUROC and p-value of the 60,000-query clone against the population.

Every model is cached under runs/ownership/ (a directory per model, written atomically), so a rerun
only evaluates; verification itself is cheap and always rerun.  One thread by default (the machine
is shared).

    python -m benchmarks.ownership --victim runs/victim --defense runs/defense [--threads 1]
    python -m benchmarks.ownership --render     # the table and the plot from the committed JSON
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from sklearn.metrics import roc_auc_score

from benchmarks.provenance import RESULTS, ROOT, Provenance
from mea import models
from mea.attacks import extract, make_strategy
from mea.config import VICTIM_TRAINING, LabelLoss, TrainConfig, VictimConfig
from mea.data import load, make_pool
from mea.defenses.store import load_defense
from mea.metrics import agreement
from mea.oracle import VictimOracle, parse_output
from mea.ownership.clients import RecordingClient, SybilClient
from mea.ownership.config import DEFAULT_RATE, Budget, FingerprintConfig, WatermarkWeights
from mea.ownership.evidence import EvidenceSet, EvidenceStore, load_evidence
from mea.ownership.fingerprint import CONFERRABLE, ERROR, Fingerprint, fingerprint_victim
from mea.ownership.references import QUICK, Recipe, train_innocent
from mea.ownership.suspects import ModelSuspect
from mea.ownership.verify import Verdict, calibration_probes, reference_rank_test, verify_suspect
from mea.ownership.watermark import defense_watermark
from mea.seeding import derive_seed, generator
from mea.training import fit, predict_logits
from mea.victim import load_victim, train_victim

CACHE = ROOT / "runs" / "ownership"
OUT = RESULTS / "ownership.json"
PLOT = ROOT / "docs" / "ownership.png"
BUDGET = Budget()  # 1,000 queries: records, 10 neighbours per record, the fingerprint (if whole), probes fill the rest
# Other forms of the watermark test, measured on the same clones (`ablation`): what each choice buys.
EQUAL_WEIGHTS = WatermarkWeights(record=1, neighbour=1, probe=1)
NO_NEIGHBOURS = dataclasses.replace(BUDGET, neighbours=0)
RATES = (0.0, 0.001, 0.0025, 0.004, 0.005, 0.01, 0.02)
VICTIM2_EPOCHS = 5
# The attacks whose evidence every independent model is verified with (a large and a small one),
# the clone the passive fingerprint is judged on, and the store whose size is measured.
REFERENCE_EVIDENCE = ("random-label-mnist-train-60000-lenet5", "random-probabilities-mnist-train-5000-lenet5")
TARGET_CLONE = "random-probabilities-mnist-train-60000-lenet5"
STORAGE_CLONE = "random-label-mnist-train-60000-lenet5"


@dataclass(frozen=True)
class CloneSpec:
    strategy: str
    output: str
    queries: int
    pool: str = "mnist-train"
    arch: str = "lenet5"
    self_training: bool = False
    rate: float = DEFAULT_RATE
    keys: int = 1
    seed: int = 0

    @property
    def name(self) -> str:
        parts = [self.strategy, self.output, self.pool, str(self.queries), self.arch]
        if self.self_training:
            parts.append("self-training")
        if self.rate != DEFAULT_RATE:
            parts.append(f"r{self.rate:g}")
        if self.keys != 1:
            parts.append(f"keys{self.keys}")
        return "-".join(parts)


def clone_plan() -> list[CloneSpec]:
    plan = []
    for output in ("probabilities", "label"):
        for queries in (1_000, 5_000, 20_000, 60_000):
            plan.append(CloneSpec("random", output, queries))
        for queries in (5_000, 60_000):
            plan.append(CloneSpec("random", output, queries, pool="fashion-mnist"))
        # Active selection retrains its clone every round: 60,000 queries would take hours here.
        for queries in (1_000, 5_000, 20_000) if output == "probabilities" else (5_000, 20_000):
            plan.append(CloneSpec("active", output, queries))
        for queries in (5_000, 20_000):
            plan.append(CloneSpec("random", output, queries, self_training=True))
        for arch in ("small-cnn", "mlp"):
            for queries in (5_000, 60_000):
                plan.append(CloneSpec("random", output, queries, arch=arch))
    plan += [
        CloneSpec("jbda", "label", 5_000),
        CloneSpec("jbda-tr", "label", 5_000),
        CloneSpec("knockoff-adaptive", "probabilities", 5_000),
        CloneSpec("boundary", "label", 5_000),
    ]
    return plan


SYBIL = [CloneSpec("random", "label", 20_000, keys=k) for k in (1, 4, 16)] + [
    CloneSpec("random", "probabilities", 20_000, keys=16)
]
RATE_CLONES = [CloneSpec("random", "label", 60_000, rate=0.0025)]


# --- data and models ----------------------------------------------------------------------------


@functools.cache
def mnist(part: str):
    return load("mnist", part)


def accuracy(model: torch.nn.Module) -> float:
    test = mnist("test")
    return float((predict_logits(model, test.images).argmax(1) == test.labels).float().mean())


@functools.cache
def victim_test_logits(directory: Path) -> torch.Tensor:
    return predict_logits(load_victim(directory).model, mnist("test").images)


def atomic_dir(path: Path) -> Path:
    """A scratch directory beside `path`, to be renamed onto it when complete."""
    scratch = path.with_name(f".{path.name}.partial")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    return scratch


def finish(scratch: Path, path: Path, meta: dict) -> None:
    (scratch / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    scratch.replace(path)


def steal(spec: CloneSpec, victim_dir: Path, defense_dir: Path) -> Path:
    """One attack through the deployed defense, its evidence recorded; cached."""
    path = CACHE / "clones" / spec.name
    if (path / "meta.json").exists():
        return path
    victim = load_victim(victim_dir)
    defense = load_defense(defense_dir, victim)
    oracle = defense.oracle(victim, output=parse_output(spec.output))
    oracle.watermark = defense_watermark(defense.secret, rate=spec.rate)
    scratch = atomic_dir(path)
    store = EvidenceStore.open(scratch / "evidence.db", oracle.watermark.config.commitment)
    clients = [f"{spec.name}/key{i}" for i in range(spec.keys)]
    client = RecordingClient(oracle, clients[0], store) if spec.keys == 1 else SybilClient(oracle, clients, store)
    train = TrainConfig(pseudo_label_rounds=2 if spec.self_training else 0)
    start = time.perf_counter()
    extraction = extract(
        client,
        make_pool(spec.pool, seed=spec.seed),
        make_strategy(spec.strategy),
        spec.queries,
        spec.arch,
        train,
        spec.seed,
        progress=False,
    )
    models.save(extraction.clone, spec.arch, scratch / "clone.safetensors")
    flips = store.head()[0]
    if flips:  # a gated attacker (Fashion-MNIST) may have no unflagged answer flipped at all
        store.export(scratch / "evidence.safetensors")
    store.close()
    (scratch / "evidence.db").unlink()
    for suffix in ("-wal", "-shm"):
        (scratch / f"evidence.db{suffix}").unlink(missing_ok=True)
    if spec.queries == 60_000 and spec.pool == "mnist-train" and spec.strategy == "random" and spec.arch == "lenet5":
        transfer = extraction.transfer
        save_file(
            {"answers": transfer.answers.contiguous(), "pool_index": transfer.pool_index.contiguous()},
            str(scratch / "transfer.safetensors"),
        )
    logits = predict_logits(extraction.clone, mnist("test").images)
    finish(
        scratch,
        path,
        {
            "spec": dataclasses.asdict(spec),
            "accuracy": float((logits.argmax(1) == mnist("test").labels).float().mean()),
            "fidelity": agreement(logits, victim_test_logits(victim_dir)),
            "queries": extraction.queries,
            "flips_recorded": flips,
            "time_s": time.perf_counter() - start,
        },
    )
    return path


# --- the independent population -------------------------------------------------------------------


def population_plan() -> list[dict]:
    plan = [
        {"kind": "true-labels", "arch": arch, "seed": seed}
        for arch in ("lenet5", "small-cnn", "mlp")
        for seed in (1, 2, 3, 4)
    ]
    plan.append({"kind": "victim2"})
    plan += [
        {"kind": "victim2-clone", "strategy": s, "output": o, "queries": q, "arch": a}
        for s, o, q, a in (
            ("random", "probabilities", 60_000, "lenet5"),
            ("random", "label", 60_000, "lenet5"),
            ("random", "probabilities", 5_000, "lenet5"),
            ("random", "label", 5_000, "lenet5"),
            ("active", "probabilities", 5_000, "lenet5"),
            ("random", "probabilities", 20_000, "small-cnn"),
            ("random", "label", 60_000, "small-cnn"),
            ("random", "probabilities", 20_000, "mlp"),
        )
    ]
    return plan


def member_name(member: dict) -> str:
    return "-".join(str(v) for v in member.values())


def second_victim() -> Path:
    """An independently trained victim (another seed, 5 epochs), as another owner would have."""
    path = CACHE / "victim2"
    if not (path / "model.safetensors").exists():
        train_victim(
            VictimConfig(train=dataclasses.replace(VICTIM_TRAINING, epochs=VICTIM2_EPOCHS), seed=1),
            path,
            progress=False,
        )
    return path


def independent(member: dict) -> Path:
    path = CACHE / "population" / member_name(member)
    if (path / "meta.json").exists():
        return path
    start = time.perf_counter()
    if member["kind"] == "victim2":
        model, arch = models.load(second_victim() / "model.safetensors")
    elif member["kind"] == "true-labels":
        arch = member["arch"]
        model = train_innocent(Recipe(arch, QUICK), derive_seed(member["seed"], "population"), mnist("train"))
    else:
        arch = member["arch"]
        victim2 = load_victim(second_victim())
        oracle = VictimOracle(victim2.model, parse_output(member["output"]))
        model = extract(
            oracle,
            make_pool("mnist-train", seed=7),
            make_strategy(member["strategy"]),
            member["queries"],
            arch,
            TrainConfig(),
            seed=7,
            progress=False,
        ).clone
    scratch = atomic_dir(path)
    models.save(model, arch, scratch / "model.safetensors")
    finish(scratch, path, {**member, "accuracy": accuracy(model), "time_s": time.perf_counter() - start})
    return path


# --- removal attacks ---------------------------------------------------------------------------------


def _prune(model: torch.nn.Module, fraction: float) -> torch.nn.Module:
    """Global magnitude pruning of every weight matrix and kernel (Han et al. 2015), no retraining."""
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    cut = torch.quantile(torch.cat([w.detach().abs().flatten() for w in weights]), fraction)
    with torch.no_grad():
        for w in weights:
            w[w.abs() < cut] = 0
    return model


def removal(base: Path, attack: str) -> Path:
    """One removal attack on a cached clone; cached."""
    path = CACHE / "removal" / f"{base.name}--{attack}"
    if (path / "meta.json").exists():
        return path
    clone, arch = models.load(base / "clone.safetensors")
    pool = make_pool("mnist-train")  # the attacker's own public, labelled data
    seed = derive_seed(0, f"removal-{attack}")
    start = time.perf_counter()
    if attack.startswith("finetune-"):
        n = int(attack.split("-")[1])
        labels = F.one_hot(pool.labels[:n], 10).float()
        config = TrainConfig(epochs=5, lr=1e-3, batch_size=64, loss=LabelLoss.HARD, temperature=1.0, min_steps=0)
        fit(clone, pool.images[:n], labels, config, generator(seed, "finetune"), progress=False)
        model = clone
    elif attack.startswith("prune-"):
        model = _prune(clone, int(attack.split("-")[1]) / 100)
    else:
        images = pool.images
        teacher = F.softmax(predict_logits(clone, images), dim=1)
        if attack == "distill":  # a fresh student on the clone's soft answers (T = 4)
            answers, config = teacher, TrainConfig()
        elif attack == "label-smoothing":  # retrain on the stolen answers' top-1, smoothed by 0.1
            transfer = load_file(str(base / "transfer.safetensors"))
            images = pool.images[transfer["pool_index"]]
            answers = 0.9 * F.one_hot(transfer["answers"].argmax(1), 10).float() + 0.01
            config = TrainConfig(temperature=1.0)
        elif attack == "noisy-student":  # the clone's hard labels, inputs shifted by up to 2 px
            answers = F.one_hot(teacher.argmax(1), 10).float()
            config = TrainConfig(loss=LabelLoss.HARD, temperature=1.0, shift=2)
        else:
            raise ValueError(attack)
        model = models.build(arch, derive_seed(seed, "student"))
        fit(model, images, answers, config, generator(seed, "student"), progress=False)
    scratch = atomic_dir(path)
    models.save(model, arch, scratch / "model.safetensors")
    finish(
        scratch,
        path,
        {"base": base.name, "attack": attack, "accuracy": accuracy(model), "time_s": time.perf_counter() - start},
    )
    return path


REMOVALS = {
    "random-probabilities-mnist-train-60000-lenet5": (
        "finetune-1000",
        "finetune-10000",
        "distill",
        "prune-50",
        "prune-80",
        "label-smoothing",
        "noisy-student",
    ),
    "random-label-mnist-train-60000-lenet5": ("finetune-1000", "finetune-10000", "distill", "noisy-student"),
}


# --- evaluation ---------------------------------------------------------------------------------


@dataclass
class Material:
    watermark: object
    probes: tuple[torch.Tensor, torch.Tensor]
    fingerprint: Fingerprint
    victim_errors: tuple[torch.Tensor, torch.Tensor]  # MNIST test images the victim gets wrong, its labels


def verdict(
    model_path: Path,
    material: Material,
    evidence: EvidenceSet | None,
    budget: Budget = BUDGET,
    weights: WatermarkWeights | None = None,
) -> Verdict:
    return verify_suspect(
        ModelSuspect.load(model_path),
        watermark=material.watermark,
        records=evidence,
        probes=material.probes,
        fingerprint=material.fingerprint,
        budget=budget,
        weights=weights,
    )


def summary(v: Verdict) -> dict:
    tests = {t.name: t for t in v.tests}
    row = {
        "p_value": v.p_value,
        "derived": v.derived,
        "verify_queries": v.queries,
        **{
            f"{name}_{field}": getattr(tests[name], field)
            for name in tests
            for field in ("p_value", "images", "matches", "statistic")
        },
    }
    if "watermark" in tests:  # each kind of image alone, for diagnosis (the verdict uses the joint test)
        row["watermark_parts"] = tests["watermark"].parts
    return row


def ablation(model_path: Path, material: Material, evidence: EvidenceSet | None) -> dict:
    """The verdict p-value under other forms of the watermark test, on the same suspect and evidence."""
    return {
        "equal_weights": verdict(model_path, material, evidence, weights=EQUAL_WEIGHTS).p_value,
        "no_neighbours": verdict(model_path, material, evidence, budget=NO_NEIGHBOURS).p_value,
    }


def passive_scores(model_path: Path, material: Material) -> dict:
    model, _ = models.load(model_path)
    fp = material.fingerprint
    hits = predict_logits(model, fp.images).argmax(1) == fp.labels
    errors_images, errors_labels = material.victim_errors
    natural = predict_logits(model, errors_images).argmax(1) == errors_labels
    return {
        "fingerprint_all": int(hits.sum()),
        "fingerprint_conferrable": int(hits[fp.kinds == CONFERRABLE].sum()),
        "fingerprint_errors": int(hits[fp.kinds == ERROR].sum()),
        "natural_errors": int(natural.sum()),
    }


def evaluate(victim_dir: Path, defense_dir: Path, threads: int) -> dict:
    torch.set_num_threads(threads)
    provenance = Provenance()
    victim = load_victim(victim_dir)
    defense = load_defense(defense_dir, victim)
    watermark = defense_watermark(defense.secret)

    # The fingerprint, from the owner's own references (seeds apart from the population's).
    fp_path = CACHE / "fingerprint.safetensors"
    if not fp_path.exists():
        fingerprint = fingerprint_victim(victim, FingerprintConfig(seed=1000))
        fp_path.parent.mkdir(parents=True, exist_ok=True)
        fingerprint.save(fp_path)
    fingerprint = Fingerprint.load(fp_path)
    test = mnist("test")
    wrong = victim_test_logits(victim_dir).argmax(1) != test.labels
    material = Material(
        watermark,
        calibration_probes(victim),
        fingerprint,
        (test.images[wrong], victim_test_logits(victim_dir).argmax(1)[wrong]),
    )

    print("benign cost", flush=True)
    benign = benign_cost(victim, defense)
    print("clones", flush=True)
    clone_rows = []
    for spec in dict.fromkeys(clone_plan() + SYBIL + RATE_CLONES):  # the 1-key Sybil is a plan clone
        path = steal(spec, victim_dir, defense_dir)
        meta = json.loads((path / "meta.json").read_text())
        evidence = load_evidence(path / "evidence.safetensors") if meta["flips_recorded"] else None
        row = {**meta, "name": spec.name, **summary(verdict(path / "clone.safetensors", material, evidence))}
        row["ablation"] = ablation(path / "clone.safetensors", material, evidence)
        if spec.keys > 1:
            per_key = []
            for client in sorted(set(evidence.clients)):
                # One key's records and their neighbours alone: no probes, no fingerprint.
                alone = verify_suspect(
                    ModelSuspect.load(path / "clone.safetensors"),
                    watermark=watermark,
                    records=evidence.for_clients([client]),
                    probes=material.probes,
                    budget=dataclasses.replace(BUDGET, probes=0),
                )
                per_key.append(
                    {
                        "client": client,
                        "records": int(sum(c == client for c in evidence.clients)),
                        "p_value": alone.p_value,
                    }
                )
            row["per_key"] = per_key
        row.update(passive_scores(path / "clone.safetensors", material))
        clone_rows.append(row)
        print(
            f"  {spec.name}: acc {meta['accuracy']:.4f} flips {meta['flips_recorded']} p {row['p_value']:.3g}",
            flush=True,
        )

    print("population", flush=True)
    reference_evidence = {
        name: load_evidence(CACHE / "clones" / name / "evidence.safetensors") for name in REFERENCE_EVIDENCE
    }
    all_evidence = [
        load_evidence(CACHE / "clones" / r["name"] / "evidence.safetensors") for r in clone_rows if r["flips_recorded"]
    ]
    population = []
    for member in population_plan():
        path = independent(member)
        meta = json.loads((path / "meta.json").read_text())
        row = {**meta, "name": member_name(member)}
        for name, evidence in reference_evidence.items():
            row[f"with_{name}"] = summary(verdict(path / "model.safetensors", material, evidence))
        # The largest p over every clone's evidence would be the wrong summary: report the smallest.
        everything = [verdict(path / "model.safetensors", material, evidence) for evidence in all_evidence]
        row["smallest_p_over_all_evidence"] = min(v.p_value for v in everything)
        row["derived_with_any_evidence"] = sum(v.derived for v in everything)
        row.update(passive_scores(path / "model.safetensors", material))
        population.append(row)
        print(
            f"  {row['name']}: acc {meta['accuracy']:.4f} smallest p {row['smallest_p_over_all_evidence']:.3g}",
            flush=True,
        )

    print("removal", flush=True)
    removal_rows = []
    for base, attacks in REMOVALS.items():
        base_path = CACHE / "clones" / base
        evidence = load_evidence(base_path / "evidence.safetensors")
        for attack in attacks:
            path = removal(base_path, attack)
            meta = json.loads((path / "meta.json").read_text())
            row = {**meta, **summary(verdict(path / "model.safetensors", material, evidence))}
            row["ablation"] = ablation(path / "model.safetensors", material, evidence)
            row.update(passive_scores(path / "model.safetensors", material))
            removal_rows.append(row)
            print(f"  {base} {attack}: acc {meta['accuracy']:.4f} p {row['p_value']:.3g}", flush=True)

    passive = passive_summary(clone_rows, population, material)
    storage = storage_cost(CACHE / "clones" / STORAGE_CLONE, watermark)
    results = {
        "victim": {"directory": str(victim_dir), "fingerprint": victim.fingerprint, "accuracy": accuracy(victim.model)},
        "watermark": {"rate": watermark.config.rate, "cell_bits": watermark.config.cell_bits, "runner_up": True},
        "verification_budget": dataclasses.asdict(BUDGET),
        "watermark_weights": dataclasses.asdict(WatermarkWeights()),
        "alpha": 1e-6,
        "fingerprint": {
            "size": len(fingerprint),
            **fingerprint.meta,
            "reference_matches": list(fingerprint.reference_matches),
        },
        "benign": benign,
        "clones": clone_rows,
        "population": population,
        "removal": removal_rows,
        "passive": passive,
        "storage": storage,
        "provenance": provenance.record(),
    }
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    return results


def benign_cost(victim, defense) -> list[dict]:
    """The MNIST-test stream of one benign client, answered label-only and with probabilities."""
    test = mnist("test")
    rows = []
    plain = predict_logits(victim.model, test.images)
    own_runner_up = plain.clone()
    own_runner_up[torch.arange(len(plain)), plain.argmax(1)] = -torch.inf
    for rate in RATES:
        answers = {}
        for output in ("label", "probabilities"):
            oracle = defense.oracle(victim, output=parse_output(output))
            oracle.watermark = defense_watermark(defense.secret, rate=rate) if rate > 0 else None
            parts = [
                oracle.respond(test.images[i : i + 100], "benign-user").answers for i in range(0, len(test.images), 100)
            ]
            answers[output] = torch.cat(parts)
        probabilities = answers["probabilities"].clone()
        probabilities[torch.arange(len(plain)), plain.argmax(1)] = -torch.inf
        rows.append(
            {
                "rate": rate,
                "label_accuracy": float((answers["label"].argmax(1) == test.labels).float().mean()),
                "runner_up_kept": float((probabilities.argmax(1) == own_runner_up.argmax(1)).float().mean()),
            }
        )
    rows.append({"rate": None, "undefended_label_accuracy": float((plain.argmax(1) == test.labels).float().mean())})
    return rows


def passive_summary(clones: list[dict], population: list[dict], material: Material) -> dict:
    fp = material.fingerprint
    sizes = {
        "fingerprint_all": len(fp),
        "fingerprint_conferrable": int((fp.kinds == CONFERRABLE).sum()),
        "fingerprint_errors": int((fp.kinds == ERROR).sum()),
        "natural_errors": len(material.victim_errors[0]),
    }
    target = next(c for c in clones if c["name"] == TARGET_CLONE)
    strong = [
        c for c in clones if c["queries"] >= 5_000 and c["spec"]["pool"] == "mnist-train" and c["spec"]["keys"] == 1
    ]
    out = {}
    for key, size in sizes.items():
        negatives = [m[key] / size for m in population]
        row = {
            "size": size,
            "clone_60k_rate": target[key] / size,
            "population_rates": {
                "mean": float(np.mean(negatives)),
                "max": float(np.max(negatives)),
                "min": float(np.min(negatives)),
            },
            "auroc_clone_60k": float(roc_auc_score([1] + [0] * len(negatives), [target[key] / size, *negatives])),
            "auroc_all_clones_5k_up": float(
                roc_auc_score([1] * len(strong) + [0] * len(negatives), [c[key] / size for c in strong] + negatives)
            ),
            "clone_60k_rank_p_vs_population": reference_rank_test(
                key, target[key], size, [m[key] for m in population]
            ).p_value,
        }
        out[key] = row
    return out


def storage_cost(clone_dir: Path, watermark) -> dict:
    """Bytes per record of a standalone SQLite store, measured by writing the records again."""
    evidence = load_evidence(clone_dir / "evidence.safetensors")
    scratch = CACHE / "storage-probe.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{scratch}{suffix}").unlink(missing_ok=True)
    store = EvidenceStore.open(scratch, watermark.config.commitment)
    images = evidence.image_tensor()
    empty = scratch.stat().st_size
    copies = max(1, 2_000 // len(evidence))  # enough records that SQLite's pages are filled
    for copy, i in itertools.product(range(copies), range(0, len(images), 50)):
        store.append(
            f"storage-probe-{copy}",
            images[i : i + 50],
            torch.from_numpy(evidence.answers[i : i + 50]),
            torch.from_numpy(evidence.victim_labels[i : i + 50]),
        )
    store.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    size = scratch.stat().st_size - empty
    export = (clone_dir / "evidence.safetensors").stat().st_size
    per_record = size / (copies * len(evidence))
    return {
        "records": len(evidence),
        "sqlite_bytes_per_record": per_record,
        "export_bytes_per_record": export / len(evidence),
        "rate": watermark.config.rate,
        "sqlite_mb_per_million_queries": per_record * watermark.config.rate * 1e6 / 1e6,
    }


# --- the table and the plot ----------------------------------------------------------------------


def render(results: dict) -> str:
    """docs/ownership.png from the results alone; returns the README block's text (benchmarks.render)."""
    from mea.plots import pyplot

    plt = pyplot()

    from benchmarks.render import ownership_markdown

    benign = [r for r in results["benign"] if r["rate"] is not None]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    gate_only = benign[0]["label_accuracy"]
    left.plot([100 * r["rate"] for r in benign], [100 * (gate_only - r["label_accuracy"]) for r in benign], "o-")
    left.axhline(0.5, color="grey", linestyle="--", label="0.5 pp")
    left.axvline(100 * results["watermark"]["rate"], color="tab:red", linestyle=":", label="default r")
    left.set_xlabel("flip rate r (% of answers)")
    left.set_ylabel("benign label accuracy lost (pp)")
    left.set_title("What benign users pay")
    left.legend()
    for output, marker in (("probabilities", "o"), ("label", "s")):
        rows = [
            r
            for r in results["clones"]
            if r["spec"]["strategy"] == "random"
            and r["spec"]["output"] == output
            and r["spec"]["pool"] == "mnist-train"
            and r["spec"]["arch"] == "lenet5"
            and r["spec"]["keys"] == 1
            and not r["spec"]["self_training"]
            and r["spec"]["rate"] == results["watermark"]["rate"]
        ]
        rows.sort(key=lambda r: r["queries"])
        right.plot(
            [r["queries"] for r in rows],
            [-np.log10(max(r["p_value"], 1e-300)) for r in rows],
            marker + "-",
            label=f"clone, {output}",
        )
    worst = min(m["smallest_p_over_all_evidence"] for m in results["population"])
    right.axhline(-np.log10(worst), color="tab:green", linestyle="--", label="most suspicious independent model")
    right.axhline(6, color="grey", linestyle=":", label="p = 1e-6")
    right.set_xscale("log")
    right.set_ylim(bottom=0)
    right.set_xlabel("attacker's queries")
    right.set_ylabel("-log10 p (verdict)")
    right.set_title("Evidence against random-sampling clones")
    right.legend(fontsize=8)
    figure.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(PLOT, dpi=120)
    plt.close(figure)
    return ownership_markdown(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--victim", type=Path, default=ROOT / "runs" / "victim")
    parser.add_argument("--defense", type=Path, default=ROOT / "runs" / "defense")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--render", action="store_true", help="Only render the table and plot from the results file.")
    args = parser.parse_args()
    results = json.loads(OUT.read_text()) if args.render else evaluate(args.victim, args.defense, args.threads)
    print(render(results))


if __name__ == "__main__":
    main()
