"""Where a sweep's trials run.  Every backend runs the same function, `run_trial`, on the same
inputs and yields outcomes as trials finish; the sweep around it does not know which one it has.

- `local`: worker processes on this machine, each with its share of the cores as torch threads.
- `ray`: tasks on a Ray cluster (`--address`), or on a Ray instance started here.  The victim,
  defense and data go through Ray's object store (mea.experiments.shipping), so worker nodes need
  this package and nothing of the driver's disk.  Ray is an optional extra
  (`pip install 'model-extraction-attack[ray]'`) and imported only when chosen.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Protocol

import torch

from mea.errors import ConfigError
from mea.experiments import shipping
from mea.experiments.trial import Outcome, Trial, TrialContext, run_trial
from mea.threads import configured, usable_cpus


class Backend(Protocol):
    name: str

    def run(self, trials: Sequence[Trial], context: TrialContext) -> Iterator[Outcome]:
        """Run the trials; yield each outcome as soon as it is ready (in any order)."""
        ...

    def describe(self, n_trials: int) -> str: ...


@dataclass(frozen=True)
class LocalBackend:
    """Worker processes on this machine; `workers` None: one per core, at most one per trial.

    `threads` None gives each worker its share of the cores, or the count `mea --threads` /
    MEA_THREADS fixes; set it to match another run's thread count when records must agree bit for
    bit (floating-point sums depend on how work is split).
    """

    workers: int | None = None
    threads: int | None = None
    name: str = "local"

    def plan(self, n_trials: int) -> tuple[int, int]:
        """(worker processes, torch threads each): together never more threads than cores."""
        cores = usable_cpus()
        workers = max(1, min(self.workers or cores, n_trials))
        return workers, self.threads or configured() or max(1, cores // workers)

    @classmethod
    def from_options(cls, workers: int | None, address: str | None) -> LocalBackend:
        if address is not None:
            raise ConfigError("--address is for --backend ray; the local backend runs on this machine")
        return cls(workers)

    def describe(self, n_trials: int) -> str:
        workers, threads = self.plan(n_trials)
        return f"local: {workers} worker{'s' if workers > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}"

    def run(self, trials: Sequence[Trial], context: TrialContext) -> Iterator[Outcome]:
        workers, threads = self.plan(len(trials))
        if workers == 1:
            # One worker: run here, without paying a process start and an import of torch.
            previous = torch.get_num_threads()
            try:
                for trial in trials:
                    yield run_trial(trial, context, threads)
            finally:
                torch.set_num_threads(previous)
            return
        # Spawned, not forked: a fork of a process whose OpenMP pool is running can deadlock.
        executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        try:
            futures = {executor.submit(run_trial, trial, context, threads): trial for trial in trials}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield _outcome(futures[future], future.result)
        finally:
            executor.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class RayBackend:
    """Ray tasks of `cpus_per_trial` CPUs each (that many torch threads).

    `address` None starts a Ray instance on this machine with `workers` CPUs (default: all cores)
    unless one is already running in this process (its own, even where a `ray start` cluster runs
    on this machine or RAY_ADDRESS names one); otherwise connects to the cluster there.  Every
    node needs this package; the files trials read are shipped (`mea.experiments.shipping`).
    """

    address: str | None = None
    workers: int | None = None
    cpus_per_trial: int = 1
    name: str = "ray"

    @classmethod
    def from_options(cls, workers: int | None, address: str | None) -> RayBackend:
        return cls(address, workers)

    def describe(self, n_trials: int) -> str:
        where = self.address or f"a local instance ({self.workers or usable_cpus()} CPUs)"
        return f"ray: {where}, {self.cpus_per_trial} CPU per trial"

    def run(self, trials: Sequence[Trial], context: TrialContext) -> Iterator[Outcome]:
        ray = _import_ray()
        started = not ray.is_initialized()
        if started:
            # "local", not None: ray.init(None) joins whatever `ray start` cluster this machine runs
            # (or RAY_ADDRESS names), and then refuses num_cpus; the sweep asked for its own instance.
            ray.init(
                address=self.address or "local",
                num_cpus=(self.workers or usable_cpus()) if self.address is None else None,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        try:
            bundle, contents = shipping.pack(trials, context)
            shipped = [ray.put(contents)]
            del contents  # the object store holds them now
            task = ray.remote(num_cpus=self.cpus_per_trial)(shipping.run_shipped_trial)
            refs = {task.remote(trial, context, bundle, shipped, self.cpus_per_trial): trial for trial in trials}
            pending = list(refs)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                yield _outcome(refs[done[0]], lambda ref=done[0]: ray.get(ref))
        finally:
            if started:
                ray.shutdown()


def _outcome(trial: Trial, result: Callable[[], Outcome]) -> Outcome:
    """The worker's outcome, or the trial's failure if the worker itself died (killed, out of memory)."""
    try:
        return result()
    except Exception as exc:
        return Outcome(trial, error=f"worker failed: {type(exc).__name__}: {exc}")


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "the ray backend needs Ray: pip install 'model-extraction-attack[ray]' (or 'ray[default]')"
        ) from None
    return ray


BACKENDS: dict[str, Callable[[int | None, str | None], Backend]] = {
    "local": LocalBackend.from_options,
    "ray": RayBackend.from_options,
}


def make_backend(name: str, workers: int | None = None, address: str | None = None) -> Backend:
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    return BACKENDS[name](workers, address)
