"""A defense directory: the fitted detector, the default response policy and the noise secret,
tied to one victim by the fingerprint of its weights.

    detector.safetensors   class means and whitening factors per layer
    detector.json          layers, standardisers, threshold and target false-positive rate
    defense-config.json    victim fingerprint, policy, calibration records (the detector's and the
                           synthetic-step detector's, mea.defenses.steps), command line
    secret.key             32 random bytes (hex) that key the noise; readable by the owner only
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from mea import __version__
from mea.config import DEFAULT_POLICY, PradaConfig
from mea.defenses.defended_oracle import DefendedOracle
from mea.defenses.detector import DetectorConfig, OodDetector
from mea.defenses.gate import ClientGate
from mea.defenses.policies import Policy, parse_policy
from mea.defenses.prada import PradaMonitor
from mea.defenses.steps import StepCalibration, calibrate
from mea.errors import ArtifactError, ConfigError
from mea.oracle import OutputMode, VictimOracle
from mea.ownership.config import DEFAULT_RATE, WatermarkConfig
from mea.ownership.watermark import Watermark
from mea.runs import command_line, read_json, run_directory, write_json
from mea.signature import DEFAULT as DEFAULT_SIGNATURE
from mea.victim import Victim


@dataclass(frozen=True)
class Defense:
    directory: Path
    detector: OodDetector
    policy: Policy
    secret: bytes
    victim_fingerprint: str
    # The served watermark (mea.ownership), keyed by a key derived from `secret`; None: none.
    watermark: WatermarkConfig | None = None
    # Prediction poisoning for every query the detector passes (e.g. MAD); None: exact answers.
    every_query_policy: Policy | None = None
    # The synthetic-step detector's thresholds, from benign streams of the calibration split; None:
    # a defense fitted before it (PradaConfig's defaults stand in).
    steps: StepCalibration | None = None

    def stream_config(self, base: PradaConfig | None = None) -> PradaConfig:
        """The per-client detectors' configuration with this defense's calibrated step thresholds."""
        base = base or PradaConfig()
        if self.steps is None:
            return base
        return dataclasses.replace(
            base, step_radius=self.steps.radius, step_window=self.steps.window, step_count=self.steps.count
        )

    def gate(self, victim: Victim, output: OutputMode | None = None, budget: int | None = None) -> ClientGate:
        """The defended victim behind per-client detection and escalation, as `mea serve` runs it."""
        return ClientGate(self.oracle(victim, output, budget), PradaMonitor(self.stream_config()))

    def oracle(
        self,
        victim: Victim,
        output: OutputMode | None = None,
        budget: int | None = None,
        policy: Policy | None = None,
        detector: OodDetector | None = None,
        unflagged_policy: Policy | None = None,
    ) -> DefendedOracle:
        """The defended victim as an oracle (policy and detector may be overridden, e.g. for sweeps).

        With a watermark configured, `respond(images, client)` (what the service and the per-client
        gate call) watermarks each client's answers; `query` and `answer`, which name no client, do not.
        """
        return DefendedOracle(
            VictimOracle(victim.model, budget=budget),
            detector or self.detector,
            policy or self.policy,
            self.secret,
            output,
            watermark=None if self.watermark is None else Watermark(self.watermark),
            unflagged_policy=unflagged_policy or self.every_query_policy,
        )


def fit_defense(
    victim: Victim,
    out: Path,
    config: DetectorConfig,
    policy: str = DEFAULT_POLICY,
    data_dir: Path | None = None,
    force: bool = False,
    watermark_rate: float | None = None,
    every_query_policy: str | None = None,
) -> Defense:
    """Fit the detector on the victim's training split and calibrate it on the calibration split.

    `watermark_rate`: the fraction of each client's answers the served victim watermarks
    (mea.ownership.watermark; 0 for none; None: DEFAULT_RATE where the watermark applies, a victim
    of the default signature, else none).  `every_query_policy`: a policy for the queries the
    detector passes too (prediction poisoning such as ``mad-top1:1``; None: exact answers)."""
    supported = victim.signature == DEFAULT_SIGNATURE
    if watermark_rate is None:
        watermark_rate = DEFAULT_RATE if supported else 0.0
    if watermark_rate:
        WatermarkConfig(b"\0" * 32, rate=watermark_rate)  # refuse a bad rate before any work
        if not supported:
            raise ConfigError(
                f"the watermark keys 1x28x28 images of 10 classes; this victim takes {victim.signature.describe()}: "
                "drop --watermark-rate (or set it to 0)"
            )
    parsed_policy = parse_policy(policy)
    poisoning = None if every_query_policy is None else parse_policy(every_query_policy).spec
    splits = victim.splits
    start = time.perf_counter()
    with run_directory(out, force) as scratch:
        fit_set, calibration = victim.owner_sets(data_dir)
        detector = OodDetector.fit(victim.model, fit_set.images, fit_set.labels, calibration.images, config)
        detector.save(scratch)
        calibration_fpr = float(
            (detector.score_images(victim.model, calibration.images) > detector.threshold).float().mean()
        )
        steps = calibrate(victim.signature.unit(calibration.images), calibration.labels)
        write_json(
            scratch / "defense-config.json",
            {
                "victim": str(victim.directory),
                "victim_fingerprint": victim.fingerprint,
                "policy": parsed_policy.spec,
                "every_query_policy": poisoning,
                "watermark": {"rate": watermark_rate} if watermark_rate else None,
                "detector": detector.describe(),
                "fitted_on": splits.describe()["victim_train"],
                "calibrated_on": splits.describe()["calibration"],
                "calibration_fpr": calibration_fpr,
                "steps": dataclasses.asdict(steps),
                "fit_time_s": time.perf_counter() - start,
                "mea_version": __version__,
                "command": command_line(),
            },
        )
        secret_path = scratch / "secret.key"
        secret_path.write_text(secrets.token_hex(32) + "\n")
        os.chmod(secret_path, 0o600)
    return load_defense(out, victim)


def load_defense(directory: Path, victim: Victim) -> Defense:
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"defense directory {directory} does not exist; create it with `mea defend fit`")
    config = read_json(directory / "defense-config.json", "not a defense directory; create one with `mea defend fit`")
    if config.get("victim_fingerprint") != victim.fingerprint:
        raise ArtifactError(
            f"the defense in {directory} was fitted for another victim ({config.get('victim')}); "
            f"fit it for this one with `mea defend fit --victim {victim.directory} --out DIR`"
        )
    try:
        secret = bytes.fromhex((directory / "secret.key").read_text().strip())
    except (FileNotFoundError, ValueError):
        raise ArtifactError(f"{directory / 'secret.key'} is missing or corrupt; fit the defense again") from None
    # Defense directories from before the watermark have none.
    watermark = config.get("watermark")
    return Defense(
        directory,
        OodDetector.load(directory),
        parse_policy(config["policy"]),
        secret,
        config["victim_fingerprint"],
        None if not watermark else WatermarkConfig.derived(secret, rate=watermark["rate"]),
        # Defense directories from before prediction poisoning have none.
        None if not config.get("every_query_policy") else parse_policy(config["every_query_policy"]),
        None if not config.get("steps") else StepCalibration(**config["steps"]),
    )
