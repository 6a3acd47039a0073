"""A site: one dask worker that holds the instruments of one lab and does its units' work there.

`labpnn worker --scheduler tcp://HOST:PORT --config site.yaml` starts one. The site file is a
bench file (instruments.yaml) with the site's name on top:

    site: paris
    instruments:
      opu: {driver: opu, options: {simulated: true, n_components: 2000, seed: 2}}

The worker advertises one dask resource per instrument (`instrument:opu`), so a task that
asks for it can only run there, and keeps the instrument sessions and each unit built on them
in the `SitePlugin` (worker state): instruments never leave their site, only arrays and
parameters travel. The task functions below are what the coordinator submits; each returns
(result, seconds the site spent on it).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import numpy as np
import torch
from distributed import Worker, WorkerPlugin, get_worker
from distributed.comm import connect
from distributed.security import Security
from pydantic import Field

from labpnn.bench import Bench, BenchFile
from labpnn.config_errors import read_yaml, validate
from labpnn.errors import ClusterError, ConfigError
from labpnn.health import no_signal
from labpnn.batches import sampler
from labpnn.pib import PIBSettings, UnitOptimiser
from labpnn.protocols import FaultInjectable

PLUGIN = "labpnn-site"
QUIET = {  # a site's work holds the GIL; dask's monitors, waking the event loop every 1-20 ms, took
    # turns with it and halved a PIB step's speed on a busy machine (0.31 against 0.14 s per step)
    "distributed.worker.profile.enabled": False,
    "distributed.admin.system-monitor.gil.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "1s",
}
RESOURCE = "instrument:"  # + the instrument's name: the worker resource that pins work to it

log = logging.getLogger(__name__)


def resource(instrument: str) -> str:
    return RESOURCE + instrument


class SiteFile(BenchFile):
    """A bench file with the site's name: what one `labpnn worker` holds."""

    site: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="the site's name (a lab, a room, a machine)")


def load_site(path: str | Path) -> SiteFile:
    path = Path(path)
    return validate(SiteFile, read_yaml(path, "site file"), f"site file {path}")


@dataclass(frozen=True)
class Kept:
    """Rows this site measured already (kept with their prepared inputs), named by the digests
    of their measured chunks in order: what load_inputs receives instead of the rows."""

    chunks: tuple[str, ...]


def digest(rows: np.ndarray) -> str:
    """The name of a measured chunk: a hash of its dtype, shape and bytes."""
    rows = np.ascontiguousarray(rows)
    h = hashlib.blake2b(f"{rows.dtype.str}{rows.shape}".encode(), digest_size=16)
    h.update(rows.data)
    return h.hexdigest()


@dataclass
class _Session:
    """One unit built on this site's instruments, and what it trains on (one revision); `kept`:
    measured chunks (digest -> rows, and their prepared inputs when the unit measures from
    them) until the next load_inputs."""

    unit: Any
    optimiser: UnitOptimiser | None = None
    revision: int | None = None
    kept: dict[str, tuple[np.ndarray, np.ndarray | None]] = field(default_factory=dict)

    def rows(self, rows: np.ndarray | Kept, what: str) -> tuple[np.ndarray, np.ndarray | None]:
        """(rows, their prepared inputs or None) of rows sent, or of rows kept here."""
        if not isinstance(rows, Kept):
            return rows, None
        try:
            got = [self.kept[d] for d in rows.chunks]
        except KeyError:
            raise ClusterError(f"unit {self.unit.name}: the {what} rows it measured here are no longer "
                               "kept (send them)") from None
        prepared = [p for _, p in got]
        return (np.concatenate([h for h, _ in got]),
                None if any(p is None for p in prepared) else np.concatenate(prepared))


class SitePlugin(WorkerPlugin):
    """The worker state of a site: its bench (the instrument sessions) and its units."""

    name = PLUGIN

    def __init__(self, site: str, instruments: dict[str, dict], source: str):
        self.site, self.instruments, self.source = site, instruments, source
        self.bench: Bench | None = None
        self.sessions: dict[str, _Session] = {}
        self.host = socket.gethostname()

    def setup(self, worker: Worker) -> None:
        spec = BenchFile.model_validate({"instruments": self.instruments})
        self.bench = Bench.from_spec(spec, Path(self.source))  # constructs; connects on demand
        self.host = socket.gethostname()
        warm_up()

    def teardown(self, worker: Worker) -> None:
        if self.bench is not None:
            for failure in self.bench.safe_state():
                log.warning("site %s: could not put %s in its safe state", self.site, failure)
            for device in self.bench.devices.values():
                try:
                    device.close()
                except Exception as exc:  # closing must never stop the others
                    log.warning("site %s: closing %s: %s", self.site, device.name, exc)

    def session(self, key: str) -> _Session:
        try:
            return self.sessions[key]
        except KeyError:
            raise ClusterError(f"site {self.site!r}: no unit {key!r} here (the worker was restarted since "
                               "the coordinator built it)") from None


