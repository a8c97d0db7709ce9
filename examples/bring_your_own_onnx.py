"""Bring your own model as ONNX: any image classifier exported with torch.onnx (or any other
exporter) is a victim mea runs with onnxruntime, attacks and defends like its own.

    python examples/bring_your_own_onnx.py [--queries 2000]
"""

from __future__ import annotations

import torch
from _common import parse, training
from torch import nn

import mea
from mea.data import load

args = parse(__doc__.splitlines()[0])
# "Your" model: a small CNN of your own design, trained briefly on MNIST (mea never sees this code).
model = nn.Sequential(
    nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 14 * 14, 10)
)
train = load("mnist", "train")
optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
generator = torch.Generator().manual_seed(0)
for batch in torch.randperm(20_000, generator=generator).split(128):
    optimiser.zero_grad()
    nn.functional.cross_entropy(model(train.images[batch]), train.labels[batch]).backward()
    optimiser.step()
path = args.work / "my_model.onnx"
torch.onnx.export(
    model.eval(),
    torch.zeros(1, 1, 28, 28),
    path,
    input_names=["input"],
    output_names=["logits"],
    dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    dynamo=False,
)
victim = mea.load_victim(path)  # run by onnxruntime; MNIST is its task unless a sidecar says otherwise
stolen = mea.attack(victim, "random", queries=args.queries, train=training(args))
print(
    f"ONNX victim: {stolen.metrics['victim']['accuracy']:.2%}; its clone from {stolen.queries} queries: "
    f"{stolen.clone_accuracy:.2%} accuracy, {stolen.fidelity:.2%} fidelity"
)
