"""Data sets for the experiments: scikit-learn's bundled digits, or the paper's MNIST and CIFAR-10
read from files the user already has (nothing is downloaded).

`load` takes ``None`` (the digits) or a path:

* MNIST as the four IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally gzipped, ``.gz``, and
  with ``.`` or ``-`` before ``idx``), given as the folder that holds them or as any one of them;
* MNIST as one ``.npz`` with ``x_train`` and ``y_train`` (and ``x_test``, ``y_test``), like
  ``keras.datasets.mnist``'s ``mnist.npz``;
* CIFAR-10's binary version: the folder (``cifar-10-batches-bin``) holding ``data_batch_1.bin``
  ... ``data_batch_5.bin`` and ``test_batch.bin`` (any subset of the five training batches), or one
  of those files;
* CIFAR-10's python version: the folder (``cifar-10-batches-py``) holding ``data_batch_1`` ...
  and ``test_batch``. These are pickles; they are read with an unpickler that admits only numpy
  arrays and plain containers, so a file that names any other class or function is refused rather
  than run.

Every loader returns a `Data` with the images flattened to ``(n, height * width * channels)``
float32 rows (channels last), standardised per feature with the training set's mean and standard
deviation, and int32 labels ``0..9``. A file that is not what its name promises raises
`DataFormatError`, a sentence saying what was expected, what was found and what to do.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Data",
    "DataFormatError",
    "load",
    "load_cifar10",
    "load_digits",
    "load_mnist",
]

NUM_CLASSES = 10
#: The digits' split: a fixed permutation, 20% held out.
TEST_FRACTION = 0.2
SPLIT_SEED = 0

_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_MNIST_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
_CIFAR_RECORD = 1 + 32 * 32 * 3
_DOWNLOAD_HINT = {
    "mnist": "MNIST's four IDX files (http://yann.lecun.com/exdb/mnist/, or any mirror) or keras' "
    "mnist.npz",
    "cifar10": "CIFAR-10's 'binary version' (cifar-10-binary.tar.gz from "
    "https://www.cs.toronto.edu/~kriz/cifar.html, extracted) or its 'python version'",
}


class DataFormatError(ValueError):
    """A data file is not in the format its name or folder promises."""


@dataclasses.dataclass(frozen=True)
class Data:
    """A classification data set, flattened and standardised.

    Attributes:
      x_train, x_test: ``(n, height * width * channels)`` float32, channels last.
      y_train, y_test: ``(n,)`` int32 labels in ``0..9``.
      shape: ``(height, width, channels)`` of one image.
      name: what was loaded, for tables and plots (``"digits"``, ``"MNIST"``, ``"CIFAR-10"``).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    shape: tuple[int, int, int] = (8, 8, 1)
    name: str = "digits"

    @property
    def features(self) -> int:
        return int(np.prod(self.shape))


def _standardise(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    shape: tuple[int, int, int],
    name: str,
    train_size: int | None = None,
) -> Data:
    x_train = x_train.reshape(len(x_train), -1).astype(np.float32)
    x_test = x_test.reshape(len(x_test), -1).astype(np.float32)
    if train_size is not None:
        if train_size < 1:
            raise ValueError(f"train_size must be >= 1, got {train_size}.")
        keep = np.random.default_rng(SPLIT_SEED).permutation(len(x_train))[:train_size]
        x_train, y_train = x_train[np.sort(keep)], y_train[np.sort(keep)]
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std = np.where(std > 0, std, np.float32(1.0)).astype(np.float32)
    return Data(
        ((x_train - mean) / std).astype(np.float32),
        np.asarray(y_train, np.int32),
        ((x_test - mean) / std).astype(np.float32),
        np.asarray(y_test, np.int32),
        shape,
        name,
    )


