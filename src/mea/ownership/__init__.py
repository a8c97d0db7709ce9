"""Proof of theft: evidence, made before a suspect exists, that a suspect model was extracted from
this victim.

- `watermark`: the active watermark, a keyed wrong class for a keyed fraction of each client's
  answers (after DAWN, Szyller et al. 2021).
- `evidence`: the append-only store of watermarked queries, covered by a running hash chain.
- `fingerprint`: the passive fingerprint, inputs on which this victim's label is idiosyncratic (its
  own errors, and conferrable adversarial examples after Lukas et al. 2021); nothing answered changes.
- `suspects`: a suspect model as a weights file (safetensors, ONNX) or a prediction API.
- `verify`: the statistical tests and the verdict.
- `clients`: in-process clients of a watermarking defended oracle (one key, or many: Sybil).
"""