def warm_up() -> None:
    """Load the training stack now: torch's optimisers import for seconds on first use, holding
    the GIL (a site's event loop then misses its heartbeats mid-run)."""
    weight = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.Adam([weight], lr=0.01)
    weight.sum().backward()
    opt.step()


def _task(fn):
    """A site task: fn(plugin, *args) on the worker, returning (result, seconds)."""

    @functools.wraps(fn)
    def task(*args):
        try:
            plugin = get_worker().plugins[PLUGIN]
        except (ValueError, KeyError):
            raise ClusterError("this dask worker is not a labpnn site (start sites with labpnn worker)") from None
        start = time.perf_counter()
        result = fn(plugin, *args)
        return result, time.perf_counter() - start

    return task


@_task
def describe(site: SitePlugin) -> dict[str, Any]:
    """Who this site is: name, host, process, and its instruments (simulated or not)."""
    return {"site": site.site, "host": site.host, "pid": os.getpid(), "source": site.source,
            "instruments": {n: {"simulated": bool(d.simulated), "type": type(d).__name__,
                                "injectable": isinstance(d, FaultInjectable)} for n, d in site.bench.devices.items()}}


@_task
def device_call(site: SitePlugin, name: str, method: str, args: tuple, kwargs: dict) -> Any:
    """A Device method (or property) of one of this site's instruments."""
    value = getattr(site.bench[name], method)
    return value(*args, **kwargs) if callable(value) else value


@_task
def open_unit(site: SitePlugin, key: str, index: int, spec: dict, in_features: int, seed: int,
              measure_format: str) -> dict[str, Any]:
    """Build recipe unit `index` on this site's instruments; its model travels back once."""
    from labpnn.recipe import UnitSpec
    from labpnn.units import build_unit

    unit = build_unit(index, UnitSpec.model_validate(spec), site.bench, in_features, seed, measure_format)
    site.sessions[key] = _Session(unit)
    return {"name": unit.name, "in_features": unit.in_features, "out_features": unit.out_features,
            "model": unit.model(), "deployed_shapes": unit.deployed_shapes(),
            "instruments": [d.name for d in unit.instruments()],
            # a unit whose physical stage must be measured to be known never predicts its outputs
            "predicts": unit.expected(np.zeros((0, unit.in_features), np.float32)) is not None}


@_task
def unit_call(site: SitePlugin, key: str, method: str, args: tuple, params: dict | None) -> Any:
    """A Unit method, after loading `params` (the coordinator's model, when it changed)."""
    unit = site.session(key).unit
    if params is not None:
        _load(unit.model(), params)
    return getattr(unit, method)(*args)