def load_digits(train_size: int | None = None) -> Data:
    """scikit-learn's bundled 8x8 digits (1797 images), split 80/20 by a fixed permutation."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    x = digits.data.astype(np.float32)
    y = digits.target.astype(np.int32)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    n_test = int(round(TEST_FRACTION * len(x)))
    test, train = order[:n_test], order[n_test:]
    return _standardise(x[train], y[train], x[test], y[test], (8, 8, 1), "digits", train_size)


# ----------------------------------------------------------------------------------------------
# MNIST


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip's magic, whatever the file is called
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise DataFormatError(
                f"{path}: expected a complete gzip file (it starts like one), but decompressing it "
                f"failed ({error}); the download was probably cut short: fetch it again."
            ) from None
    return raw


def read_idx(path: str | Path) -> np.ndarray:
    """One IDX file (MNIST's format), gzipped or not, as a numpy array of its shape and dtype."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise DataFormatError(
            f"{path}: expected an IDX file, which starts with the bytes 00 00, a type code "
            f"(08 for unsigned bytes) and the number of dimensions, but it starts with "
            f"{raw[:4].hex(' ') or 'nothing (the file is empty)'}; pass MNIST's original "
            "files (e.g. train-images-idx3-ubyte[.gz]) or keras' mnist.npz."
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFormatError(
            f"{path}: expected a {header}-byte IDX header for {ndim} dimensions, but the file has "
            f"only {len(raw)} bytes; it is truncated: fetch it again."
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise DataFormatError(
            f"{path}: expected {expected} bytes for an IDX array of shape {dims} "
            f"({dtype.name}), but the file has {len(raw)}; it is truncated or not an IDX file: "
            "fetch it again."
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find_mnist_file(folder: Path, split: str, kind: str) -> Path:
    stem = _MNIST_FILES[split, kind]
    # Accept the canonical names and the common variants (train-images.idx3-ubyte, ...gz).
    pattern = re.compile(re.escape(stem).replace(r"\-idx", "[.-]idx") + r"(\.gz)?$")
    found = sorted(p for p in folder.iterdir() if pattern.fullmatch(p.name))
    if not found:
        raise DataFormatError(
            f"{folder}: expected MNIST's IDX file {stem} (or {stem}.gz) in this folder, but it is "
            f"not there (found: {sorted(p.name for p in folder.iterdir())[:8]}); put the four "
            "IDX files of MNIST in one folder and pass that folder."
        )
    return found[0]


def _check_images_labels(
    where: str, split: str, x: np.ndarray, y: np.ndarray, image_ndim: tuple[int, ...]
) -> None:
    if x.ndim not in image_ndim or len(x) == 0:
        raise DataFormatError(
            f"{where}: expected {split} images of shape (n, height, width) or (n, height, width, "
            f"channels), but got shape {x.shape}; pass MNIST's image files or arrays."
        )
    if y.ndim != 1 or len(y) != len(x):
        raise DataFormatError(
            f"{where}: expected one label per {split} image ({len(x)}), but the labels have shape "
            f"{y.shape}; the images and labels must come from the same split."
        )
    if len(y) and (y.min() < 0 or y.max() >= NUM_CLASSES):
        raise DataFormatError(
            f"{where}: expected {split} labels in 0..9, but found {int(y.min())}..{int(y.max())}."
        )


def load_mnist(path: str | Path, train_size: int | None = None) -> Data:
    """MNIST from the four IDX files (a folder, or one of the files) or an ``.npz``.

    An ``.npz`` needs ``x_train`` and ``y_train``; without ``x_test`` and ``y_test`` a fixed 20% of
    the training set is held out.
    """
    path = Path(path)
    if path.suffix == ".npz":
        return _load_mnist_npz(path, train_size)
    folder = path if path.is_dir() else path.parent
    arrays = {}
    for split, kind in _MNIST_FILES:
        arrays[split, kind] = read_idx(_find_mnist_file(folder, split, kind))
    for split in ("train", "test"):
        _check_images_labels(
            str(folder), split, arrays[split, "images"], arrays[split, "labels"], (3,)
        )
    x_train, x_test = arrays["train", "images"], arrays["test", "images"]
    shape = (int(x_train.shape[1]), int(x_train.shape[2]), 1)
    if x_test.shape[1:] != x_train.shape[1:]:
        raise DataFormatError(
            f"{folder}: expected test images of the training images' size {x_train.shape[1:]}, "
            f"but got {x_test.shape[1:]}; the four files must be the same data set."
        )
    return _standardise(
        x_train,
        arrays["train", "labels"],
        x_test,
        arrays["test", "labels"],
        shape,
        "MNIST",
        train_size,
    )


def _load_mnist_npz(path: Path, train_size: int | None) -> Data:
    with path.open("rb") as f:
        start = f.read(4)
    if start != b"PK\x03\x04":
        raise DataFormatError(
            f"{path}: expected a numpy .npz archive (a zip of .npy arrays) like keras' mnist.npz, "
            f"but the file does not start like a zip (its first bytes are "
            f"{start.hex(' ') or 'none: it is empty'}); pass the .npz that np.savez wrote, or "
            "MNIST's IDX files."
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as error:
        # Object arrays are refused (allow_pickle=False): they would run code from the file.
        reason = "it holds object arrays" if "pickle" in str(error) else str(error)
        raise DataFormatError(
            f"{path}: expected a numpy .npz archive of numeric arrays like keras' mnist.npz, but "
            f"numpy could not read it ({reason}); save uint8 or float images and integer labels "
            "with np.savez, or pass MNIST's IDX files."
        ) from None
    missing = [k for k in ("x_train", "y_train") if k not in arrays]
    if missing:
        raise DataFormatError(
            f"{path}: expected arrays x_train and y_train (and optionally x_test, y_test), but the "
            f"archive holds {sorted(arrays)}; save it with "
            "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)."
        )
    x, y = arrays["x_train"], arrays["y_train"].reshape(-1)
    _check_images_labels(str(path), "train", x, y, (3, 4))
    if "x_test" in arrays and "y_test" in arrays:
        x_test, y_test = arrays["x_test"], arrays["y_test"].reshape(-1)
        _check_images_labels(str(path), "test", x_test, y_test, (3, 4))
    else:
        order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
        n_test = max(1, int(round(TEST_FRACTION * len(x))))
        x, y, x_test, y_test = (
            x[order[n_test:]],
            y[order[n_test:]],
            x[order[:n_test]],
            y[order[:n_test]],
        )
    shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]) if x.ndim == 4 else 1)
    return _standardise(x, y, x_test, y_test, shape, "MNIST", train_size)


# ----------------------------------------------------------------------------------------------
# CIFAR-10


def _read_cifar_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = _read_bytes(path)
    if len(raw) == 0 or len(raw) % _CIFAR_RECORD:
        raise DataFormatError(
            f"{path}: expected CIFAR-10 binary records of {_CIFAR_RECORD} bytes each (1 label byte "
            f"and 3072 pixel bytes), but the file has {len(raw)} bytes, not a multiple of "
            f"{_CIFAR_RECORD}; pass the files of CIFAR-10's binary version (cifar-10-batches-bin), "
            "not CIFAR-100's or the python version's."
        )
    records = np.frombuffer(raw, np.uint8).reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0].astype(np.int32)
    if labels.max() >= NUM_CLASSES:
        raise DataFormatError(
            f"{path}: expected CIFAR-10 labels in 0..9 in the first byte of each record, but found "
            f"{int(labels.max())}; this looks like CIFAR-100's binary version (2 label bytes), "
            "which is not supported."
        )
    # Each image is stored channel by channel (1024 red, 1024 green, 1024 blue), row-major.
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Admits numpy arrays (and their dtypes) and pickle's own containers; nothing else."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("builtins", "bytes"),  # `encoding="bytes"` rebuilds python 2 strings with it
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}")


