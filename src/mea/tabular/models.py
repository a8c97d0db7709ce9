"""Classic-ML classifiers as torch modules: the parameters scikit-learn learned, evaluated in float64.

Each module carries its `signature` (mea.signature), answers logits whose softmax is the model's
probability vector (a binary model's logits are [0, z]; a one-vs-rest model's are log sigmoid(z),
whose softmax is scikit-learn's normalised one-vs-rest probabilities; a tree's are the log of its
leaf's class distribution), and shows its input as the layer the detector reads (`features`).  A
tree also names the node that answered (`nodes`): a leaf, or the internal node whose feature was
missing (NaN), as BigML's trees answer incomplete queries (Tramèr et al. 2016, §4.2).

Storage: `save`/`load_tensors` write and read the parameters and the signature as safetensors with
the architecture in the header (`mea.models.load` reads these files too).
"""

from __future__ import annotations

import abc
from enum import StrEnum
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from mea.errors import ArtifactError
from mea.signature import Signature

FORMAT = "mea-classic-v1"


class Activation(StrEnum):
    TANH = "tanh"
    RELU = "relu"


class ClassicModel(nn.Module, abc.ABC):
    """What every classic victim shares: float64 evaluation of flattened inputs, its input as the
    detector's layer, its parameters as named float64 tensors."""

    arch = ""
    block_names = ("input",)
    feature_names = ("input", "logits")

    def __init__(self, signature: Signature) -> None:
        super().__init__()
        self.signature = signature

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(len(x), -1).double()

    @abc.abstractmethod
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, classes) float64 logits of flattened inputs: each kind of victim its own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self._flat(x))

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        flat = self._flat(x)
        return {"input": flat, "logits": self.logits(flat)}

    def parameter_tensors(self) -> dict[str, torch.Tensor]:
        return {name: value.detach().contiguous() for name, value in self.state_dict().items()}

    def metadata(self) -> dict[str, str]:
        return {}


