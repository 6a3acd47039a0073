"""Decentralised training: every unit worked on at the site (dask worker) that holds its
instruments; the coordinator (the engine) sends arrays and parameters, never instruments.

* `site`: the site side: the site file, the worker plugin holding the instrument sessions, the
  task functions, and `serve()` behind `labpnn worker`.
* `cluster`: the coordinator side: `Sites` (join or start a cluster, check it, pinned calls with
  their bytes and seconds).
* `remote`: `RemoteDevice`, `RemoteUnit` and `ClusterBench`, what the engine drives.

The scheme that trains every unit at once at its site is labpnn.schemes.parallel.

docs/parallel.md has the set-up on several machines.
"""

from labpnn.sites.cluster import Sites, open_sites, payload_bytes
from labpnn.sites.remote import ClusterBench, RemoteDevice, RemoteUnit
from labpnn.sites.site import SiteFile, load_site, serve

__all__ = ["ClusterBench", "RemoteDevice", "RemoteUnit", "SiteFile", "Sites", "load_site", "open_sites", "payload_bytes", "serve"]
