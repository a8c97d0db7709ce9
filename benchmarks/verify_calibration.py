"""Does `mea verify` accuse the innocent?  A held-out population of innocent models, each verified
against the evidence of real thefts through `mea serve`.

- **The thefts.** `mea serve --victim V --defense D` on 127.0.0.1; two thieves, each with its own API
  key, run `mea attack --url`: one with label answers (20,000 queries), one with probabilities
  (5,000 queries).  The owner exports the evidence with `mea evidence export`.  Their clones are the
  positive controls.
- **The fingerprint.** `mea fingerprint make --references 40`: 20 reference models rank a suspect.
- **The innocents** (`population()`, 105 models, none of which ever sent a query): the victim's own
  recipe and data with other seeds (`mea train-victim --seed N`, 30 of them), and the five models
  issue 32 found accused (`--seed 11, 12, 15`, `--arch small-cnn --seed 13`, `--arch mlp --seed 14`);
  stronger recipes (affine augmentation, more epochs) and weaker ones (one to three epochs, no
  augmentation); subsets of the owner's training split; the whole public training set; clones
  distilled from independent teachers; and architectures mea does not ship (a wide CNN with batch
  normalisation, LeCun's original tanh/average-pooling LeNet, a deep MLP, softmax regression).
  Their seeds are disjoint from the fingerprint's references'; each model is trained once and
  cached under runs/verify_calibration/.
- **Verification.** Each innocent against each theft's evidence with `verify_suspect`, the function
  `mea verify` runs (the five issue-32 models also through the `mea verify` command itself): the
  watermark p (the verdict's), the fingerprint's rank p (indicative) and the verdict at 1e-6.  For
  the watermark and the fingerprint, the fraction of innocents at p <= t for t = 0.01, 0.05, 0.1
  against the 99% binomial interval of a valid p-value's count.

    python -m benchmarks.verify_calibration --victim runs/victim --defense runs/defense
    python -m benchmarks.verify_calibration --render     # the README block and the plot from the JSON
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from scipy import stats
from torch import nn

from benchmarks.provenance import RESULTS, ROOT, Provenance
from mea import models
from mea.config import VICTIM_TRAINING, LabelLoss, TrainConfig, VictimConfig
from mea.data import load
from mea.defenses.store import load_defense
from mea.ownership.config import DEFAULT_ALPHA
from mea.ownership.evidence import load_evidence
from mea.ownership.fingerprint import Fingerprint
from mea.ownership.references import QUICK, Recipe, train_innocent
from mea.ownership.suspects import ModelSuspect
from mea.ownership.verify import calibration_probes, verify_suspect
from mea.ownership.watermark import defense_watermark
from mea.signature import DEFAULT, Signature
from mea.training import predict_logits
from mea.victim import load_victim, train_victim

CACHE = ROOT / "runs" / "verify_calibration"
OUT = RESULTS / "verify_calibration.json"
PLOT = ROOT / "docs" / "verify_calibration.png"
THRESHOLDS = (0.01, 0.05, 0.1)
FINGERPRINT_REFERENCES = 40
THEFTS = {"label": ("label", 20_000), "probabilities": ("probabilities", 5_000)}  # key output mode, queries
# The five models issue 32 found accused, as it trained them: `mea train-victim --seed N [--arch A]`.
ISSUE_32 = (("lenet5", 15), ("small-cnn", 13), ("lenet5", 11), ("lenet5", 12), ("mlp", 14))
VICTIM_RECIPE_SEEDS = range(101, 131)


# --- architectures mea does not ship -------------------------------------------------------------


class WideCNN(nn.Module):
    """conv(32, 3x3) - BN - pool - conv(64, 3x3) - BN - pool - fc128 - fc10: a common Keras-style digit model."""

    def __init__(self, signature: Signature = DEFAULT) -> None:
        super().__init__()
        self.signature = signature
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 128),
            nn.ReLU(),
            nn.Linear(128, signature.classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class TanhLeNet(nn.Module):
    """LeCun et al. 1998 as written: tanh and average pooling (mea's LeNet-5 uses ReLU and max-pooling)."""

    def __init__(self, signature: Signature = DEFAULT) -> None:
        super().__init__()
        self.signature = signature
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2, self.fc3 = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, signature.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(torch.tanh(self.conv1(x)), 2)
        x = F.avg_pool2d(torch.tanh(self.conv2(x)), 2)
        return self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x.flatten(1))))))