def _read_cifar_py(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _ArraysOnlyUnpickler(io.BytesIO(_read_bytes(path)), encoding="bytes").load()
    except pickle.UnpicklingError as error:
        raise DataFormatError(
            f"{path}: expected a CIFAR-10 python-version batch (a pickled dict of numpy arrays and "
            f"lists), but {error}; only numpy arrays and plain containers are loaded from a pickle. "
            "Use the binary version (data_batch_*.bin) if in doubt."
        ) from None
    except Exception as error:  # a corrupt pickle raises almost anything
        raise DataFormatError(
            f"{path}: expected a CIFAR-10 python-version batch (a pickled dict), but it could not "
            f"be read ({type(error).__name__}: {error}); fetch it again, or use the binary version."
        ) from None
    if not isinstance(batch, dict):
        raise DataFormatError(
            f"{path}: expected a pickled dict with b'data' and b'labels', got a "
            f"{type(batch).__name__}; pass a CIFAR-10 python-version batch file."
        )
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or labels is None:
        raise DataFormatError(
            f"{path}: expected keys 'data' (an array) and 'labels', but found {sorted(batch)}; "
            "pass a CIFAR-10 batch (CIFAR-100's 'fine_labels' are not supported)."
        )
    labels = np.asarray(labels, np.int32).reshape(-1)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataFormatError(
            f"{path}: expected 'data' of shape (n, 3072) and n labels, but got {data.shape} and "
            f"{labels.shape}; pass a CIFAR-10 batch file."
        )
    images = data.astype(np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels


def load_cifar10(path: str | Path, train_size: int | None = None) -> Data:
    """CIFAR-10 from its binary version (``data_batch_*.bin``, ``test_batch.bin``) or its python
    version (``data_batch_*``, ``test_batch``): the folder that holds them or one of the files."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    names = {p.name for p in folder.iterdir()}
    binary = sorted(n for n in names if re.fullmatch(r"data_batch_\d+\.bin(\.gz)?", n))
    python = sorted(n for n in names if re.fullmatch(r"data_batch_\d+", n))
    if binary:
        reader, train_names = _read_cifar_bin, binary
        test_name: str | None = next(
            (n for n in ("test_batch.bin", "test_batch.bin.gz") if n in names), None
        )
    elif python:
        reader, train_names = _read_cifar_py, python
        test_name = "test_batch" if "test_batch" in names else None
    else:
        raise DataFormatError(
            f"{folder}: expected CIFAR-10's data_batch_1.bin ... data_batch_5.bin (binary version) "
            f"or data_batch_1 ... (python version), but found {sorted(names)[:8]}; pass the "
            "extracted cifar-10-batches-bin folder."
        )
    if test_name is None:
        raise DataFormatError(
            f"{folder}: expected CIFAR-10's test batch (test_batch.bin or test_batch) beside the "
            f"training batches, but it is not there; copy it from the same archive."
        )
    parts = [reader(folder / n) for n in train_names]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    x_test, y_test = reader(folder / test_name)
    return _standardise(x_train, y_train, x_test, y_test, (32, 32, 3), "CIFAR-10", train_size)


# ----------------------------------------------------------------------------------------------


def _looks_like_cifar(folder: Path) -> bool:
    return any(
        re.fullmatch(r"(data|test)_batch(_\d+)?(\.bin)?(\.gz)?", p.name) for p in folder.iterdir()
    )


def load(path: str | Path | None = None, train_size: int | None = None) -> Data:
    """The digits (``path=None``), or MNIST or CIFAR-10 from ``path`` (format detected by name).

    Args:
      path: ``None``; an MNIST ``.npz``; a folder (or one file) of MNIST's IDX files; a folder
        (or one file) of CIFAR-10's binary or python version.
      train_size: keep only this many training examples (a fixed random subset), for quick runs.
    """
    if path is None:
        return load_digits(train_size)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"--data {path}: no such file or folder; pass {_DOWNLOAD_HINT['mnist']}, or "
            f"{_DOWNLOAD_HINT['cifar10']}. Nothing is downloaded for you."
        )
    if path.suffix == ".npz":
        return load_mnist(path, train_size)
    folder = path if path.is_dir() else path.parent
    if _looks_like_cifar(folder):
        return load_cifar10(path, train_size)
    if any("idx" in p.name for p in folder.iterdir()):
        return load_mnist(path, train_size)
    raise DataFormatError(
        f"{path}: expected {_DOWNLOAD_HINT['mnist']} (a folder of IDX files or one .npz), or "
        f"{_DOWNLOAD_HINT['cifar10']} (the folder holding data_batch_*.bin), but found "
        f"{sorted(p.name for p in folder.iterdir())[:8]}; pass one of those."
    )
