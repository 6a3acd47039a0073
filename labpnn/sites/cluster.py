"""The coordinator's view of a dask cluster of sites: who holds which instrument, and calls
pinned to the site that holds it, with the bytes and seconds each one costs.

`Sites.connect(scheduler)` joins an existing cluster (`tcp://HOST:PORT`, or `tls://` with dask's
TLS settings); `Sites.embedded(sites)` starts one in this process, one worker process per site.
Either way, everything is checked before training: a unit pinned to an instrument no site holds,
two sites claiming one instrument, a scheduler that cannot be reached, each a ClusterError
naming the unit, the site or the address. A site lost mid-run (its worker gone) makes the call
waiting on it raise ClusterError naming the site.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import dask
import numpy as np
import torch

from labpnn.errors import ClusterError
from labpnn.sites import site as site_tasks
from labpnn.sites.site import QUIET, RESOURCE, SiteFile, SitePlugin, resource

SCATTER_BYTES = 1 << 20  # array arguments above this go straight to the worker (not through the scheduler)
POLL_S = 1.0             # how often a waiting call checks that its site is still there


@dataclass
class Site:
    name: str
    address: str
    host: str
    instruments: dict[str, dict[str, Any]]


@dataclass
class Traffic:
    """What calls to one site (or for one unit) cost: payload bytes each way, seconds at the site."""

    sent: int = 0
    received: int = 0
    busy_s: float = 0.0
    calls: int = 0

    def add(self, sent: int, received: int, busy_s: float) -> None:
        self.sent += sent
        self.received += received
        self.busy_s += busy_s
        self.calls += 1

    def as_dict(self) -> dict[str, Any]:
        return {"bytes_sent": self.sent, "bytes_received": self.received, "busy_s": self.busy_s,
                "calls": self.calls}


@dataclass
class Sites:
    """The labpnn sites of one dask cluster, seen from the coordinator."""

    client: Any
    address: str
    sites: dict[str, Site] = field(default_factory=dict)
    holders: dict[str, str] = field(default_factory=dict)   # instrument -> site name
    cluster: Any = None                                      # the embedded cluster, when we started it
    traffic: dict[str, Traffic] = field(default_factory=lambda: defaultdict(Traffic))
    unit_traffic: dict[int, Traffic] = field(default_factory=lambda: defaultdict(Traffic))

    def __post_init__(self):
        self._lock = threading.Lock()

    # -- joining
    @classmethod
    def connect(cls, scheduler: str, timeout_s: float | None = None, security=None) -> Sites:
        """Join the cluster whose scheduler is at `scheduler`."""
        from distributed import Client

        _quiet()
        try:
            client = Client(scheduler, timeout=timeout_s if timeout_s is not None else _default_timeout(),
                            set_as_default=False, security=security)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ClusterError(f"cannot reach the dask scheduler at {scheduler} ({exc}); is it running "
                               "(dask scheduler), and is the address (and its tcp:// or tls://) right?") from None
        return cls._discover(client, scheduler)

    @classmethod
    def embedded(cls, sites: list[SiteFile], source: str, processes: bool = True) -> Sites:
        """A cluster in this process: a scheduler on 127.0.0.1 and one worker process per site
        (processes False: worker threads in this process, for tests)."""
        from distributed import Client

        cluster = start_cluster(sites, source, processes)
        try:
            client = Client(cluster, set_as_default=False)
            found = cls._discover(client, cluster.scheduler_address)
        except BaseException:
            cluster.close()
            raise
        found.cluster = cluster
        return found

    @classmethod
    def _discover(cls, client, address: str) -> Sites:
        found = cls(client, address)
        try:
            workers = client.scheduler_info(n_workers=-1)["workers"]
            for worker_address, info in sorted(workers.items()):
                held = sorted(r[len(RESOURCE):] for r in info.get("resources", {}) if r.startswith(RESOURCE))
                if not held:
                    continue  # a plain dask worker: no instrument, no labpnn work
                described = found._submit(worker_address, [], site_tasks.describe)
                site = Site(described["site"], worker_address, described["host"], described["instruments"])
                for name in held:
                    other = found.holders.get(name)
                    if other is not None:
                        raise ClusterError(
                            f"instrument {name!r} is claimed by two workers: site {other!r} at "
                            f"{found.sites[other].address} and site {site.name!r} at {worker_address}; an "
                            "instrument belongs to one site (rename it in one site file, or stop one worker)")
                    found.holders[name] = site.name
                found.sites[site.name] = site
        except BaseException:
            client.close()
            raise
        return found

    def check(self, recipe) -> None:
        """Every unit's instruments held, all by one site; before anything trains."""
        for index, spec in enumerate(recipe.units):
            missing = [n for n in spec.instruments if n not in self.holders]
            if missing:
                raise ClusterError(f"recipe unit {index} ({spec.kind}) is pinned to instrument(s) "
                                   f"{', '.join(missing)}, which no site of the cluster at {self.address} "
                                   f"holds; {self.describe()}")
            where = sorted({self.holders[n] for n in spec.instruments})
            if len(where) > 1:
                raise ClusterError(f"recipe unit {index} ({spec.kind}) uses instruments at sites "
                                   f"{', '.join(where)}; a unit's instruments must all be at one site")

    def describe(self) -> str:
        if not self.sites:
            return "no labpnn site has joined it (start them with labpnn worker --scheduler ADDRESS --config SITE.yaml)"
        return "the sites hold: " + "; ".join(f"{s.name} ({s.host}, {s.address}): {', '.join(sorted(s.instruments))}"
                                              for _, s in sorted(self.sites.items()))

    def site_of(self, instruments: list[str]) -> Site:
        return self.sites[self.holders[instruments[0]]]

    # -- calls
    def call(self, instruments: list[str], task, *args, unit: int | None = None) -> Any:
        """task(*args) at the site holding `instruments`, holding their resources; the payload
        bytes and the site's seconds are added to its traffic (and the unit's)."""
        site = self.site_of(instruments)
        return self._submit(site.address, instruments, task, *args, site=site.name, unit=unit)

    def _submit(self, address: str, instruments: list[str], task, *args, site: str | None = None,
                unit: int | None = None) -> Any:
        from distributed import TimeoutError as DaskTimeout

        sent = payload_bytes(args)
        args = tuple(self.client.scatter(a, workers=[address], direct=True, hash=False)
                     if isinstance(a, np.ndarray) and a.nbytes > SCATTER_BYTES else a for a in args)
        who = f"site {site!r} ({address})" if site else f"the worker at {address}"
        try:
            future = self.client.submit(task, *args, workers=[address], allow_other_workers=False, pure=False,
                                        resources={resource(n): 1 for n in instruments} or None)
            while True:
                try:
                    result, seconds = future.result(timeout=POLL_S)
                    break
                except (TimeoutError, DaskTimeout):
                    if not self._present(address):
                        future.cancel()
                        raise ClusterError(f"{who} was lost mid-run: its worker left the cluster at "
                                           f"{self.address}; restart it, then resume the run") from None
        except ClusterError:
            raise
        except OSError as exc:  # the scheduler itself is gone (CommClosedError is one)
            raise ClusterError(f"lost the dask scheduler at {self.address} while waiting for {who}: {exc}") from None
        except Exception as exc:
            if type(exc).__module__.startswith("distributed"):  # KilledWorker, FutureCancelledError, ...
                raise ClusterError(f"{who}: {type(exc).__name__}: {exc}; restart the site, then resume the run") \
                    from None
            raise  # the site's own error (DeviceError, TransportError, ...) as raised there
        received = payload_bytes(result)
        with self._lock:
            if site is not None:
                self.traffic[site].add(sent, received, seconds)
            if unit is not None:
                self.unit_traffic[unit].add(sent, received, seconds)
        return result

    def _present(self, address: str) -> bool:
        """Whether the scheduler still lists the worker (asked twice, a second apart, before saying no)."""
        for attempt in range(2):
            if address in self.client.scheduler_info(n_workers=-1)["workers"]:
                return True
            time.sleep(POLL_S * (attempt == 0))
        return False

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            if self.cluster is not None:
                self.cluster.close()

    def __enter__(self) -> Sites:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_cluster(sites: list[SiteFile], source: str, processes: bool = True, security=None):
    """A dask cluster on 127.0.0.1 with one labpnn site per site file (a worker process each;
    processes False: threads here); plain TCP, or TLS with dask's `security`."""
    from distributed import Nanny, Scheduler, SpecCluster, Worker

    _quiet()
    tls = {"security": security} if security is not None else {}
    workers = {s.site: {"cls": Nanny if processes else Worker, "options": {
        "name": s.site, "nthreads": 1, "host": "127.0.0.1", "dashboard": False, "dashboard_address": ":0",
        "silence_logs": logging.WARNING, "resources": {resource(n): 1 for n in s.instruments},
        "plugins": {SitePlugin(s.site, {n: e.model_dump() for n, e in s.instruments.items()}, source)}, **tls}}
        for s in sites}
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard": False, "dashboard_address": ":0",
                                               **tls, **({"protocol": "tls"} if tls else {})}}
    # the worker processes take the config along; no MALLOC_TRIM_THRESHOLD_ (dask's nanny sets 64 KiB:
    # glibc then maps and unmaps every large buffer, and a PIB step's 256 x 256 blocks cost 6x the page
    # faults, 1.3-1.8x the time)
    with dask.config.set({**QUIET, "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        return SpecCluster(scheduler=scheduler, workers=workers, silence_logs=logging.WARNING,
                           name="labpnn-embedded", **tls)


def payload_bytes(obj: Any) -> int:
    """The array and parameter bytes in obj (arrays, tensors, models, bytes, and containers of them)."""
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, torch.nn.Module):
        return sum(payload_bytes(t) for t in obj.state_dict().values())
    if isinstance(obj, (bytes, bytearray)):
        return len(obj)
    if isinstance(obj, dict):
        return sum(payload_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(payload_bytes(v) for v in obj)
    return 0


def _quiet() -> None:
    logging.getLogger("distributed").setLevel(logging.WARNING)


def _default_timeout() -> float:
    return site_tasks.connect_timeout()


def site_files(bench_path, recipe, layout: dict[str, list[str]] | None) -> list[SiteFile]:
    """The sites of an embedded cluster, cut from one bench file: `layout` names each site's
    instruments; without it, one site per unit's instruments (units sharing one share the site)."""
    from pathlib import Path

    from labpnn.bench import BenchFile, default_path
    from labpnn.config_errors import read_yaml, validate

    path = Path(bench_path) if bench_path is not None else default_path()
    bench = validate(BenchFile, read_yaml(path, "bench file"), f"bench file {path}")
    if layout is None:
        layout = {}
        for spec in recipe.units:
            home = next((s for s, names in layout.items() if set(names) & set(spec.instruments)), None)
            if home is None:
                layout["+".join(spec.instruments)] = list(spec.instruments)
            else:
                layout[home] = list(dict.fromkeys(layout[home] + spec.instruments))
    out = []
    for name, names in layout.items():
        missing = [n for n in names if n not in bench.instruments]
        if missing:
            raise ClusterError(f"site {name!r} of the recipe's scheme.sites holds {', '.join(missing)}, which the "
                               f"bench file {path} lacks; it has: {', '.join(sorted(bench.instruments))}")
        out.append(validate(SiteFile, {"site": name, "instruments": {n: bench.instruments[n].model_dump()
                                                                    for n in names}}, f"scheme.sites.{name}"))
    return out


def open_sites(recipe, *, scheduler: str | None = None, bench_path=None,
               layout: dict[str, list[str]] | None = None, security=None) -> Sites:
    """The checked sites for `recipe`: the cluster at `scheduler` (with dask's `security`, default
    its configuration), or else an embedded one with one worker per site (cut from the bench
    file at bench_path)."""
    if scheduler:
        sites = Sites.connect(scheduler, security=security)
    else:
        from labpnn.bench import default_path

        files = site_files(bench_path, recipe, layout)
        sites = Sites.embedded(files, str(bench_path or default_path()))
    try:
        sites.check(recipe)
    except BaseException:
        sites.close()
        raise
    return sites
