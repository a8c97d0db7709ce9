"""What the channels-last memory format buys LeNet-5 on this CPU: inference and training speed-ups.

`mea.models` keeps every model and its inputs channels-last because oneDNN's CPU convolutions
are fastest in that layout.  This measures it: the same LeNet-5 weights in PyTorch's default
(contiguous) layout and in channels-last, victim inference at batch 1,024 on MNIST test and
clone training steps (forward, backward, Adam) at batch 256, the two layouts alternating repeat
by repeat so that a noisy neighbour slows both alike; medians over the repeats.

    python -m benchmarks.channels_last [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.provenance import RESULTS, Provenance
from mea import models
from mea.data import load

LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads")
    parser.add_argument("--out", type=Path, default=RESULTS / "channels_last.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    provenance = Provenance()
    images = load("mnist", "test").images
    train_images = load("mnist", "train").images[:8192]
    targets = torch.randint(0, 10, (len(train_images),), generator=torch.Generator().manual_seed(0))
    nets = {name: models.build("lenet5", 0).to(memory_format=layout) for name, layout in LAYOUTS.items()}
    inputs = {name: images.contiguous(memory_format=layout) for name, layout in LAYOUTS.items()}
    train_inputs = {name: train_images.contiguous(memory_format=layout) for name, layout in LAYOUTS.items()}
    optimisers = {name: torch.optim.Adam(net.parameters(), lr=1e-3) for name, net in nets.items()}

    @torch.inference_mode()
    def infer(name: str) -> None:
        net = nets[name].eval()
        for chunk in inputs[name].split(1024):
            net(chunk)

    def train(name: str) -> None:
        net, optimiser = nets[name].train(), optimisers[name]
        for batch in torch.arange(len(train_images)).split(256):
            loss = F.cross_entropy(net(train_inputs[name][batch]), targets[batch])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()

    for name in LAYOUTS:  # warm-up: oneDNN builds its kernels on first use
        infer(name)
        train(name)
    samples: dict[str, dict[str, list[float]]] = {"inference": {}, "training": {}}
    for _ in range(args.repeats):
        for name in LAYOUTS:
            samples["inference"].setdefault(name, []).append(len(images) / timed(lambda n=name: infer(n)))
            samples["training"].setdefault(name, []).append(len(train_images) / timed(lambda n=name: train(n)))
    result = {
        task: {name: statistics.median(values) for name, values in by_layout.items()}
        for task, by_layout in samples.items()
    }
    speedups = {task: rates["channels_last"] / rates["contiguous"] for task, rates in result.items()}
    record = {
        "provenance": provenance.record(),
        "images_per_s": result,
        "speedup": speedups,
        "samples_images_per_s": samples,
        "setup": {
            "inference": f"LeNet-5, MNIST test ({len(images):,} images), batch 1,024",
            "training": f"LeNet-5, {len(train_images):,} images, batch 256, cross-entropy, Adam",
            "repeats": args.repeats,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"channels-last: inference {speedups['inference']:.2f}x, training {speedups['training']:.2f}x; "
        f"written to {args.out}"
    )


if __name__ == "__main__":
    main()