class DeepMLP(nn.Module):
    """784 - 512 - 512 - 256 - 10 with ReLU."""

    def __init__(self, signature: Signature = DEFAULT) -> None:
        super().__init__()
        self.signature = signature
        widths = (signature.pixels, 512, 512, 256)
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in itertools.pairwise(widths):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(widths[-1], signature.classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Softmax(nn.Module):
    """Softmax regression on the pixels (the multinomial logistic model of Tramèr et al. 2016)."""

    def __init__(self, signature: Signature = DEFAULT) -> None:
        super().__init__()
        self.signature = signature
        self.linear = nn.Linear(signature.pixels, signature.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


EXTRA: dict[str, Callable[[Signature], nn.Module]] = {
    "wide-cnn": WideCNN,
    "tanh-lenet": TanhLeNet,
    "deep-mlp": DeepMLP,
    "softmax": Softmax,
}


# --- the population ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Member:
    """One innocent model: `mea train-victim` with a seed (victim=True) or `train_innocent(recipe)`."""

    group: str
    recipe: Recipe
    seed: int
    victim: bool = False  # trained by `train_victim`, as `mea train-victim --seed N --arch A` does

    @property
    def arch(self) -> str:
        """The architecture of the model this member is (a student's, if distilled)."""
        return self.recipe.student or self.recipe.arch

    @property
    def name(self) -> str:
        if self.victim:
            return f"train-victim-{self.recipe.arch}-seed{self.seed}"
        return f"{self.group}-{self.recipe.arch}-seed{self.seed}"


def _hard(epochs: int, **augmentation) -> TrainConfig:
    return TrainConfig(epochs=epochs, lr=3e-3, batch_size=128, loss=LabelLoss.HARD, temperature=1.0, **augmentation)


def population() -> list[Member]:
    members = [Member("victim-recipe", Recipe(a, VICTIM_TRAINING), s, victim=True) for a, s in ISSUE_32]
    members += [Member("victim-recipe", Recipe("lenet5", VICTIM_TRAINING), s, victim=True) for s in VICTIM_RECIPE_SEEDS]
    stronger = (
        Recipe("lenet5", _hard(25, shift=2, rotate=10, scale=0.1)),
        Recipe("small-cnn", _hard(20, shift=2)),
        Recipe("lenet5", _hard(15, shift=2), public=True),
    )
    weaker = (
        Recipe("lenet5", _hard(1)),
        Recipe("lenet5", QUICK),
        Recipe("small-cnn", _hard(1)),
        Recipe("mlp", _hard(2)),
        Recipe("small-cnn", QUICK),
    )
    subsets = (
        Recipe("lenet5", VICTIM_TRAINING, images=1_000),
        Recipe("lenet5", VICTIM_TRAINING, images=5_000),
        Recipe("lenet5", VICTIM_TRAINING, images=20_000),
    )
    public = (Recipe("small-cnn", _hard(8)), Recipe("mlp", _hard(5)), Recipe("lenet5", QUICK))
    public = tuple(dataclasses.replace(r, public=True) for r in public)
    students = (
        Recipe("lenet5", QUICK, student="lenet5"),
        Recipe("lenet5", VICTIM_TRAINING, student="lenet5"),
        Recipe("small-cnn", QUICK, student="mlp"),
        Recipe("mlp", QUICK, student="small-cnn"),
    )
    extra = (
        Recipe("wide-cnn", _hard(4, shift=2)),
        Recipe("tanh-lenet", _hard(8)),
        Recipe("deep-mlp", _hard(6)),
        Recipe("softmax", _hard(8)),
        Recipe("wide-cnn", _hard(2), public=True),
        Recipe("tanh-lenet", QUICK, student="wide-cnn"),
    )
    for group, recipes, copies in (
        ("stronger", stronger, 3),
        ("weaker", weaker, 4),
        ("subset", subsets, 2),
        ("public", public, 3),
        ("student", students, 2),
        ("not-in-mea", extra, 3),
    ):
        members += [Member(group, recipe, 0) for recipe in recipes for _ in range(copies)]
    # Seeds of their own, apart from the victim-recipe models' and the fingerprint references'.
    return [m if m.victim else dataclasses.replace(m, seed=1000 + i) for i, m in enumerate(members)]


def _save(model: nn.Module, arch: str, path: Path) -> None:
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={"arch": arch})


def _load(path: Path, arch: str) -> nn.Module:
    if arch in models.ARCHITECTURES:
        return models.load(path)[0]
    model = EXTRA[arch](DEFAULT)
    model.load_state_dict(load_file(str(path)))
    return model.to(memory_format=torch.channels_last).eval()


def innocent(member: Member, owner: tuple, test) -> Path:
    """Train (once) and cache one innocent model; returns its directory."""
    path = CACHE / "innocents" / member.name
    if (path / "meta.json").exists():
        return path
    scratch = path.with_name(f".{path.name}.partial")
    subprocess.run(["rm", "-rf", str(scratch)], check=True)
    scratch.mkdir(parents=True)
    start = time.perf_counter()
    if member.victim:
        train_victim(VictimConfig(arch=member.recipe.arch, seed=member.seed), scratch / "victim", progress=False)
        model = models.load(scratch / "victim" / "model.safetensors")[0]
    else:
        model = train_innocent(member.recipe, member.seed, *owner, architectures=EXTRA)
        _save(model, member.arch, scratch / "model.safetensors")
    accuracy = float((predict_logits(model, test.images).argmax(1) == test.labels).float().mean())
    meta = {
        "name": member.name,
        "group": member.group,
        "recipe": member.recipe.describe(),
        "arch": member.arch,
        "seed": member.seed,
        "command": (f"mea train-victim --arch {member.recipe.arch} --seed {member.seed}" if member.victim else None),
        "accuracy": accuracy,
        "time_s": time.perf_counter() - start,
    }
    (scratch / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    subprocess.run(["rm", "-rf", str(path)], check=True)
    scratch.replace(path)
    return path


def weights_of(path: Path) -> Path:
    return path / "victim" / "model.safetensors" if (path / "victim").is_dir() else path / "model.safetensors"


# --- the thefts, over HTTP ---------------------------------------------------------------------------


def mea(*args: str) -> subprocess.CompletedProcess:
    """A `mea` command in a fresh process, as a user runs it (no progress bars)."""
    done = subprocess.run(
        [sys.executable, "-m", "mea", *args], capture_output=True, text=True, env={**os.environ, "CI": "true"}
    )
    if done.returncode != 0:
        raise RuntimeError(f"mea {' '.join(args)} failed:\n{done.stderr}")
    return done


def thefts(victim_dir: Path, defense_dir: Path) -> dict:
    """Two thieves steal through a real `mea serve`; the owner exports the evidence.  Cached."""
    from mea.serve.process import create_key, start_server, stop_all

    root = CACHE / "thefts"
    record_path = root / "thefts.json"
    if record_path.exists():
        return json.loads(record_path.read_text())
    subprocess.run(["rm", "-rf", str(root)], check=True)
    root.mkdir(parents=True)
    db = root / "service.db"
    server = start_server(victim_dir, db, root / "server.log", "--defense", str(defense_dir), threads=2)
    record = {}
    try:
        for name, (output, queries) in THEFTS.items():
            key = create_key(db, "--name", f"thief-{name}", "--output", output)
            # The service records a client by its key's id (mea_<id>_<secret>), never by the secret.
            record[name] = {"output": output, "queries": queries, "clients": [key.split("_")[1]]}
            start = time.perf_counter()
            mea(
                "attack",
                "--victim",
                str(victim_dir),
                "--url",
                server.url,
                "--api-key",
                key,
                "--queries",
                str(queries),
                "--out",
                str(root / name),
            )
            metrics = json.loads((root / name / "metrics.json").read_text())
            record[name] |= {"time_s": time.perf_counter() - start, "clone_accuracy": metrics["clone"]["accuracy"]}
    finally:
        stop_all(server)
    mea("evidence", "export", "--db", str(db), "--out", str(root / "evidence.safetensors"))
    evidence = load_evidence(root / "evidence.safetensors")
    for name in THEFTS:
        record[name]["records"] = len(evidence.for_clients(record[name]["clients"]))
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return record


# --- verification ------------------------------------------------------------------------------------


def verify_row(suspect_path: Path, arch: str, material: dict) -> dict:
    """The suspect verified against each theft's evidence: watermark p (decides), fingerprint p (indicative)."""
    row = {}
    for name, evidence in material["evidence"].items():
        verdict = verify_suspect(
            ModelSuspect(_load(suspect_path, arch), arch, str(suspect_path)),
            watermark=material["watermark"],
            records=evidence,
            probes=material["probes"],
            fingerprint=material["fingerprint"],
        )
        tests = {t.name: t for t in verdict.tests}
        row[name] = {
            "watermark_p": tests["watermark"].p_value,
            "fingerprint_p": tests["fingerprint"].p_value,
            "fingerprint_matches": tests["fingerprint"].matches,
            "verdict_p": verdict.p_value,
            "derived": verdict.derived,
            "queries": verdict.queries,
        }
    return row


def cli_verdict(suspect: Path, victim_dir: Path, defense_dir: Path, clients: list[str], out: Path) -> dict:
    """The documented command, as issue 32 ran it, on one suspect; its verdict.json."""
    client_args = [arg for client in clients for arg in ("--client", client)]
    mea(
        "verify",
        "--suspect",
        str(suspect),
        "--evidence",
        str(CACHE / "thefts" / "evidence.safetensors"),
        *client_args,
        "--fingerprint",
        str(CACHE / "fingerprint.safetensors"),
        "--victim",
        str(victim_dir),
        "--defense",
        str(defense_dir),
        "--out",
        str(out),
        "--force",
    )
    verdict = json.loads((out / "verdict.json").read_text())
    tests = {t["name"]: t for t in verdict["tests"]}
    return {
        "derived": verdict["derived"],
        "verdict_p": verdict["p_value"],
        "watermark_p": tests["watermark"]["p_value"],
        "fingerprint_p": tests["fingerprint"]["p_value"],
        "fingerprint_counted": tests["fingerprint"]["counted"],
    }


def calibration(p_values: list[float]) -> list[dict]:
    """For each threshold t: how many p <= t, against the 99% interval of Binomial(n, t)."""
    n = len(p_values)
    rows = []
    for t in THRESHOLDS:
        low, high = stats.binom.interval(0.99, n, t)
        count = int(np.sum(np.asarray(p_values) <= t))
        rows.append(
            {"t": t, "n": n, "count": count, "fraction": count / n, "interval": [int(low), int(high)]}
            | {"within": bool(low <= count <= high)}
        )
    return rows


def evaluate(victim_dir: Path, defense_dir: Path, threads: int) -> dict:
    torch.set_num_threads(threads)
    provenance = Provenance()
    victim = load_victim(victim_dir)
    CACHE.mkdir(parents=True, exist_ok=True)
    print("thefts through mea serve", flush=True)
    theft = thefts(victim_dir, defense_dir)
    fingerprint_path = CACHE / "fingerprint.safetensors"
    if not fingerprint_path.exists():
        print(f"fingerprint ({FINGERPRINT_REFERENCES} references)", flush=True)
        mea(
            "--threads",
            str(threads),
            "fingerprint",
            "make",
            "--victim",
            str(victim_dir),
            "--out",
            str(fingerprint_path),
            "--references",
            str(FINGERPRINT_REFERENCES),
        )
    fingerprint = Fingerprint.load(fingerprint_path)
    evidence = load_evidence(CACHE / "thefts" / "evidence.safetensors")
    material = {
        "watermark": defense_watermark(load_defense(defense_dir, victim).secret),
        "probes": calibration_probes(victim),
        "fingerprint": fingerprint,
        "evidence": {name: evidence.for_clients(theft[name]["clients"]) for name in THEFTS},
    }
    test = load("mnist", "test")
    owner = victim.owner_sets()
    controls = {}
    for name in THEFTS:
        clone = CACHE / "thefts" / name / "clone.safetensors"
        controls[name] = {**theft[name], **verify_row(clone, models.load(clone)[1], material)}
        print(f"  thief {name}: {controls[name][name]}", flush=True)
    rows = []
    members = population()
    print(f"innocents ({len(members)})", flush=True)
    for i, member in enumerate(members):
        path = innocent(member, owner, test)
        meta = json.loads((path / "meta.json").read_text())
        row = {**meta, "verdicts": verify_row(weights_of(path), member.arch, material)}
        if member.victim and (member.recipe.arch, member.seed) in ISSUE_32:
            label = theft["label"]["clients"]
            row["cli"] = cli_verdict(weights_of(path), victim_dir, defense_dir, label, CACHE / "verdicts" / member.name)
        rows.append(row)
        worst = min(v["watermark_p"] for v in row["verdicts"].values())
        print(
            f"  [{i + 1}/{len(members)}] {member.name}: acc {meta['accuracy']:.4f}, smallest watermark p "
            f"{worst:.3g}, fingerprint p {row['verdicts']['label']['fingerprint_p']:.3g}",
            flush=True,
        )
    verdicts = [v for r in rows for v in r["verdicts"].values()]
    fingerprint_ps = [r["verdicts"]["label"]["fingerprint_p"] for r in rows]  # one fingerprint: the same for both
    results = {
        "victim": {"directory": str(victim_dir), "fingerprint": victim.fingerprint},
        "alpha": DEFAULT_ALPHA,
        "fingerprint": {
            "size": len(fingerprint),
            "references_ranking": len(fingerprint.reference_matches),
            "smallest_p_value": 1 / (len(fingerprint.reference_matches) + 1),
            "reference_recipes": fingerprint.meta.get("reference_recipes", []),
            "reference_match_rates": [m / len(fingerprint) for m in fingerprint.reference_matches],
        },
        "thefts": controls,
        "innocents": rows,
        "summary": {
            "innocents": len(rows),
            "victim_recipe": sum(r["group"] == "victim-recipe" for r in rows),
            "verdicts": len(verdicts),
            "derived": sum(v["derived"] for v in verdicts),
            "smallest_watermark_p": min(v["watermark_p"] for v in verdicts),
            "watermark_calibration": {
                name: calibration([r["verdicts"][name]["watermark_p"] for r in rows]) for name in THEFTS
            },
            "fingerprint_calibration": calibration(fingerprint_ps),
            "fingerprint_calibration_by_group": {
                group: calibration([r["verdicts"]["label"]["fingerprint_p"] for r in rows if r["group"] == group])
                for group in dict.fromkeys(r["group"] for r in rows)
            },
            # The largest number of innocents that would still be consistent with a false-positive rate
            # of zero: the one-sided 95% Clopper-Pearson bound on the rate, with 0 of n verdicts derived.
            "false_positive_rate_upper_95": 1 - 0.05 ** (1 / len(verdicts)),
        },
        "provenance": provenance.record(),
    }
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    return results


# --- the plot ---------------------------------------------------------------------------------------------


def plot(results: dict) -> None:
    """docs/verify_calibration.png: innocents' p-values against the uniform, and every verdict's p."""
    from mea.plots import pyplot

    plt = pyplot()

    rows = results["innocents"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, name, style in (("watermark_p", "watermark (decides)", "-"), ("fingerprint_p", "fingerprint rank", "--")):
        for theft in ("label", "probabilities") if key == "watermark_p" else ("label",):
            values = np.sort([r["verdicts"][theft][key] for r in rows])
            label = f"{name}, {theft} evidence" if key == "watermark_p" else f"{name} (indicative)"
            left.step(values, np.arange(1, len(values) + 1) / len(values), style, where="post", label=label)
    left.plot([0, 1], [0, 1], color="grey", linewidth=0.8, label="valid p-value (uniform)")
    left.set_xlabel("p")
    left.set_ylabel("fraction of innocents at or below p")
    left.set_title(f"{len(rows)} innocent models: p-values")
    left.legend(fontsize=8)
    groups = list(dict.fromkeys(r["group"] for r in rows))
    for i, group in enumerate(groups):
        values = [
            -np.log10(max(v["watermark_p"], 1e-300))
            for r in rows
            if r["group"] == group
            for v in r["verdicts"].values()
        ]
        jitter = np.linspace(-0.25, 0.25, len(values)) if len(values) > 1 else [0]
        right.scatter(i + np.asarray(jitter), values, s=10, color="tab:green")
    for j, (name, control) in enumerate(results["thefts"].items()):
        value = -np.log10(max(control[name]["watermark_p"], 1e-300))
        right.scatter([len(groups) + j], [value], s=40, marker="*", color="tab:red")
    right.axhline(-np.log10(results["alpha"]), color="grey", linestyle=":", label=f"alpha = {results['alpha']:g}")
    right.set_xticks(range(len(groups) + len(results["thefts"])))
    right.set_xticklabels([*groups, *(f"thief, {n}" for n in results["thefts"])], rotation=30, ha="right", fontsize=8)
    right.set_ylabel("-log10 watermark p (the verdict's)")
    right.set_yscale("symlog", linthresh=10)
    right.set_title("Innocents (green) and the thieves' clones (red)")
    right.legend(fontsize=8)
    figure.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(PLOT, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--victim", type=Path, default=ROOT / "runs" / "victim")
    parser.add_argument("--defense", type=Path, default=ROOT / "runs" / "defense")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--render", action="store_true", help="Only draw the plot and print the block from the JSON.")
    args = parser.parse_args()
    results = json.loads(OUT.read_text()) if args.render else evaluate(args.victim, args.defense, args.threads)
    plot(results)
    from benchmarks.render import Results, readme_verify_calibration

    print(readme_verify_calibration(Results()))


if __name__ == "__main__":
    main()