class _Linear(ClassicModel):
    """A linear model: scores z = W x + b, one row per class (one row for a binary model)."""

    def __init__(self, signature: Signature, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__(signature)
        self.weight = nn.Parameter(weight.double(), requires_grad=False)
        self.bias = nn.Parameter(bias.double(), requires_grad=False)

    def scores(self, flat: torch.Tensor) -> torch.Tensor:
        return flat @ self.weight.T + self.bias

    @property
    def unknowns(self) -> int:
        return self.weight.numel() + self.bias.numel()


class BinaryLogistic(_Linear):
    """Logistic regression, two classes: P(1 | x) = sigmoid(w.x + b)."""

    arch = "logreg"

    def logits(self, flat: torch.Tensor) -> torch.Tensor:
        z = self.scores(flat)
        return torch.cat([torch.zeros_like(z), z], dim=1)


class Softmax(_Linear):
    """Multinomial (softmax) regression: P(k | x) proportional to exp(w_k.x + b_k)."""

    arch = "softmax"

    def logits(self, flat: torch.Tensor) -> torch.Tensor:
        return self.scores(flat)


class OneVsRest(_Linear):
    """One-vs-rest logistic regressions, normalised: P(k | x) = s_k / sum_j s_j, s_k = sigmoid(w_k.x + b_k)
    (scikit-learn's OneVsRestClassifier.predict_proba)."""

    arch = "ovr"

    def logits(self, flat: torch.Tensor) -> torch.Tensor:
        return F.logsigmoid(self.scores(flat))


class OneHiddenLayer(ClassicModel):
    """A multilayer perceptron with one hidden layer: z = W1 act(W0 x + b0) + b1, softmax over z (a
    binary one has a single logistic output: logits [0, z])."""

    arch = "mlp"
    feature_names = ("input", "hidden", "logits")

    def __init__(
        self,
        signature: Signature,
        w0: torch.Tensor,
        b0: torch.Tensor,
        w1: torch.Tensor,
        b1: torch.Tensor,
        activation: Activation,
    ) -> None:
        super().__init__(signature)
        self.w0 = nn.Parameter(w0.double(), requires_grad=False)
        self.b0 = nn.Parameter(b0.double(), requires_grad=False)
        self.w1 = nn.Parameter(w1.double(), requires_grad=False)
        self.b1 = nn.Parameter(b1.double(), requires_grad=False)
        self.activation = Activation(activation)

    @property
    def hidden(self) -> int:
        return self.w0.shape[0]

    @property
    def unknowns(self) -> int:
        return sum(p.numel() for p in (self.w0, self.b0, self.w1, self.b1))

    def hidden_layer(self, flat: torch.Tensor) -> torch.Tensor:
        pre = flat @ self.w0.T + self.b0
        return torch.tanh(pre) if self.activation is Activation.TANH else torch.relu(pre)

    def logits(self, flat: torch.Tensor) -> torch.Tensor:
        z = self.hidden_layer(flat) @ self.w1.T + self.b1
        return torch.cat([torch.zeros_like(z), z], dim=1) if z.shape[1] == 1 else z

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        flat = self._flat(x)
        hidden = self.hidden_layer(flat)
        z = hidden @ self.w1.T + self.b1
        return {
            "input": flat,
            "hidden": hidden,
            "logits": torch.cat([torch.zeros_like(z), z], 1) if z.shape[1] == 1 else z,
        }

    def metadata(self) -> dict[str, str]:
        return {"activation": self.activation.value}


def _log(probabilities: torch.Tensor) -> torch.Tensor:
    """Logits of a distribution with zeros: log p, floored at 1e-300, whose softmax in float32 is p
    exactly (a zero stays zero) and whose losses stay finite."""
    return probabilities.clamp_min(1e-300).log()


class Tree(ClassicModel):
    """A binary decision tree as scikit-learn stores it: node arrays `feature`, `threshold`, `left`,
    `right` (-1 at a leaf) and each node's class distribution `value`.  A sample goes left when
    feature <= threshold, compared as scikit-learn does (the feature in float32, the threshold in
    float64); a feature that is missing (NaN) stops it at that node, whose distribution answers."""

    arch = "tree"

    def __init__(
        self,
        signature: Signature,
        feature: torch.Tensor,
        threshold: torch.Tensor,
        left: torch.Tensor,
        right: torch.Tensor,
        value: torch.Tensor,
    ) -> None:
        super().__init__(signature)
        self.register_buffer("feature", feature.long())
        self.register_buffer("threshold", threshold.double())
        self.register_buffer("left", left.long())
        self.register_buffer("right", right.long())
        value = value.double()
        self.register_buffer("value", value / value.sum(1, keepdim=True))

    @property
    def node_count(self) -> int:
        return len(self.feature)

    @property
    def leaf_count(self) -> int:
        return int((self.left < 0).sum())

    def nodes(self, x: torch.Tensor) -> torch.Tensor:
        """The node that answers each row: its leaf, or where a missing feature stopped it."""
        flat = x.reshape(len(x), -1).float()  # scikit-learn compares float32 features
        node = torch.zeros(len(flat), dtype=torch.long)
        done = self.left[node] < 0
        while not bool(done.all()):
            rows = (~done).nonzero().squeeze(1)
            here = node[rows]
            values = flat[rows, self.feature[here]]
            missing = torch.isnan(values)
            step = torch.where(values.double() <= self.threshold[here], self.left[here], self.right[here])
            step = torch.where(missing, here, step)
            node[rows] = step
            done[rows] = missing | (self.left[step] < 0)
        return node

    def logits(self, flat: torch.Tensor) -> torch.Tensor:
        return _log(self.value[self.nodes(flat)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _log(self.value[self.nodes(x)])

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        # NaN (a missing feature) becomes 0 for the detector's Gaussian, which cannot read NaN.
        return {"input": torch.nan_to_num(self._flat(x)), "logits": self.forward(x)}


class Forest(ClassicModel):
    """A random forest: the mean of its trees' class distributions (scikit-learn's predict_proba)."""

    arch = "forest"

    def __init__(self, signature: Signature, trees: list[Tree]) -> None:
        super().__init__(signature)
        self.trees = nn.ModuleList(trees)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _log(torch.stack([tree.value[tree.nodes(x)] for tree in self.trees]).mean(0))

    def logits(self, flat: torch.Tensor) -> torch.Tensor:
        return self.forward(flat)

    def parameter_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {}
        for index, tree in enumerate(self.trees):
            for name, value in tree.state_dict().items():
                tensors[f"trees.{index}.{name}"] = value.contiguous()
        return tensors

    def metadata(self) -> dict[str, str]:
        return {"trees": str(len(self.trees))}


ARCHS: dict[str, type[ClassicModel]] = {
    cls.arch: cls for cls in (BinaryLogistic, Softmax, OneVsRest, OneHiddenLayer, Tree, Forest)
}


def save(model: ClassicModel, path: Path) -> None:
    """Parameters and signature as safetensors, the architecture in the header (never pickle)."""
    metadata = {"arch": model.arch, "format": FORMAT, **model.signature.to_metadata(), **model.metadata()}
    save_file(model.parameter_tensors(), str(path), metadata=metadata)


def from_tensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> ClassicModel:
    """The classic model a `save`d file holds (mea.models.load calls this for these architectures)."""
    arch = metadata.get("arch")
    try:
        signature = Signature.from_metadata(metadata)
        if arch in ("logreg", "softmax", "ovr"):
            model: ClassicModel = ARCHS[arch](signature, tensors["weight"], tensors["bias"])
        elif arch == "mlp":
            model = OneHiddenLayer(
                signature,
                tensors["w0"],
                tensors["b0"],
                tensors["w1"],
                tensors["b1"],
                Activation(metadata["activation"]),
            )
        elif arch == "tree":
            model = Tree(signature, *(tensors[n] for n in ("feature", "threshold", "left", "right", "value")))
        elif arch == "forest":
            trees = [
                Tree(
                    signature, *(tensors[f"trees.{i}.{n}"] for n in ("feature", "threshold", "left", "right", "value"))
                )
                for i in range(int(metadata["trees"]))
            ]
            model = Forest(signature, trees)
        elif arch == "leaf-boxes":
            model = LeafBoxes(signature, tensors["low"], tensors["high"], tensors["value"])
        else:
            raise ArtifactError(f"{path} names no classic architecture ({arch!r})")
    except (KeyError, ValueError) as exc:
        raise ArtifactError(f"{path} does not hold a complete {arch} model ({exc}); retrain it") from None
    return model.eval()


class LeafBoxes(ClassicModel):
    """A tree as path-finding recovers it (Tramèr et al. 2016, §4.2): its leaves' boxes, each leaf
    the set low < x <= high (per feature, compared in float32 as the tree compares), and the answer
    the leaf gives.  An input in no box (a region path-finding never reached) gets `fallback`."""

    arch = "leaf-boxes"

    def __init__(self, signature: Signature, low: torch.Tensor, high: torch.Tensor, value: torch.Tensor) -> None:
        super().__init__(signature)
        self.register_buffer("low", low.float())
        self.register_buffer("high", high.float())
        value = value.double()
        self.register_buffer("value", value / value.sum(1, keepdim=True))

    def leaves_of(self, x: torch.Tensor) -> torch.Tensor:
        """Each row's box (-1: none)."""
        flat = x.reshape(len(x), -1).float()
        found = torch.full((len(flat),), -1, dtype=torch.long)
        for start in range(0, len(flat), 256):
            rows = flat[start : start + 256, None, :]
            inside = ((rows > self.low) & (rows <= self.high)).all(2)  # (rows, leaves)
            hit = inside.any(1)
            found[start : start + 256] = torch.where(hit, inside.float().argmax(1), -1)
        return found

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leaves = self.leaves_of(x)
        fallback = self.value.mean(0, keepdim=True).expand(len(x), -1)
        return _log(torch.where((leaves >= 0)[:, None], self.value[leaves.clamp_min(0)], fallback))

    def logits(self, flat: torch.Tensor) -> torch.Tensor:
        return self.forward(flat)


ARCHS[LeafBoxes.arch] = LeafBoxes
