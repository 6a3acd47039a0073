"""Dataset loaders: IDX files written here, generated MNIST-1D, bundled digits."""

import gzip
import random

import numpy as np
import pytest

from labpnn import data
from labpnn.errors import DataError

CODES = {np.dtype("u1"): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f8"): 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, CODES[array.dtype], array.ndim])
    return header + b"".join(d.to_bytes(4, "big") for d in array.shape) + array.tobytes()


def write(path, payload: bytes):
    if path.suffix == ".gz":
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def write_split(folder, prefix: str, n: int, seed: int, gz: bool):
    """n 28x28 uint8 images with balanced labels 0..9, as the four-file IDX convention."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    rng.shuffle(labels)
    ext = ".gz" if gz else ""
    folder.mkdir(parents=True, exist_ok=True)
    write(folder / f"{prefix}-images-idx3-ubyte{ext}", idx_bytes(images))
    write(folder / f"{prefix}-labels-idx1-ubyte{ext}", idx_bytes(labels))
    return images, labels


@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
@pytest.mark.parametrize("array", [
    np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
    np.array([-5, 0, 70000], dtype=">i4"),
    np.linspace(-1, 1, 6, dtype=">f8").reshape(3, 2),
])
def test_read_idx_round_trip(tmp_path, name, array):
    out = data.read_idx(write(tmp_path / name, idx_bytes(array)))
    assert out.shape == array.shape and np.array_equal(out, array)
    assert out.dtype.isnative and out.flags.writeable


@pytest.mark.parametrize("mangle, message", [
    (lambda b: b"\x01\x00" + b[2:], "not an IDX file"),
    (lambda b: b[:2] + b"\x07" + b[3:], "not an IDX file"),
    (lambda b: b[:-5], "truncated"),
    (lambda b: b + b"\x00" * 3, "size does not match header"),
    (lambda b: b[:9], "truncated header"),
    (lambda b: b[:2], "too short"),
])
@pytest.mark.parametrize("name", ["bad.idx", "bad.idx.gz"])
def test_read_idx_rejects_malformed_files(tmp_path, mangle, message, name):
    path = write(tmp_path / name, mangle(idx_bytes(np.zeros((4, 3, 3), np.uint8))))
    with pytest.raises(DataError, match=message) as err:
        data.read_idx(path)
    assert name in str(err.value)


def test_read_idx_rejects_corrupt_gzip_and_missing_file(tmp_path):
    good = gzip.compress(idx_bytes(np.zeros((50, 9), np.uint8)))
    (tmp_path / "cut.gz").write_bytes(good[: len(good) // 2])
    (tmp_path / "junk.gz").write_bytes(b"definitely not gzip")
    for name in ("cut.gz", "junk.gz", "absent.gz"):
        with pytest.raises(DataError, match=name):
            data.read_idx(tmp_path / name)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_official_split(tmp_path, gz):
    train_x, train_y = write_split(tmp_path, "train", 50, 0, gz)
    test_x, test_y = write_split(tmp_path, "t10k", 30, 1, gz)
    d = data.load("mnist", path=tmp_path)
    assert d.x_train.shape == (50, 784) and d.x_test.shape == (30, 784)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert np.allclose(d.x_train, train_x.reshape(50, -1) / 255.0)
    assert np.array_equal(d.y_test, test_y) and d.n_classes == 10
    assert 0.0 <= d.x_test.min() and d.x_test.max() <= 1.0
    assert d.meta["split"] == "official" and len(d.meta["files"]) == 4


def test_t10k_only_gives_a_fixed_stratified_split(tmp_path):
    images, labels = write_split(tmp_path, "t10k", 200, 2, gz=True)
    d = data.load("mnist", path=tmp_path, seed=5)
    again = data.load("mnist", path=tmp_path, seed=9)  # the split itself does not use seed
    assert (len(d.y_train), len(d.y_test)) == (160, 40)
    assert np.array_equal(np.bincount(d.y_test), np.full(10, 4))
    assert np.array_equal(d.x_test, again.x_test)
    rows = {r.tobytes() for r in images.reshape(200, -1).astype(np.float32) / 255.0}
    train_rows = {r.tobytes() for r in d.x_train}
    test_rows = {r.tobytes() for r in d.x_test}
    assert train_rows | test_rows == rows and not train_rows & test_rows
    assert "t10k only" in d.meta["split"] and d.meta["folder"].endswith(tmp_path.name)


def test_folder_from_environment_and_dataset_subfolder(tmp_path, monkeypatch):
    write_split(tmp_path / "fashion-mnist", "t10k", 50, 3, gz=False)
    write_split(tmp_path / "mnist", "t10k", 60, 4, gz=False)
    monkeypatch.setenv("LABPNN_DATA", str(tmp_path))
    assert len(data.load("fashion-mnist").y_test) + len(data.load("fashion-mnist").y_train) == 50
    assert len(data.load("mnist").y_test) + len(data.load("mnist").y_train) == 60


def test_missing_files_name_the_folder_and_the_files(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte") as err:
        data.load("mnist", path=tmp_path)
    assert str(tmp_path) in str(err.value)
    monkeypatch.delenv("LABPNN_DATA", raising=False)
    with pytest.raises(DataError, match="LABPNN_DATA"):
        data.load("mnist")
    write_split(tmp_path, "t10k", 20, 0, gz=False)
    write_split(tmp_path, "train", 20, 0, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="train-labels-idx1-ubyte is missing"):
        data.load("mnist", path=tmp_path)


def test_images_and_labels_that_do_not_pair_up(tmp_path):
    write(tmp_path / "t10k-images-idx3-ubyte", idx_bytes(np.zeros((5, 28, 28), np.uint8)))
    write(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(np.zeros(6, np.uint8)))
    with pytest.raises(DataError, match="do not pair up"):
        data.load("mnist", path=tmp_path)


def test_subsampling_is_stratified_and_deterministic(tmp_path):
    write_split(tmp_path, "train", 300, 5, gz=True)
    write_split(tmp_path, "t10k", 100, 6, gz=True)
    a = data.load("mnist", path=tmp_path, n_train=100, n_test=50, seed=1)
    b = data.load("mnist", path=tmp_path, n_train=100, n_test=50, seed=1)
    c = data.load("mnist", path=tmp_path, n_train=100, n_test=50, seed=2)
    assert np.array_equal(np.bincount(a.y_train), np.full(10, 10))
    assert np.array_equal(np.bincount(a.y_test), np.full(10, 5))
    assert np.array_equal(a.x_train, b.x_train) and not np.array_equal(a.x_train, c.x_train)
    assert (a.meta["seed"], a.meta["n_train"], a.meta["n_test"]) == (1, 100, 50)
    with pytest.raises(DataError, match="^n_train: 301 requested, but the mnist train split has 300 samples"):
        data.load("mnist", path=tmp_path, n_train=301)
    with pytest.raises(ValueError, match="^n_test: "):
        data.load("mnist", path=tmp_path, n_test=0)
    with pytest.raises(ValueError, match="^seed: "):
        data.load("mnist", path=tmp_path, seed=-1)


def test_mnist1d_is_generated_deterministically_without_touching_global_rngs():
    np.random.seed(123)
    random.seed(123)
    np_state, py_state = np.random.get_state(), random.getstate()
    d = data.load("mnist1d", n_train=300, n_test=100, seed=0)
    assert np.random.get_state()[1].tolist() == np_state[1].tolist()
    assert random.getstate() == py_state
    assert d.x_train.shape == (300, 40) and d.x_test.shape == (100, 40)
    assert d.x_train.dtype == np.float32 and d.y_test.dtype == np.int64 and d.n_classes == 10
    assert np.abs(np.bincount(d.y_train, minlength=10) - 30).max() <= 1  # proportional
    assert d.meta["source"] == "mnist1d.make_dataset" and d.meta["generation_seed"] == 42
    again = data.load("mnist1d", n_train=300, n_test=100, seed=0)
    assert np.array_equal(d.x_train, again.x_train) and np.array_equal(d.y_test, again.y_test)


def test_digits():
    d = data.load("digits")
    assert (d.x_train.shape, d.x_test.shape) == ((1437, 64), (360, 64))
    assert 0.0 <= d.x_train.min() and d.x_train.max() == 1.0 and d.n_classes == 10
    assert d.meta["source"] == "sklearn.datasets.load_digits"


def test_unknown_name():
    with pytest.raises(ValueError, match="^name: unknown dataset 'cifar'"):
        data.load("cifar")