@_task
def measure(site: SitePlugin, key: str, h: np.ndarray, params: dict | None, keep: bool,
            predict: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """measure(h), and expected(h) when `predict` (the health check's, in the same call). `keep`:
    the rows are a pass's training split, which the next round trains on: keep them, with
    their prepared inputs when the unit measures from those (`measure_prepared`: a scattering
    unit's optical features, then not measured twice)."""
    session = site.session(key)
    unit = session.unit
    if params is not None:
        _load(unit.model(), params)
    from_prepared = getattr(unit, "measure_prepared", None) if keep else None
    inputs = unit.prepare(h) if from_prepared is not None else None
    out = unit.measure(h) if inputs is None else from_prepared(inputs)
    if keep:
        session.kept[digest(h)] = (h, inputs)
    return out, unit.expected(h) if predict else None


@_task
def load_inputs(site: SitePlugin, key: str, revision: int, objective, x: np.ndarray | Kept,
                targets: dict[str, np.ndarray], h: np.ndarray | Kept | None, settings: dict, seed: int, batch: int,
                params: dict | None) -> int:
    """What the unit trains on in `revision`: its physical stage on its input rows h (None: x
    itself), measured here in batches of `batch` unless kept from the last pass, with the network
    input x and the objective's targets (the labels). Returns the rows."""
    session = site.session(key)
    x, prepared = session.rows(x, "network input")
    if h is not None:
        h, prepared = session.rows(h, "input")
    h = x if h is None else h
    session.kept.clear()
    unit = session.unit
    if params is not None:
        _load(unit.model(), params)
    inputs = prepared if prepared is not None else np.concatenate(
        [unit.prepare(h[a:a + batch]) for a in range(0, len(h), batch)])
    problem = no_signal(inputs, strict=True)
    if problem:
        raise ClusterError(f"site {site.site!r}, unit {unit.name}: its physical stage gives no signal ({problem})")
    settings = PIBSettings.model_validate(settings)
    sample = sampler(x, inputs, targets, settings.batch_size, seed)
    session.optimiser = UnitOptimiser(unit.model(), objective, sample, settings, seed)
    session.revision = revision
    return len(inputs)


@_task
def train(site: SitePlugin, key: str, revision: int, start: int, stop: int, state: bytes | None,
          final: bool) -> dict[str, Any]:
    """Optimisation steps [start, stop) of the unit (after restoring `state` when given): their
    records (step, loss, logged values), the optimiser state after them, and on the last chunk
    the trained parameters."""
    session = site.session(key)
    if session.optimiser is None or session.revision != revision:
        raise ClusterError(f"site {site.site!r}: unit {key!r} has no inputs loaded for revision {revision}")
    opt = session.optimiser
    if state is not None:
        opt.load_state_bytes(state)
    records = [opt.step(s) for s in range(start, stop)]
    return {"records": [(r.step, r.loss, dict(r.values)) for r in records], "state": opt.state_bytes(),
            "params": _params(opt.model) if final else None}


def _params(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def _load(model: torch.nn.Module, params: dict[str, np.ndarray]) -> None:
    model.load_state_dict({k: torch.as_tensor(v) for k, v in params.items()})


# -- labpnn worker ------------------------------------------------------------------------------

def tls(ca_file: str | None = None, cert: str | None = None, key: str | None = None) -> Security:
    """dask's Security for an endpoint: TLS with these PEM files (the CA's, this endpoint's
    certificate and its key; encryption then required), or with none of them dask's
    configuration (distributed.comm.tls.*, require-encryption; DASK_DISTRIBUTED__COMM__TLS__...)."""
    given = {"--tls-ca-file": ca_file, "--tls-cert": cert, "--tls-key": key}
    if not any(given.values()):
        return Security()
    missing = [k for k, v in given.items() if not v]
    if missing:
        raise ConfigError(f"TLS: {', '.join(missing)} missing; give --tls-ca-file, --tls-cert and --tls-key "
                          "together (or none, and dask's configuration)")
    for option, path in given.items():
        if not Path(path).is_file():
            raise ConfigError(f"TLS: {option} {path}: no such file")
    return Security(tls_ca_file=ca_file, tls_client_cert=cert, tls_client_key=key, tls_worker_cert=cert,
                    tls_worker_key=key, tls_scheduler_cert=cert, tls_scheduler_key=key, require_encryption=True)


def serve(scheduler: str, site_path: str | Path, host: str | None = None, security: Security | None = None) -> int:
    """Run one site until interrupted (SIGINT/SIGTERM: instruments to their safe state, then
    leave); `security`: dask's TLS settings (default: its configuration)."""
    path = Path(site_path)
    spec = load_site(path)
    bench = Bench.from_spec(spec, path)  # checks every entry here, before joining the cluster
    del bench
    with dask.config.set(QUIET):
        return asyncio.run(_serve(scheduler, spec, path, host, security or Security()))


async def _serve(scheduler: str, spec: SiteFile, path: Path, host: str | None, security: Security) -> int:
    plugin = SitePlugin(spec.site, {n: e.model_dump() for n, e in spec.instruments.items()}, str(path))
    resources = {resource(n): 1 for n in spec.instruments}
    quiet = logging.getLogger("distributed")
    quiet.setLevel(logging.CRITICAL)  # a failure to join is ours to explain
    try:
        # unreachable: say so now (with dask's TLS settings for tls:// addresses)
        comm = await connect(scheduler, timeout=connect_timeout(), **security.get_connection_args("worker"))
        await comm.close()
    except (OSError, TimeoutError) as exc:
        raise ClusterError(_join_error(scheduler, spec.site, exc)) from None
    worker = Worker(scheduler, name=spec.site, nthreads=1, resources=resources, plugins=(plugin,), host=host,
                    dashboard=False, security=security)
    try:
        await worker
    except Exception as exc:
        await worker.close()
        raise ClusterError(_join_error(scheduler, spec.site, exc)) from None
    quiet.setLevel(logging.WARNING)
    clash = await _claimed_elsewhere(worker, spec)
    if clash:
        await worker.close()
        raise ClusterError(clash)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(worker.close()))
    print(f"labpnn worker: site {spec.site!r} ({', '.join(spec.instruments)}) at {worker.address}, "
          f"scheduler {scheduler}", flush=True)
    await worker.finished()
    return 0


async def _claimed_elsewhere(worker: Worker, spec: SiteFile) -> str:
    """A sentence naming the other worker holding one of this site's instruments, or ''."""
    identity = await worker.scheduler.identity()
    for address, info in identity.get("workers", {}).items():
        if address == worker.address:
            continue
        shared = sorted(n for n in spec.instruments if resource(n) in info.get("resources", {}))
        if shared:
            return (f"site {spec.site!r}: instrument(s) {', '.join(shared)} already held by site "
                    f"{info.get('name')!r} at {address}; an instrument belongs to one site (rename it in one "
                    "of the site files, or stop the other worker)")
    return ""


def _join_error(scheduler: str, site: str, exc: BaseException) -> str:
    while exc.__cause__ is not None and str(exc) == "Worker failed to start.":  # dask's wrapper: the cause says
        exc = exc.__cause__
    text = str(exc) or type(exc).__name__
    if "name taken" in text:
        return (f"site {site!r}: the scheduler at {scheduler} already has a worker named {site!r}; "
                "every site needs its own name (the 'site' key of its site file)")
    return f"site {site!r}: cannot join the dask scheduler at {scheduler} ({text})"


def connect_timeout() -> float:
    from dask.utils import parse_timedelta

    return parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), "s")
