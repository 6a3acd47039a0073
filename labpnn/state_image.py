"""Training state (nested dicts of tensors: a model's and an optimiser's state_dict) as the
bytes of a small HDF5 file: the tensors' bytes in one checksummed dataset, the structure
around them (and where each tensor lies) a JSON attribute. Nothing is pickled, so loading a tampered state can only fail, never run code.

    /          attrs: format = "labpnn-state", version = 1, tree = JSON of the structure,
                      a tensor as {"tensor": [byte offset, NumPy dtype, shape, torch dtype]}
    /tensors   uint8, every tensor's little-endian bytes back to back (Fletcher-32)

Run files before this format hold torch.save archives (zip); `load` still reads them, with
torch.load(weights_only=True), which unpickles only tensors and plain containers.
"""

from __future__ import annotations

import io
import itertools
import json
from typing import Any

import h5py
import numpy as np
import torch

FORMAT = "labpnn-state"
VERSION = 1
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_ZIP_SIGNATURE = b"PK\x03\x04"   # torch.save's archive (older run files)
_names = itertools.count()     # the core driver wants a distinct name per open file


class StateError(ValueError):
    """The bytes are not a training state this labpnn wrote (damaged, or something else)."""


def dump(state: Any) -> bytes:
    """The bytes of an in-memory HDF5 file holding `state`."""
    arrays: list[np.ndarray] = []
    offset = 0

    def tree(obj: Any) -> Any:
        nonlocal offset
        if isinstance(obj, torch.Tensor):
            a = obj.detach().cpu().contiguous().numpy()
            a = a.astype(a.dtype.newbyteorder("<"), copy=False)
            arrays.append(a)
            offset += a.nbytes
            return {"tensor": [offset - a.nbytes, a.dtype.str, list(a.shape),
                               str(obj.dtype).removeprefix("torch.")]}
        if isinstance(obj, dict):
            return {"dict": [[k, tree(v)] for k, v in obj.items()]}
        if isinstance(obj, (list, tuple)):
            return {"tuple" if isinstance(obj, tuple) else "list": [tree(v) for v in obj]}
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        raise TypeError(f"cannot store a {type(obj).__name__} in a training state")

    skeleton = json.dumps(tree(state))
    data = np.empty(offset, dtype=np.uint8)
    at = 0
    for a in arrays:   # each tensor's bytes copied once, into place
        data[at: at + a.nbytes] = a.reshape(-1).view(np.uint8)
        at += a.nbytes
    # the core driver without a backing store: a file in memory, its image taken at the end
    with h5py.File(f"labpnn-state-{next(_names)}", "w", driver="core", backing_store=False,
                   block_size=data.size + 2**16, libver="latest") as f:   # one allocation
        f.attrs["format"] = FORMAT
        f.attrs["version"] = VERSION
        f.attrs["tree"] = skeleton
        f.create_dataset("tensors", data=data, chunks=(max(1, data.size),),
                         fletcher32=True)   # checksummed: damage cannot pass unnoticed
        f.flush()
        return f.id.get_file_image()


def load(raw: bytes) -> Any:
    """The state `dump` wrote (or an older run file's torch.save archive); StateError when
    the bytes are damaged or are something else."""
    if raw.startswith(_ZIP_SIGNATURE):
        try:
            return torch.load(io.BytesIO(raw), weights_only=True)
        except Exception as exc:   # the message advises weights_only=False: never that
            raise StateError(f"a torch archive that does not load as plain tensors "
                             f"({type(exc).__name__}): damaged or tampered with") from None
    if not raw.startswith(_HDF5_SIGNATURE):
        raise StateError(f"not a training state (starts with {raw[:8]!r})")
    try:
        with h5py.File(h5py.h5f.open_file_image(raw)) as f:
            if f.attrs.get("format") != FORMAT or int(f.attrs["version"]) > VERSION:
                raise StateError("an HDF5 image but not a labpnn training state (or a newer one)")
            data = f["tensors"][()].tobytes()
            skeleton = json.loads(f.attrs["tree"])

        def build(node: Any) -> Any:
            if not isinstance(node, dict):
                return node
            (kind, value), = node.items()
            if kind == "tensor":
                start, dtype, shape, torch_dtype = value
                a = np.frombuffer(data, dtype=np.dtype(dtype), offset=int(start),
                                  count=int(np.prod(shape, dtype=np.int64))).reshape(shape)
                return torch.from_numpy(a.copy()).to(getattr(torch, torch_dtype))
            if kind == "dict":
                return {k: build(v) for k, v in value}
            if kind in ("list", "tuple"):
                items = [build(v) for v in value]
                return tuple(items) if kind == "tuple" else items
            raise StateError(f"unknown node {kind!r}")

        return build(skeleton)
    except StateError:
        raise
    except Exception as exc:   # h5py, JSON and the tree walk raise many kinds on damage
        raise StateError(f"damaged ({type(exc).__name__}: {exc})") from None
