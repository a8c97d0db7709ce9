"""Is a suspect model derived from this victim?  Statistical tests with a stated null, and the verdict.

**Watermark test (exact).**  One test over every image the suspect is asked about for the
watermark, of three kinds, each fixed before the suspect is asked:

- *records*: the evidence records, the flipped answers a client received (the oldest first);
- *neighbours*: for each record, its `Budget.neighbours` nearest images of the owner's held-out
  calibration split with the same victim class (Euclidean distance of the 8-bit pixels; an image
  identical to a record is never one), counted in the record's (class, cell) group: a clone that
  learned a flip from the record raises its keyed class around it, not only at it;
- *probes*: the first calibration images not used otherwise, each in its own group (the runner-up
  mark and the flips' rule, which clones learn across the whole group).

For each image take the suspect's mid-rank of the group's keyed class w(v, cell) among the nine
classes other than the victim's class v (ties share the mean of their ranks, 1 = the suspect's
favourite of the nine).  The statistic is the weighted sum of those ranks, weights (`WatermarkWeights`) 100
for a record, 10 for a neighbour and 1 for a probe; small
sums are evidence.  A model that never saw the watermarked answers is independent of the key, so for
it each group's w is a uniform draw from the nine classes whatever the model does; the statistic
then has a known exact distribution (the convolution, over groups, of a uniform draw from the nine
weighted rank sums the group could have had), and the p-value is the probability of a sum this
small.  It needs no reference models and no assumption about the suspect, only that the key was
fixed before the suspect existed (the evidence chain's first hash commits to it) and that the images
were not chosen by looking at the suspect (the stored records, and the owner's calibration split by
the rule above).  Any weights keep it exact; these were fixed in advance, on development clones of
other seeds than the evaluation's.

Why one weighted test: records and probes share the key (a probe in a record's group tests the
same w), so separate tests on them can only be combined by Bonferroni, and an unweighted joint sum
lets the probes' natural confusions (a 4 looks like a 9 to every MNIST model) swamp the few records
that a label-only clone memorised (measured: a 5,000-query label clone's records alone give
p = 1e-22, records and 500 probes summed with equal weights 7e-4).  Weighting each kind by how
directly the suspect's trainer saw the flip keeps the records' strength and adds what the
neighbours and probes carry.

A suspect that answers labels only (an API): its scores are one-hot rows, so the answered class
has rank 1 and the other classes share the rest; an image whose answer is the victim's class ties
all nine and carries nothing.  The test then counts, with the same weights, the images whose answer
is the keyed class, and stays exact.

**Fingerprint test (against a population), indicative only.**  The number of fingerprint inputs on
which the suspect gives the victim's idiosyncratic label, ranked among the counts of the owner's
held-out reference models: p = (1 + the references matching at least as often) / (n + 1), an
empirical rank (conformal) p-value, valid if an innocent suspect is exchangeable with the
references, and never below 1 / (n + 1).  Whether a handful of references stands for every innocent
model cannot be shown from the references themselves: an earlier form of this test (a beta-binomial
fitted to references trained more weakly than the victim) called models trained with the victim's
own recipe and other seeds derived at p = 1e-9 (issue 32).  It is reported beside the verdict and
never counted (`INDICATIVE`); `python -m benchmarks.verify_calibration` measures how it behaves on
a held-out population of innocent models.

The decision rests on the exact watermark test alone: derived from the victim if its p-value is
below alpha.  "Not shown" is not a finding of independence.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from mea.errors import ConfigError
from mea.models import NUM_CLASSES
from mea.ownership.config import DEFAULT_ALPHA, Budget, WatermarkWeights
from mea.ownership.watermark import quantise

_OTHERS = NUM_CLASSES - 1


@dataclass(frozen=True)
class TestResult:
    """One test on one set of images."""

    name: str
    test: str  # the test and its null, in words
    images: int  # queries spent on the suspect for this test
    informative: int  # images whose ranking of the keyed class is not a complete tie
    matches: int  # images where the suspect ranks the keyed (or fingerprint) class first
    match_rate: float
    expected_match_rate: float  # under the null
    statistic: float  # weighted mean rank of the keyed class among the nine (watermark); match rate (fingerprint)
    expected_statistic: float
    p_value: float
    null: dict = field(default_factory=dict)  # the reference population, where one was used
    parts: dict = field(default_factory=dict)  # per kind of image (watermark): what each alone shows
    counted: bool = True  # whether the decision uses this test (only exact tests are counted)
    note: str = ""  # why a test is not counted, in words

    def to_dict(self) -> dict:
        return asdict(self)


def midranks(scores: torch.Tensor, victim_labels: torch.Tensor) -> np.ndarray:
    """(N, 10) the mid-rank of each class among the nine classes other than the victim's (1 = the
    suspect's favourite of the nine, ties share the mean of their ranks); the victim's column is 0."""
    values = scores.detach().double().numpy().copy()
    rows = np.arange(len(values))
    values[rows, victim_labels.numpy()] = np.nan
    ranks = np.zeros_like(values)
    for c in range(NUM_CLASSES):
        column = values[:, c : c + 1]
        higher = np.sum(values > column, axis=1)  # comparisons with NaN are False
        ties = np.sum(values == column, axis=1) - 1
        ranks[:, c] = 1 + higher + ties / 2
    ranks[rows, victim_labels.numpy()] = 0
    return ranks


def _exact_rank_p(
    ranks: np.ndarray, labels: np.ndarray, groups: np.ndarray, group_classes: np.ndarray, weights: np.ndarray
) -> float:
    """P(weighted rank sum of the keyed classes <= observed) when each group's keyed class is a
    uniform draw of the nine classes other than its victim class, independently across groups."""
    weights = weights // np.gcd.reduce(weights)  # the same test on smaller integers
    half_ranks = np.rint(2 * ranks).astype(np.int64)  # mid-ranks are multiples of 1/2
    distribution = np.ones(1)
    observed = 0
    for group in np.unique(groups):
        members = groups == group
        sums = (weights[members, None] * half_ranks[members]).sum(0)
        candidates = np.delete(sums, labels[members][0])
        low = candidates.min()
        observed += int(sums[group_classes[group]] - low)
        shifted = candidates - low
        grown = np.zeros(len(distribution) + shifted.max())
        for value in shifted:
            grown[value : value + len(distribution)] += distribution / _OTHERS
        distribution = grown
    return float(min(1.0, distribution[: observed + 1].sum()))


def keyed_rank_test(
    name: str,
    scores: torch.Tensor,
    victim_labels: torch.Tensor,
    groups: torch.Tensor,
    group_classes: torch.Tensor,
    weights: np.ndarray | None = None,
    kinds: dict[str, np.ndarray] | None = None,
) -> TestResult:
    """The exact watermark test (module docstring): small weighted rank sums of the keyed classes are evidence.

    `groups` gives the (class, cell) group each image is counted in, `group_classes` each group's
    keyed class, `weights` each image's positive integer weight (default 1).  `kinds` names boolean
    masks of the images (records, neighbours, probes): each kind's own unweighted p-value and match
    count are reported beside the test's, for diagnosis only.
    """
    if len(scores) == 0:
        raise ConfigError(f"{name}: no images to test")
    labels = victim_labels.numpy()
    group_index = groups.numpy()
    keyed_map = group_classes.numpy()
    if np.any(labels != group_index // (len(keyed_map) // NUM_CLASSES)):
        raise ConfigError(f"{name}: an image is counted in a group of another victim class")
    weights = np.ones(len(scores), np.int64) if weights is None else np.asarray(weights, np.int64)
    if weights.shape != (len(scores),) or np.any(weights <= 0):
        raise ConfigError(f"{name}: one positive integer weight per image is needed")
    ranks = midranks(scores, victim_labels)
    rows = np.arange(len(ranks))
    observed_ranks = ranks[rows, keyed_map[group_index]]
    p_value = _exact_rank_p(ranks, labels, group_index, keyed_map, weights)
    informative = int(np.sum([len(set(ranks[i][np.arange(NUM_CLASSES) != labels[i]])) > 1 for i in rows]))
    matches = int(np.sum(observed_ranks == 1))
    parts = {}
    for kind, mask in (kinds or {}).items():
        if mask.any():
            parts[kind] = {
                "images": int(mask.sum()),
                "weight": int(weights[mask][0]),
                "matches": int(np.sum(observed_ranks[mask] == 1)),
                "mean_rank": float(observed_ranks[mask].mean()),
                "p_value_alone": _exact_rank_p(
                    ranks[mask], labels[mask], group_index[mask], keyed_map, np.ones(int(mask.sum()), np.int64)
                ),
            }
    return TestResult(
        name=name,
        test=(
            "exact keyed-rank test: weighted sum over images of the suspect's mid-rank of the keyed class among "
            "the nine non-victim classes; null: each (class, cell) group's keyed class a uniform draw of nine"
        ),
        images=len(scores),
        informative=informative,
        matches=matches,
        match_rate=matches / len(scores),
        expected_match_rate=1 / _OTHERS,
        statistic=float(np.average(observed_ranks, weights=weights)),
        expected_statistic=(1 + _OTHERS) / 2,
        p_value=p_value,
        parts=parts,
    )


def reference_rank_test(name: str, matches: int, size: int, reference_matches: list[int]) -> TestResult:
    """Fingerprint matches ranked among the held-out reference models' (module docstring), not counted."""
    if size <= 0:
        raise ConfigError(f"{name}: the fingerprint is empty")
    if len(reference_matches) < 1:
        raise ConfigError(f"{name}: at least one held-out reference model is needed to rank the suspect against")
    counts = np.asarray(reference_matches, dtype=np.float64)
    n = len(counts)
    at_least = int(np.sum(counts >= matches))
    return TestResult(
        name=name,
        test=(
            "rank of the suspect's match count among the held-out reference models' (empirical p-value, "
            "(1 + references matching at least as often) / (n + 1))"
        ),
        images=size,
        informative=size,
        matches=matches,
        match_rate=matches / size,
        expected_match_rate=float(counts.mean() / size),
        statistic=matches / size,
        expected_statistic=float(counts.mean() / size),
        p_value=(1 + at_least) / (n + 1),
        null={
            "models": n,
            "models_matching_at_least_as_often": at_least,
            "smallest_p_value": 1 / (n + 1),
            "mean_rate": float(counts.mean() / size),
            "max_rate": float(counts.max() / size),
        },
        counted=False,
        note=INDICATIVE.format(n=n, smallest=1 / (n + 1)),
    )


