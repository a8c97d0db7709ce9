"""A decision tree's prediction API, which names the node that answered each query beside the
answer (BigML's does, by the node's confidence and path; Tramèr et al. 2016, §4.2).

The node is the leaf that answered, or, for a query with missing features (NaN), the internal node
whose split needed one.  A label-only API names no node: it answers labels only.
"""

from __future__ import annotations

import torch

from mea.errors import ConfigError
from mea.oracle import Label, OutputMode, VictimOracle
from mea.tabular.models import Tree


class NodeOracle(VictimOracle):
    """An in-process tree victim that also names the answering node (`query_nodes`)."""

    names_nodes = True

    def __init__(self, model: Tree, output: OutputMode | None = None, budget: int | None = None) -> None:
        if not isinstance(model, Tree):
            raise ConfigError("only a decision tree's API names the node that answered")
        if isinstance(output, Label):
            raise ConfigError("a label-only API names no node; serve the tree's probabilities to answer nodes")
        super().__init__(model, output, budget)
        self._tree = model

    def query_nodes(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(answers, node identifiers) for one batch, charged once."""
        answers = self.query(inputs)
        with torch.inference_mode():
            return answers, self._tree.nodes(inputs)
