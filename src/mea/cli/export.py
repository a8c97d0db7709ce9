"""`mea export`: a victim as a model file other tools can serve (ONNX)."""

from __future__ import annotations

from pathlib import Path

import click

from mea.cli.common import console, use_threads
from mea.errors import ArtifactError


@click.command("export")
@click.option(
    "--victim",
    "victim_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Victim directory (from `mea train-victim`) or mea .safetensors model file.",
)
@click.option(
    "--format",
    "file_format",
    type=click.Choice(["onnx"]),
    default="onnx",
    show_default=True,
    help="File format: ONNX (input `images` [B, C, H, W] in [0, 1], output `logits` [B, classes]).",
)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="File to write, e.g. victim.onnx.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
def export_command(victim_dir: Path, file_format: str, out: Path, force: bool) -> None:
    """Write the victim as a model file, checked to answer as the victim does (float tolerance), with
    a sidecar MODEL.json beside it naming its dataset, classes and calibration split."""
    from mea.runs import check_victim_directory, check_writable

    check_victim_directory(victim_dir)
    if out.is_dir():
        raise ArtifactError(f"{out} is a directory; --out names the file to write, e.g. {out / 'victim.onnx'}")
    if out.exists() and not force:
        raise ArtifactError(f"{out} exists; choose another --out or pass --force to replace it")
    check_writable(out)
    use_threads()
    from mea.model_files import export_onnx
    from mea.victim import load_victim, write_sidecar

    victim = load_victim(victim_dir)
    if victim.arch == "onnx":
        raise ArtifactError(f"{victim_dir} is already an ONNX model; copy the file")
    if victim.arch == "served":
        raise ArtifactError(f"{victim_dir} is a victim served elsewhere: its weights are not here to export")
    out.parent.mkdir(parents=True, exist_ok=True)
    difference = export_onnx(victim.model, out)
    sidecar = write_sidecar(victim, out)
    console().print(
        f"{file_format} model written to {out} (largest logit difference from the victim {difference:.1e}), "
        f"its dataset and classes to {sidecar}"
    )