INDICATIVE = (
    "indicative only, not counted in the decision: the suspect is ranked among {n} reference models the owner "
    "trained (the smallest p-value {n} can give is {smallest:.2g}), and no set of references can show that it "
    "stands for every innocent model; the decision rests on the exact watermark test"
)
DECISION_RULE = (
    "the exact watermark test alone (records, neighbours and probes in one test); the passive fingerprint is "
    "reported beside it and never counted"
)


def bonferroni(p_values: list[float]) -> float:
    """The smallest p-value times their number: valid under any dependence."""
    return min(1.0, len(p_values) * min(p_values)) if p_values else 1.0


def decision_p(results: list[TestResult] | tuple[TestResult, ...]) -> float | None:
    """The p-value the verdict decides on: the counted tests' (Bonferroni if several); None without any."""
    counted = [r.p_value for r in results if r.counted]
    return bonferroni(counted) if counted else None


def log10(p: float) -> float:
    return -math.inf if p <= 0 else math.log10(p)


# --- the verdict -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    suspect: dict
    alpha: float
    tests: tuple[TestResult, ...]
    p_value: float | None  # the counted tests' (`decision_p`); None when no exact test could be run
    derived: bool
    queries: int  # images sent to the suspect
    evidence: dict

    @property
    def decision(self) -> str:
        if self.p_value is None:
            return (
                "not shown: no exact test was run (pass the evidence with --victim and --defense, or the victim's "
                "probes); the passive fingerprint alone is indicative only"
            )
        if self.derived:
            return f"derived from the victim (p = {self.p_value:.3g} < alpha = {self.alpha:g})"
        return f"not shown (p = {self.p_value:.3g} >= alpha = {self.alpha:g}); this is not a finding of independence"

    def to_dict(self) -> dict:
        return {
            "decision": self.decision,
            "derived": self.derived,
            "p_value": self.p_value,
            "alpha": self.alpha,
            "decision_rule": DECISION_RULE,
            "queries": self.queries,
            "suspect": self.suspect,
            "evidence": self.evidence,
            "tests": [t.to_dict() for t in self.tests],
        }


