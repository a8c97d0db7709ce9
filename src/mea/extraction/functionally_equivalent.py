"""Functionally-equivalent extraction of a one-hidden-layer ReLU network from its confidence values
(Jagielski et al. 2020, "High Accuracy and High Fidelity Extraction of Neural Networks", USENIX
Security, §5; Carlini, Jagielski and Mironov 2020, "Cryptanalytic Extraction of Neural Network
Models", CRYPTO, §4 for the one-layer case).

The victim's centred log-probabilities, log p - mean(log p), are its centred logits: a piecewise
linear function of the input, whose kinks lie on the hidden units' hyperplanes w_i.x + b_i = 0.

1. **Critical points.**  Along random lines through the feature box, every kink is found by
   bisection on slopes: an interval whose two end slopes agree holds no kink; one whose end lines
   meet at a point where the answer is what both lines predict holds exactly one, there; any other
   is halved.  All lines of a round are searched at once (one batch of queries per level).  Where
   a probability is too small to read (below float32's smallest normal number, as toward the far
   corners of a box of unscaled features) the logits are unknown: a line's end there moves inward,
   an interval there is searched no further, a solve point there is drawn again.
2. **Hyperplanes.**  At a critical point x* of a new unit, the jacobians just either side of the
   kink differ by the rank-one matrix a_i w_i^T (Jagielski et al.'s second differences, taken as
   whole jacobians): its leading right singular vector is w_i up to scale and sign, and
   b_i = -w_i.x*.  A critical point on a hyperplane already known costs no jacobian.
3. **Signs and the output layer, by one linear solve.**  The sign of a unit cannot be read locally
   (relu(h) and relu(-h) kink alike), but relu(-h) = relu(h) - h: with the hyperplanes fixed, the
   logits are linear in [relu(H x), x, 1], so a least-squares solve on a few uniform points gives
   the output weights and a linear term, and the linear term is a sum -sum_i a_i w_i^T over the
   units whose sign is flipped (a second small solve says which).  Units whose hyperplane never
   crosses the box (always on there) leave a linear remainder, which the units not found (the width
   is known) carry as always-on units.
4. **Polish** (optional): Gauss-Newton on the squared log-ratio error at the same points, started
   from the extracted network (the precision step: Carlini et al. refine with more critical points, a
   local fit from an almost exact start reaches float32 answers' precision as well).

The attacker knows the architecture (one hidden layer of `hidden` ReLU units), as the papers
assume; queries stay in the victim's feature box or a few hundredths of a half-range outside it
(the jacobians' steps, the points either side of a hyperplane).  Work is done in the box's coordinates
u = (x - centre) / half-range over the features whose range is not a single value.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from mea.errors import ConfigError
from mea.extraction.base import Answers, Extraction, ModelClass, QuerySpace
from mea.oracle import Oracle
from mea.tabular.models import Activation, OneHiddenLayer

# Probabilities below float32's smallest normal number have lost relative precision.
FLOOR = 1.2e-38
# An output-layer solve whose largest residual (nats of logit) is below this explains every answer.
RESIDUAL = 1e-4
# A unit whose sign coefficient lies this far from both 0 and -1 is taken for a false one.
AMBIGUOUS = 0.1
ANCHOR = 0.05  # half-ranges from a unit's critical point to the solve points either side of it
# A new unit's hyperplane is confirmed CONFIRM_DISTANCE (half-ranges) from its critical point, in
# the plane: a kink within CONFIRM_TOLERANCE of it, searched for CONFIRM_SPAN either side.
CONFIRM_DISTANCE, CONFIRM_SPAN, CONFIRM_TOLERANCE = 0.3, 0.05, 1e-4
# A line's end whose answers cannot be read moves a quarter of the way in, at most this many times.
SHRINK = 4
# The output-layer solve's points are drawn this many times at most to find enough readable ones.
DRAWS = 4


@dataclass(frozen=True)
class _Interval:
    line: int
    a: float
    b: float
    ga: np.ndarray  # centred logits at a
    sa: np.ndarray  # slope just right of a
    gb: np.ndarray
    sb: np.ndarray  # slope just left of b


@dataclass(frozen=True)
class FunctionallyEquivalent:
    """Jagielski et al. 2020's functionally-equivalent extraction of a one-hidden-layer ReLU MLP.

    `lines`: most search lines; `lines_per_round`: lines searched together; `patience`: rounds with
    no new unit before the search stops (it stops at once when every unit is found); `step`: the
    offset, in half-ranges, at which slopes are read; `slope_tolerance`: the smallest slope change
    taken for a kink; `min_width`: the narrowest interval halved; `polish`: the final local fit;
    `guided_rounds`: searches from the output-layer solve's worst-explained points; `solve_points`:
    points of the output-layer solve, half uniform and half at corners of the box or from the
    attacker's pool (None: twice what determines it)."""

    lines: int = 96
    lines_per_round: int = 8
    patience: int = 3
    step: float = 1e-3
    slope_tolerance: float = 2e-3
    min_width: float = 1e-4
    polish: bool = True
    solve_points: int | None = None
    polish_iterations: int = 20
    guided_rounds: int = 4
    name: str = "functionally-equivalent"

    def __post_init__(self) -> None:
        if self.lines < 1 or self.lines_per_round < 1 or self.patience < 1:
            raise ConfigError("functionally-equivalent extraction needs at least one line per round and one round")
        if not 0 < self.step < 0.1 or self.slope_tolerance <= 0 or not 0 < self.min_width < 0.1:
            raise ConfigError("step and min_width are fractions of a feature's half-range, in (0, 0.1)")

    def run(self, oracle: Oracle, space: QuerySpace, known: ModelClass, rng: np.random.Generator) -> Extraction:
        known.require(self.name, ("mlp",))
        if Activation(known.activation or "tanh") is not Activation.RELU or known.hidden is None:
            raise ConfigError(
                f"{self.name} extracts ReLU networks (their logits are piecewise linear); this MLP uses "
                f"{known.activation}: use equation-solving"
            )
        if Answers.confidence(oracle, self.name) > 0:  # refuses a label-only oracle too
            raise ConfigError(f"{self.name} reads kinks in exact confidence values; this oracle rounds them")
        if space.low is None or space.high is None:
            raise ConfigError(f"{self.name} searches lines through the feature box; this victim states none")
        box = _Box(space, oracle, known.signature.classes)
        before = oracle.queries_used
        start = time.process_time()
        units = _Units(known.hidden, box.dimension)
        idle = 0
        while units.lines < self.lines and units.count < known.hidden and idle < self.patience:
            # Each line through two points of the box: a long chord (a random direction from one point
            # meets a face of a 64-dimensional box within a few tenths of a half-range).
            count = min(self.lines_per_round, self.lines - units.lines)
            idle = 0 if self._search(box, units, box.points(count, rng), box.points(count, rng), rng) else idle + 1
        search_queries = oracle.queries_used - before
        outputs = box.outputs
        unknowns = known.hidden * (box.dimension + 1) + outputs * (known.hidden + 1)
        count = self.solve_points or max(
            2 * (known.hidden + box.dimension + 1), -(-2 * unknowns // max(outputs - 1, 1))
        )
        points, targets = box.readable_points(count, rng)
        dropped = 0
        anchors: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}
        for guided in range(self.guided_rounds + 1):
            # Beside the uniform points, two either side of each unit's critical point: every unit
            # is then seen on and off (one on everywhere else would be a linear term of the solve).
            missing = [k for k in units.anchor_keys() if k not in anchors]
            if missing:
                near = units.anchor_points(missing)
                for key, pair, answers in zip(
                    missing, near, box.logits(near.reshape(-1, box.dimension)).reshape(len(missing), 2, -1), strict=True
                ):
                    readable = np.isfinite(answers).all(1)
                    anchors[key] = (pair[readable], answers[readable])
            solve_points = np.vstack([points, *(anchors[k][0] for k in units.anchor_keys())])
            solve_targets = np.vstack([targets, *(anchors[k][1] for k in units.anchor_keys())])
            fitted = _output_layer(units.planes(), solve_points, solve_targets, known.hidden)
            w0, b0, w1, b1, solve, residuals, ambiguous, remainder_directions = fitted
            if solve["solve_residual"] < RESIDUAL or guided == self.guided_rounds:
                break
            if units.count == known.hidden:
                if not len(ambiguous):
                    break
                # Every unit found and still not explained: one is no unit of the victim (a false
                # kink, two kinks read as one), and the least certain of its sign goes.  (With units
                # missing, the remainder they leave blurs every sign: they are searched for first.)
                units.drop(ambiguous[:1])
                dropped += 1
            # A unit whose hyperplane crosses the box but was never met leaves the solve's largest
            # residuals where it is off: lines from those points cross it (Carlini et al. look for
            # critical points where the model is not yet explained, too).
            worst = solve_points[np.argsort(residuals)[-self.lines_per_round :]]
            # A unit on almost everywhere in the box (off in a corner only) shows as a linear
            # remainder a w^T: the corners where w.u is least or most are where it may be off.
            corners = [np.sign(v) * side for v in remainder_directions for side in (1.0, -1.0)]
            origins = np.vstack([worst, *corners])
            before_guided = oracle.queries_used
            self._search(box, units, origins, box.points(len(origins), rng), rng)
            search_queries += oracle.queries_used - before_guided
        details = {
            **units.stats,
            "units_found": units.count,
            "units_dropped": dropped,
            **solve,
            "search_queries": search_queries,
            "unreadable_answers": box.unreadable,
        }
        if self.polish:
            w0, b0, w1, b1, loss = _polish([w0, b0, w1, b1], solve_points, solve_targets, self.polish_iterations)
            details["polish_loss"] = loss
        clone = box.network(known, w0, b0, w1, b1)
        return Extraction(clone.eval(), oracle.queries_used - before, time.process_time() - start, details)

    def _search(
        self, box: _Box, units: _Units, origins: np.ndarray, towards: np.ndarray, rng: np.random.Generator
    ) -> int:
        """Search the lines from each origin through a point `towards`; the number of new units."""
        heads = towards - origins
        norms = np.linalg.norm(heads, axis=1)
        apart = norms > 1e-6  # two corners drawn alike make no line
        origins, heads = origins[apart], heads[apart] / norms[apart, None]
        units.lines += len(origins)
        kinks, unresolved = self._kinks(box, origins, heads)
        units.stats["unresolved_intervals"] += unresolved
        new = 0
        for line, t, change in kinks:
            units.stats["critical_points"] += 1
            point = origins[line] + t * heads[line]
            if units.count == units.hidden or units.known(point, change):
                continue
            gap = _gap(t, [k[1] for k in kinks if k[0] == line], *_chord(origins[line], heads[line]))
            plane = _normal(box, point, heads[line], change, gap, self.step)
            if plane is None:
                units.stats["rejected_jacobians"] += 1
                continue
            if not self._confirmed(box, plane[0], point, plane[1], rng):
                units.stats["unconfirmed_units"] += 1
                continue
            units.add(plane[0], -plane[0] @ point, plane[1], point)
            new += 1
        return new

    def _confirmed(self, box: _Box, normal: np.ndarray, point: np.ndarray, direction: np.ndarray, rng) -> bool:
        """Whether the hyperplane predicts a kink of its unit where it should, a little way from the
        critical point it came from (a normal read from a jacobian another kink spoiled does not)."""
        away = rng.standard_normal(len(normal))
        away -= (away @ normal) * normal
        probe = point + CONFIRM_DISTANCE * away / np.linalg.norm(away)
        kinks, _ = self._kinks(box, probe[None], normal[None], [(-CONFIRM_SPAN, CONFIRM_SPAN)])
        return any(abs(t) < CONFIRM_TOLERANCE and abs(direction @ c) > 0.999 * np.linalg.norm(c) for _, t, c in kinks)

    def _kinks(
        self, box: _Box, origins: np.ndarray, heads: np.ndarray, ends: list[tuple[float, float]] | None = None
    ) -> tuple[list, int]:
        """Every kink (line, t, slope change) found along each line's chord through the box (or
        between the `ends` given)."""
        delta = self.step
        ends, values = self._readable_ends(box, origins, heads, ends)
        pending = [
            _Interval(
                line,
                low,
                high,
                values[line, 0],
                (values[line, 1] - values[line, 0]) / delta,
                values[line, 3],
                (values[line, 3] - values[line, 2]) / delta,
            )
            for line, (low, high) in enumerate(ends)
            if high - low > 4 * delta
        ]
        kinks: list[tuple[int, float, np.ndarray]] = []
        unresolved = 0
        while pending:
            # An interval with an end that cannot be read (its logits NaN) is searched no further.
            readable = [iv for iv in pending if np.isfinite(np.concatenate([iv.ga, iv.sa, iv.gb, iv.sb])).all()]
            unresolved += len(pending) - len(readable)
            pending = [iv for iv in readable if np.abs(iv.sa - iv.sb).max() > self.slope_tolerance]
            guesses = [_meeting(iv) for iv in pending]
            inside = [(iv, t) for iv, t in zip(pending, guesses, strict=True) if iv.a + delta < t < iv.b - delta]
            measured = box.along(origins, heads, [(iv.line, t) for iv, t in inside])
            candidates = []
            for (iv, t), g in zip(inside, measured, strict=True):
                left, right = iv.ga + iv.sa * (t - iv.a), iv.gb + iv.sb * (t - iv.b)
                loose = 4 * box.noise * (1 + (iv.b - iv.a) / delta)  # the end slopes' error, carried across
                if max(np.abs(g - left).max(), np.abs(g - right).max()) <= loose:
                    candidates.append((iv, t, min(t - iv.a, iv.b - t, 0.02) / 2))
            # Each candidate read again from lines close either side of it: the kink to float32's
            # precision, and a second kink near it (the end lines' verdict is loose) shows.
            probes = [(iv.line, t + k * r) for iv, t, r in candidates for k in (-2, -1, 1, 2)]
            values = box.along(origins, heads, probes)
            refined = []
            for index, (iv, t, r) in enumerate(candidates):
                g = values[4 * index : 4 * index + 4]
                near = _Interval(iv.line, t - r, t + r, g[1], (g[1] - g[0]) / r, g[2], (g[3] - g[2]) / r)
                if np.isfinite(meeting := _meeting(near)):
                    refined.append((iv, near, meeting))
            checked = box.along(origins, heads, [(iv.line, t) for iv, _, t in refined])
            single = set()
            for (iv, near, t), g in zip(refined, checked, strict=True):
                left, right = near.ga + near.sa * (t - near.a), near.gb + near.sb * (t - near.b)
                tight = 16 * box.noise * (1 + abs(t - near.a) / (near.b - near.a))
                if iv.a < t < iv.b and max(np.abs(g - left).max(), np.abs(g - right).max()) <= tight:
                    kinks.append((iv.line, t, near.sb - near.sa))
                    single.add(id(iv))
            split = [iv for iv in pending if id(iv) not in single]
            unresolved += int(sum(iv.b - iv.a < self.min_width for iv in split))
            split = [iv for iv in split if iv.b - iv.a >= self.min_width]
            probes = []
            for iv in split:
                middle = (iv.a + iv.b) / 2
                probes += [(iv.line, middle - delta), (iv.line, middle), (iv.line, middle + delta)]
            values = box.along(origins, heads, probes)
            pending = []
            for index, iv in enumerate(split):
                below, middle_value, above = values[3 * index : 3 * index + 3]
                middle = (iv.a + iv.b) / 2
                pending.append(
                    _Interval(iv.line, iv.a, middle, iv.ga, iv.sa, middle_value, (middle_value - below) / delta)
                )
                pending.append(
                    _Interval(iv.line, middle, iv.b, middle_value, (above - middle_value) / delta, iv.gb, iv.sb)
                )
        return kinks, unresolved

    def _readable_ends(
        self, box: _Box, origins: np.ndarray, heads: np.ndarray, ends: list[tuple[float, float]] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each line's (low, high), its chord through the box unless `ends` are given, with an end
        whose answers cannot be read moved a quarter of the way in, up to SHRINK times; and the
        logits (lines, 4, outputs) at low, low + step, high - step and high.  Far corners of a box of
        unscaled features can hold logits beyond float32's range; the kinks lie nearer the data."""
        delta = self.step
        chords = [_chord(o, h) for o, h in zip(origins, heads, strict=True)] if ends is None else ends
        ends_array = np.asarray(chords, dtype=float).reshape(-1, 2)
        at = np.array([0, 0, 1, 1])  # the end each of the four probes is read from
        offsets = np.array([0.0, delta, -delta, 0.0])
        redo = [(line, k) for line in range(len(ends_array)) for k in range(4)]
        values = np.full((len(ends_array), 4, box.outputs), np.nan)
        for attempt in range(SHRINK + 1):
            ts = ends_array[:, at] + offsets
            read = box.along(origins, heads, [(line, ts[line, k]) for line, k in redo])
            for (line, k), value in zip(redo, read, strict=True):
                values[line, k] = value
            bad = ~np.isfinite(values).all(2)  # (lines, 4)
            bad_low, bad_high = bad[:, :2].any(1), bad[:, 2:].any(1)
            if attempt == SHRINK or not (bad_low | bad_high).any():
                break
            width = ends_array[:, 1] - ends_array[:, 0]
            ends_array[bad_low, 0] += width[bad_low] / 4
            ends_array[bad_high, 1] -= width[bad_high] / 4
            redo = [(line, k) for line in np.flatnonzero(bad_low) for k in (0, 1)]
            redo += [(line, k) for line in np.flatnonzero(bad_high) for k in (2, 3)]
        return ends_array, values


class _Units:
    """The hidden units found so far: unit normals, offsets, output-weight directions."""

    def __init__(self, hidden: int, dimension: int) -> None:
        self.hidden, self.dimension = hidden, dimension
        self.rows: list[np.ndarray] = []  # [w (D), b] with |w| = 1
        self.directions: list[np.ndarray] = []
        self.points: list[np.ndarray] = []  # the critical point each unit was found at
        self.lines = 0
        self.stats = {"critical_points": 0, "unresolved_intervals": 0, "rejected_jacobians": 0, "unconfirmed_units": 0}

    @property
    def count(self) -> int:
        return len(self.rows)

    def add(self, normal: np.ndarray, offset: float, direction: np.ndarray, point: np.ndarray) -> None:
        self.rows.append(np.append(normal, offset))
        self.directions.append(direction)
        self.points.append(point)

    def anchor_keys(self) -> list[bytes]:
        return [point.tobytes() for point in self.points]

    def anchor_points(self, keys: list[bytes]) -> np.ndarray:
        """(len(keys), 2, D): each unit's critical point ANCHOR half-ranges either side of its plane."""
        index = {key: i for i, key in enumerate(self.anchor_keys())}
        pairs = []
        for key in keys:
            row, point = self.rows[index[key]], self.points[index[key]]
            pairs.append([point + ANCHOR * row[:-1], point - ANCHOR * row[:-1]])
        return np.asarray(pairs)

    def drop(self, indices: np.ndarray) -> None:
        keep = [i for i in range(self.count) if i not in set(indices.tolist())]
        self.rows = [self.rows[i] for i in keep]
        self.directions = [self.directions[i] for i in keep]
        self.points = [self.points[i] for i in keep]

    def planes(self) -> np.ndarray:
        return np.asarray(self.rows).reshape(-1, self.dimension + 1)

    def known(self, point: np.ndarray, change: np.ndarray) -> bool:
        """Whether a critical point lies on a unit's hyperplane already found (and kinks as it does)."""
        for plane, direction in zip(self.rows, self.directions, strict=True):
            on_plane = abs(plane[:-1] @ point + plane[-1]) < 1e-2
            if on_plane and abs(direction @ change) > 0.98 * np.linalg.norm(change):
                return True
        return False


class _Box:
    """The oracle in the box's coordinates u in [-1, 1]^D: centred logits of batches of points."""

    def __init__(self, space: QuerySpace, oracle: Oracle, classes: int) -> None:
        assert space.low is not None and space.high is not None
        self.space, self.oracle, self.classes = space, oracle, classes
        self.free = np.flatnonzero(space.high > space.low)
        self.centre = (space.low + space.high) / 2
        self.half = (space.high - space.low) / 2
        self.noise = 1.2e-7  # a float32 probability's log, to a unit in the last place, and its centring
        self.unreadable = 0  # answers with a probability at or below FLOOR, read as NaN

    @property
    def dimension(self) -> int:
        return len(self.free)

    @property
    def outputs(self) -> int:
        """Logits per answer: one for a two-class victim (log p1 - log p0), else one per class."""
        return 1 if self.classes == 2 else self.classes

    def points(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """`count` points of the box: half uniform, half at random corners, or from the attacker's
        pool when it has one.  A unit on for all but a corner of the box is off at some corners
        (natural inputs, digits with most pixels blank, lie near corners too); uniform points,
        which crowd the box's middle in 64 dimensions, almost never see it off."""
        uniform = rng.uniform(-1.0, 1.0, (count, self.dimension))
        if self.space.pool is not None:
            pool = self.space.pool[rng.integers(len(self.space.pool), size=count)][:, self.free]
            other = np.clip((pool - self.centre[self.free]) / self.half[self.free], -1.0, 1.0)
        else:
            other = rng.choice([-1.0, 1.0], (count, self.dimension))
        return np.where((np.arange(count) % 2 == 1)[:, None], other, uniform)

    def raw(self, u: np.ndarray) -> np.ndarray:
        x = np.repeat(self.centre[None], len(u), 0)
        x[:, self.free] += self.half[self.free] * u
        return x

    def logits(self, u: np.ndarray) -> np.ndarray:
        """(B, outputs): centred log-probabilities (a two-class victim's: log p1 - log p0); NaN rows
        where a probability is too small to read (the logits there are beyond float32's range, as
        they can be at the corners of a box of unscaled features)."""
        if len(u) == 0:
            return np.zeros((0, self.outputs))
        p = self.oracle.query(self.space.as_inputs(self.raw(u))).double().numpy()
        unreadable = (p <= FLOOR).any(1)
        self.unreadable += int(unreadable.sum())
        logs = np.log(np.where(unreadable[:, None], np.nan, p))
        if self.classes == 2:
            return logs[:, 1:] - logs[:, :1]
        return logs - logs.mean(1, keepdims=True)

    def readable_points(self, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """`count` points of the box (`points`) whose answers can be read, and their logits: drawn
        DRAWS times at most.  An oracle whose answers can mostly not be read is refused (those are no
        confidence values)."""
        points, logits = np.zeros((0, self.dimension)), np.zeros((0, self.outputs))
        for _ in range(DRAWS):
            drawn = self.points(count, rng)
            answers = self.logits(drawn)
            readable = np.isfinite(answers).all(1)
            points, logits = np.vstack([points, drawn[readable]]), np.vstack([logits, answers[readable]])
            if len(points) >= count:
                return points[:count], logits[:count]
        if len(points) < count / 2:
            raise ConfigError(
                f"{DRAWS * count - len(points)} of {DRAWS * count} answers hold a probability too small to read "
                "(below float32's smallest normal number); functionally-equivalent extraction needs every "
                "class's probability, as logits"
            )
        return points, logits

    def along(self, origins: np.ndarray, heads: np.ndarray, probes: list[tuple[int, float]]) -> np.ndarray:
        if not probes:
            return np.zeros((0, self.outputs))
        lines = np.array([p[0] for p in probes])
        ts = np.array([p[1] for p in probes])
        return self.logits(origins[lines] + ts[:, None] * heads[lines])

    def network(self, known: ModelClass, w0: np.ndarray, b0: np.ndarray, w1: np.ndarray, b1: np.ndarray):
        """The extracted network (in u) as a mea.tabular MLP on raw features."""
        d = known.signature.features
        first = np.zeros((len(w0), d))
        first[:, self.free] = w0 / self.half[self.free]
        bias = b0 - first[:, self.free] @ self.centre[self.free]
        tensors = [torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64)) for v in (first, bias, w1, b1)]
        return OneHiddenLayer(known.signature, *tensors, Activation.RELU)


def _chord(origin: np.ndarray, head: np.ndarray) -> tuple[float, float]:
    """The t range of origin + t head inside [-1, 1]^D."""
    moving = head != 0
    to_top, to_bottom = (1 - origin[moving]) / head[moving], (-1 - origin[moving]) / head[moving]
    forward = head[moving] > 0
    return float(np.where(forward, to_bottom, to_top).max()), float(np.where(forward, to_top, to_bottom).min())


def _meeting(iv: _Interval) -> float:
    """Where the lines from the interval's two ends meet (least squares over the outputs); NaN where
    they are parallel or an end could not be read."""
    change = iv.sa - iv.sb
    offset = iv.gb - iv.ga + iv.sa * iv.a - iv.sb * iv.b
    square = change @ change
    return float(change @ offset / square) if square > 0 else float("nan")


def _gap(t: float, others: list[float], low: float, high: float) -> float:
    return min([abs(t - o) for o in others if o != t] + [t - low, high - t])


def _normal(box: _Box, point: np.ndarray, head: np.ndarray, change: np.ndarray, gap: float, step: float):
    """(unit normal, output direction) of the hyperplane through critical point `point`, from the
    jacobians either side of it (their difference is rank one), or None when it is not clean."""
    side = min(0.25 * gap, 0.05)
    if side <= 2 * step:
        return None
    epsilon = side / 16
    dimension = box.dimension
    rows = []
    for sign in (1.0, -1.0):
        centre = point + sign * side * head
        rows.append(centre)
        rows.extend(centre + epsilon * np.eye(dimension))
    values = box.logits(np.asarray(rows))
    if not np.isfinite(values).all():  # a probability too small to read: no jacobian here
        return None
    jacobians = []
    for k in range(2):
        block = values[k * (dimension + 1) : (k + 1) * (dimension + 1)]
        jacobians.append((block[1:] - block[0]) / epsilon)  # (D, outputs)
    difference = jacobians[0] - jacobians[1]
    u, s, vt = np.linalg.svd(difference, full_matrices=False)
    if s[0] == 0 or (len(s) > 1 and s[1] > 0.01 * s[0]):
        return None
    if abs(vt[0] @ change) < 0.999 * np.linalg.norm(change):  # not the kink the line crossed
        return None
    return u[:, 0], vt[0]


def _output_layer(hyperplanes: np.ndarray, u: np.ndarray, targets: np.ndarray, hidden: int):
    """Output weights, signs and always-on units by linear least squares (see the module)."""
    found, dimension = len(hyperplanes), u.shape[1]
    normals, offsets = hyperplanes[:, :-1], hyperplanes[:, -1]
    pre = u @ normals.T + offsets
    design = np.hstack([np.maximum(pre, 0), u, np.ones((len(u), 1))])
    theta = np.linalg.lstsq(design, targets, rcond=None)[0]
    outputs, linear, constant = theta[:found].T, theta[found : found + dimension].T, theta[-1]  # (c, k), (c, D)
    # linear = sum_i lambda_i a_i w_i^T with lambda_i in {0, -1}: -1 where the unit's sign is flipped.
    basis = np.stack([np.outer(outputs[:, i], normals[i]).ravel() for i in range(found)], 1) if found else None
    lambdas = np.linalg.lstsq(basis, linear.ravel(), rcond=None)[0] if found else np.zeros(0)
    flipped = lambdas < -0.5
    sign = np.where(flipped, -1.0, 1.0)
    w0, b0 = normals * sign[:, None], offsets * sign
    b1 = constant + outputs[:, flipped] @ offsets[flipped]
    remainder = linear + outputs[:, flipped] @ normals[flipped]  # what no found unit carries
    w1 = outputs
    spare = hidden - found
    rank = 0
    if spare:
        left, values, right = np.linalg.svd(remainder, full_matrices=False)
        rank = int((values > 1e-9 * max(values.max(), 1.0)).sum()) if values.size else 0
        extra_w0 = np.zeros((spare, dimension))
        extra_b0 = np.zeros(spare)
        extra_w1 = np.zeros((w1.shape[0], spare))
        for k in range(min(rank, spare)):
            # relu(v.u + lift) = v.u + lift on the whole box when lift exceeds |v|_1.
            lift = np.abs(right[k]).sum() + 1.0
            extra_w0[k], extra_b0[k], extra_w1[:, k] = right[k], lift, left[:, k] * values[k]
            b1 = b1 - left[:, k] * values[k] * lift
        w0, b0, w1 = np.vstack([w0, extra_w0]), np.concatenate([b0, extra_b0]), np.hstack([w1, extra_w1])
    misfit = np.abs(design @ theta - targets).max(1)
    residual = float(misfit.max())
    details = {
        "flipped_units": int(flipped.sum()),
        "always_on_units": min(rank, spare),
        "linear_remainder_rank": rank,
        "solve_residual": residual,
        # How far the sign solve's coefficients lie from 0 or -1 (0: every sign unambiguous).
        "sign_ambiguity": float(np.minimum(np.abs(lambdas), np.abs(lambdas + 1)).max(initial=0.0)),
    }
    distance = np.minimum(np.abs(lambdas), np.abs(lambdas + 1))
    order = np.argsort(-distance)  # the most ambiguous first
    directions = right[: min(rank, spare)] if spare else np.zeros((0, dimension))
    return w0, b0, w1, b1, details, misfit, order[distance[order] > AMBIGUOUS], directions


def _polish(values: list[np.ndarray], u: np.ndarray, targets: np.ndarray, iterations: int):
    """The network refitted to the centred logits at `u` by Gauss-Newton from the extracted values
    (with the units' on/off pattern settled, the residuals are bilinear in the weights: a few steps
    reach the answers' float32 precision)."""
    sizes = [v.size for v in values]
    shapes = [v.shape for v in values]
    flat = np.concatenate([v.ravel() for v in values])
    centre = targets.shape[1] > 1

    def unpack(vector: np.ndarray) -> list[np.ndarray]:
        parts = np.split(vector, np.cumsum(sizes)[:-1])
        return [part.reshape(shape) for part, shape in zip(parts, shapes, strict=True)]

    def residuals(vector: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        w0, b0, w1, b1 = unpack(vector)
        pre = u @ w0.T + b0
        hidden = np.maximum(pre, 0.0)
        z = hidden @ w1.T + b1
        error = z - targets
        return (error - error.mean(1, keepdims=True) if centre else error), pre > 0, hidden

    def jacobian(vector: np.ndarray, on: np.ndarray, hidden: np.ndarray) -> np.ndarray:
        _, _, w1, _ = unpack(vector)
        n, c = len(u), w1.shape[0]
        gate = w1[None, :, :] * on[:, None, :]  # (N, c, units)
        blocks = [
            np.einsum("pki,pj->pkij", gate, u).reshape(n, c, -1),
            gate,
            np.einsum("kl,pi->pkli", np.eye(c), hidden).reshape(n, c, -1),
            np.broadcast_to(np.eye(c), (n, c, c)),
        ]
        jac = np.concatenate(blocks, axis=2)
        if centre:
            jac = jac - jac.mean(1, keepdims=True)
        return jac.reshape(n * c, -1)

    error, on, hidden = residuals(flat)
    loss = float(np.mean(np.sum(error**2, 1)))
    for _ in range(iterations):
        step = np.linalg.lstsq(jacobian(flat, on, hidden), -error.ravel(), rcond=None)[0]
        scale = 1.0
        while scale > 1e-3:
            trial = flat + scale * step
            trial_error, trial_on, trial_hidden = residuals(trial)
            trial_loss = float(np.mean(np.sum(trial_error**2, 1)))
            if trial_loss < loss:
                break
            scale /= 2
        if not trial_loss < loss * (1 - 1e-6):
            break
        flat, error, on, hidden, loss = trial, trial_error, trial_on, trial_hidden, trial_loss
    return *unpack(flat), loss
