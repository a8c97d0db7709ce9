"""The generated blocks of README.md and the docs pages (docs/*.md), each a function of committed results files.

`BLOCKS[name](results)` returns a block's markdown; `benchmarks.readme` puts it between the block's
markers and checks it.  One module per page renders its blocks (`benchmarks.pages`), on the
formatting of `benchmarks.pages.format`.  Every block ends with a line naming the file(s) it reads
and the command that wrote them; times carry the machine and its 1-minute load average when they
were taken.  Spreads ("±") are sample standard deviations (n - 1) over the draws or seeds named
beside them.

Pure Python (json only): the check runs in the test suite without torch.
"""

from __future__ import annotations

from collections.abc import Callable

from benchmarks.pages.attacks import (
    readme_attack_curves,
    readme_attack_findings,
    readme_default_attack,
    readme_fashion_mnist,
    readme_fidelity_60k,
    readme_fidelity_budgets,
    readme_seed_table,
    readme_time_to_98,
    readme_training_loop,
    readme_victim,
)
from benchmarks.pages.benchmarks import (
    bench_art_timing,
    bench_clone,
    bench_defenses,
    bench_header,
    bench_limits,
    bench_study,
    benchmarks_page,
    readme_art_summary,
)
from benchmarks.pages.data_free import readme_data_free, readme_poisoning
from benchmarks.pages.defense import (
    readme_adaptive,
    readme_adaptive_findings,
    readme_defense_findings,
    readme_defense_table,
    readme_detector,
    readme_in_distribution,
    readme_prada,
)
from benchmarks.pages.format import MissingResults, Results, _full
from benchmarks.pages.getting_started import (
    readme_headlines,
    readme_omp_wait_policy,
    readme_quickstart,
    readme_startup,
    readme_suite_time,
    readme_sweep_timings,
    readme_thread_contention,
)
from benchmarks.pages.ownership import ownership_markdown, readme_ownership, readme_verify_calibration
from benchmarks.pages.serving import (
    readme_detector_overhead,
    readme_load_fault,
    readme_serve_ab,
    readme_serve_throughput,
)
from benchmarks.pages.tramer import readme_tramer

BLOCKS: dict[str, Callable[[Results], str]] = {
    "benchmarks-header": _full(bench_header),
    "benchmarks-clone": _full(bench_clone),
    "benchmarks-art-timing": bench_art_timing,
    "benchmarks-study": _full(bench_study),
    "benchmarks-defenses": _full(bench_defenses),
    "benchmarks-limits": _full(bench_limits),
    "quickstart": readme_quickstart,
    "headlines": readme_headlines,
    "startup": readme_startup,
    "suite-time": readme_suite_time,
    "thread-contention": readme_thread_contention,
    "omp-wait-policy": readme_omp_wait_policy,
    "victim": readme_victim,
    "default-attack": readme_default_attack,
    "time-to-98": readme_time_to_98,
    "training-loop": readme_training_loop,
    "fidelity-60k": readme_fidelity_60k,
    "fidelity-budgets": readme_fidelity_budgets,
    "seed-table": readme_seed_table,
    "defense-table": readme_defense_table,
    "detector": readme_detector,
    "defense-findings": readme_defense_findings,
    "in-distribution": readme_in_distribution,
    "prada": readme_prada,
    "serve-throughput": readme_serve_throughput,
    "serve-ab": readme_serve_ab,
    "detector-overhead": readme_detector_overhead,
    "load-fault": readme_load_fault,
    "ownership": readme_ownership,
    "verify-calibration": readme_verify_calibration,
    "attack-curves": readme_attack_curves,
    "fashion-mnist": readme_fashion_mnist,
    "attack-findings": readme_attack_findings,
    "adaptive": readme_adaptive,
    "adaptive-findings": readme_adaptive_findings,
    "data-free": readme_data_free,
    "poisoning": readme_poisoning,
    "sweep-timings": readme_sweep_timings,
    "art-summary": readme_art_summary,
    "tramer": readme_tramer,
}

__all__ = ["BLOCKS", "MissingResults", "Results", "benchmarks_page", "ownership_markdown", "readme_verify_calibration"]