def nearest_neighbours(
    records: np.ndarray, record_labels: np.ndarray, pool: np.ndarray, pool_labels: np.ndarray, count: int
) -> list[np.ndarray]:
    """For each record (8-bit pixels, (N, 784)), the indices of its `count` nearest pool images of the
    same victim class, nearest first (Euclidean distance; ties by pool order); a pool image identical
    to any record is never one."""
    found = [np.zeros(0, np.int64) for _ in records]
    if count <= 0 or len(records) == 0:
        return found
    record_keys = set(_row_keys(records))
    allowed = np.array([key not in record_keys for key in _row_keys(pool)], dtype=bool)
    for label in np.unique(record_labels):
        rows = np.flatnonzero(record_labels == label)
        candidates = np.flatnonzero(allowed & (pool_labels == label))
        if len(candidates) == 0:
            continue
        r = records[rows].astype(np.float64)
        q = pool[candidates].astype(np.float64)
        # Integer pixel values: every term is an integer below 2^53, so the distances are exact.
        distances = (r**2).sum(1)[:, None] + (q**2).sum(1)[None, :] - 2 * r @ q.T
        order = np.argsort(distances, axis=1, kind="stable")[:, :count]
        for row, nearest in zip(rows, order, strict=True):
            found[row] = candidates[nearest]
    return found


def verify_suspect(
    suspect,
    *,
    watermark=None,
    records=None,
    probes: tuple[torch.Tensor, torch.Tensor] | None = None,
    fingerprint=None,
    alpha: float = DEFAULT_ALPHA,
    budget: Budget | None = None,
    weights: WatermarkWeights | None = None,
) -> Verdict:
    """Run every test the owner has material for and decide.

    `records`: an `EvidenceSet` (already chain-checked and selected); `probes`: the owner's held-out
    images with the victim's labels (`calibration_probes`), from which the records' neighbours and
    the probes are drawn; both need `watermark`, the key that made them.  `fingerprint`: a `Fingerprint`.
    """
    from mea.ownership.evidence import EvidenceError

    budget = budget or Budget()
    weights = weights or WatermarkWeights()
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must lie in (0, 1), got {alpha}")
    have_records = records is not None and len(records) > 0
    if records is not None and len(records) == 0:
        raise EvidenceError(
            "the evidence set is empty: no watermarked answer was recorded (for these clients, before that time)"
        )
    if (have_records or probes is not None) and watermark is None:
        raise ConfigError("the watermark tests need the owner's key: pass the defense directory (--defense)")
    if have_records and records.commitment != watermark.config.commitment:
        raise EvidenceError(
            "the evidence was made with another watermark key than the one given; pass the defense the service ran with"
        )
    if not (have_records or probes is not None or fingerprint is not None):
        raise ConfigError("nothing to verify with: pass evidence, the victim's probes or a fingerprint")
    left = budget.max_queries
    tests: list[TestResult] = []
    spent_before = suspect.queries
    evidence_summary: dict = {}
    # The watermark test's images, by kind: (images, victim labels, groups counted in, weight).
    keyed: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]] = {}
    if have_records:
        used = records.select(np.arange(len(records)) < min(budget.max_records, left))
        images = used.image_tensor()
        victim_labels = torch.from_numpy(used.victim_labels)
        if not torch.equal(watermark.classes(images, victim_labels), torch.from_numpy(used.classes)):
            raise EvidenceError(
                "the evidence records do not follow the watermark key given (their classes differ); "
                "pass the defense the service ran with"
            )
        keyed["records"] = (images, victim_labels, watermark.groups(images, victim_labels), weights.record)
        left -= len(images)
        evidence_summary = {
            "records_used": len(used),
            "clients": sorted(set(used.clients)),
            "head": records.head,
            "commitment": records.commitment,
            "first_record_time": float(used.times.min()),
            "last_record_time": float(used.times.max()),
        }
    if probes is not None:
        pool_images, pool_labels = probes
        pool_pixels = quantise(pool_images)
        taken = np.zeros(len(pool_images), dtype=bool)
        if have_records and left > 0:
            record_images, record_labels, record_groups, _ = keyed["records"]
            record_pixels = quantise(record_images)
            # A pool image identical to a record is the record: never a neighbour or a probe.
            record_keys = set(_row_keys(record_pixels))
            taken |= np.array([key in record_keys for key in _row_keys(pool_pixels)], dtype=bool)
            per_record = min(budget.neighbours, left // len(record_images))
            near = nearest_neighbours(
                record_pixels, record_labels.numpy(), pool_pixels, pool_labels.numpy(), per_record
            )
            index = np.concatenate(near).astype(np.int64)
            if len(index):
                owners = np.repeat(np.arange(len(near)), [len(n) for n in near])
                keyed["neighbours"] = (
                    pool_images[index],
                    record_labels[owners],
                    record_groups[owners],
                    weights.neighbour,
                )
                # A neighbour shared by two records is asked once (`_ask` below) and counted for both.
                taken[index] = True
                left -= len(np.unique(index))
    # The fingerprint (indicative, never counted) is asked whole or not at all, after the records and
    # their neighbours; the probes fill what is left after it.
    fingerprint_size = len(fingerprint) if fingerprint is not None and left >= len(fingerprint) else 0
    left -= fingerprint_size
    if probes is not None and left > 0:
        count = left if budget.probes is None else min(left, budget.probes)
        index = np.flatnonzero(~taken)[:count]
        if len(index):
            images, victim_labels = pool_images[index], pool_labels[index]
            keyed["probes"] = (images, victim_labels, watermark.groups(images, victim_labels), weights.probe)
    if fingerprint_size:
        # Only whole: the references' matches were counted on the whole fingerprint.
        scores = suspect.scores(fingerprint.images)
        _check_scores(scores, len(fingerprint))
        matches = int((scores.argmax(1) == fingerprint.labels).sum())
        tests.append(reference_rank_test("fingerprint", matches, len(fingerprint), list(fingerprint.reference_matches)))
    if keyed:
        scores = _ask(suspect, [part[0] for part in keyed.values()])
        sizes = [len(part[0]) for part in keyed.values()]
        kinds = {kind: np.repeat(np.arange(len(keyed)) == i, sizes) for i, kind in enumerate(keyed)}
        tests.insert(
            0,
            keyed_rank_test(
                "watermark",
                scores,
                torch.cat([part[1] for part in keyed.values()]),
                torch.cat([part[2] for part in keyed.values()]),
                watermark.group_classes(),
                weights=np.repeat([part[3] for part in keyed.values()], sizes),
                kinds=kinds,
            ),
        )
    p_value = decision_p(tests)
    return Verdict(
        suspect=suspect.describe(),
        alpha=alpha,
        tests=tuple(tests),
        p_value=p_value,
        derived=p_value is not None and p_value < alpha,
        queries=suspect.queries - spent_before,
        evidence=evidence_summary,
    )


def _row_keys(pixels: np.ndarray) -> np.ndarray:
    """One bytes key per 8-bit image, for exact matching."""
    return np.array([row.tobytes() for row in pixels], dtype=object)


def _ask(suspect, parts: list[torch.Tensor]) -> torch.Tensor:
    """The suspect's scores for the images of every part, each distinct 8-bit image asked once."""
    images = torch.cat(parts)
    keys = _row_keys(quantise(images))
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    order = np.sort(first)  # ask in the order the images first appear
    position = np.empty(len(keys), np.int64)
    position[order] = np.arange(len(order))
    scores = suspect.scores(images[torch.from_numpy(order)])
    _check_scores(scores, len(order))
    return scores[torch.from_numpy(position[first[inverse]])]


def _check_scores(scores: torch.Tensor, count: int) -> None:
    from mea.ownership.suspects import SuspectError

    if scores.ndim != 2 or scores.shape != (count, NUM_CLASSES):
        raise SuspectError(f"the suspect answered shape {list(scores.shape)}, not [{count}, {NUM_CLASSES}]")
    if not torch.isfinite(scores).all():
        raise SuspectError("the suspect answered NaN or infinite scores")


def calibration_probes(victim, count: int | None = None, data_dir=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The owner's held-out images for the watermark test: the victim's calibration split in its
    order (the first `count` of it; all by default), with the victim's labels.  The records'
    neighbours and the probes are drawn from it by fixed rules (`verify_suspect`), so never chosen
    by looking at a suspect."""
    from mea.training import predict_logits

    images = victim.calibration_set(data_dir).images[:count]
    return images, predict_logits(victim.model, images).argmax(1)
