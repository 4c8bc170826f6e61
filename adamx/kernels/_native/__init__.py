"""The optional compiled kernel: built from the C++ sources here on first use, cached, never required.

adamx ships the C++ source, not a binary. The first fused step on a CPU compiles it with the
machine's C++ compiler for that machine (``-march=native`` is safe: the binary never leaves the
machine it was built on) into a cache folder, keyed by a hash of the source, the flags, the
compiler and jaxlib, and registers it with XLA through ``jax.ffi``. Without a compiler, with an
unsupported jaxlib, or with ``ADAMX_NATIVE=0`` in the environment, `status` says why and adamx
uses the jnp path, which computes the same numbers (docs/design.md, section 8).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
# One library; derived.cc hosts the programs adamx/kernels/_derived.py generates (`program`).
SOURCES = (
    HERE / "split.cc",
    HERE / "derived.cc",
)
HEADERS = (HERE / "fused_common.h", HERE / "elements.h", HERE / "blockwise.h")
SPLIT_TARGET = "adamx_split"  # FlatParams.unflatten(): one buffer into its leaves, in one call
DERIVED_TARGET = "adamx_derived_step"  # a generated program over a group of leaves
REDUCE_TARGET = "adamx_derived_reduce"  # a generated reduction pass over a group of leaves
FLAGS = (
    "-O3",
    "-march=native",
    "-fno-math-errno",  # sqrt vectorises only without errno
    "-ffp-contract=off",  # no fused multiply-add: the jnp path's rounding, bit for bit
    "-fopenmp",
    "-fopenmp-simd",  # `omp simd reduction` in the generated programs (no OpenMP runtime)
    "-shared",
    "-fPIC",
    "-std=c++17",
    "-w",
)


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cache_dir() -> Path:
    root = os.environ.get("ADAMX_CACHE_DIR") or os.environ.get("XDG_CACHE_HOME")
    base = Path(root) if root else Path.home() / ".cache"
    return (base if os.environ.get("ADAMX_CACHE_DIR") else base / "adamx") / "native"


@functools.cache
def _compiler_version(compiler: str) -> list[str]:
    return subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()[:1]


def _build(compiler: str, include: str, name: str = "kernels", text: str | None = None) -> Path:
    """The library built from the sources here (or from the generated source ``text``, which
    includes elements.h alone), cached under a hash of everything that goes into it."""
    import jaxlib

    sources = [f.read_text() for f in SOURCES] if text is None else [text]
    key = hashlib.sha256(
        "\0".join(
            [
                *sources,
                *(f.read_text() for f in HEADERS),
                *FLAGS,
                *_compiler_version(compiler),
                jaxlib.__version__,
                sys.platform,
            ]
        ).encode()
    ).hexdigest()[:16]
    folder = _cache_dir()
    library = folder / f"{name}-{key}.so"
    if library.exists():
        return library
    folder.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: concurrent processes (pytest-xdist) never see half a file.
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        partial = Path(scratch) / library.name
        flags: tuple[str, ...] = FLAGS
        if text is None:
            files = list(map(str, SOURCES))
        else:
            generated = Path(scratch) / f"{name}.cc"
            generated.write_text(text)
            files, flags = [str(generated)], tuple(f for f in FLAGS if f != "-fopenmp")
        result = subprocess.run(
            [compiler, *flags, "-I", include, "-I", str(HERE), *files, "-o", str(partial)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"`{compiler}` failed:\n{result.stderr[-2000:]}")
        os.replace(partial, library)
    return library


@functools.cache
def _load() -> tuple[bool, str]:
    if os.environ.get("ADAMX_NATIVE", "1") == "0":
        return False, "disabled by ADAMX_NATIVE=0"
    try:
        import jax
        import jax.ffi
    except ImportError as error:  # pragma: no cover - jax < 0.4.31
        return False, f"this jax has no `jax.ffi` ({error})"
    compiler = _compiler()
    if compiler is None:
        return False, "no C++ compiler found (set CXX, or install g++ or clang++)"
    try:
        library = _build(compiler, jax.ffi.include_dir())
        handle = ctypes.cdll.LoadLibrary(str(library))
        jax.ffi.register_ffi_target(
            SPLIT_TARGET, jax.ffi.pycapsule(handle.AdamxSplit), platform="cpu"
        )
        jax.ffi.register_ffi_target(
            DERIVED_TARGET, jax.ffi.pycapsule(handle.AdamxDerivedStep), platform="cpu"
        )
        jax.ffi.register_ffi_target(
            REDUCE_TARGET, jax.ffi.pycapsule(handle.AdamxDerivedReduce), platform="cpu"
        )
        _HANDLES.append(handle)
    except Exception as error:  # a failed build must never break training: fall back
        return False, f"the kernel could not be built or loaded: {error}"
    return True, f"built with {compiler} into {library}"


def status() -> tuple[bool, str]:
    """``(available, explanation)`` for the native CPU kernel; builds it on the first call."""
    return _load()


_HANDLES: list = []  # loaded libraries stay loaded: XLA holds pointers into them
_PROGRAMS: set[str] = set()


def program(key: str, source: str) -> str:
    """Register a generated program (adamx/kernels/_derived.py) with the kernel under ``key``:
    ``source`` (a function ``adamx_leaf``, including elements.h alone) is compiled on first use,
    cached on disk by its hash like the kernel, and its address handed to derived.cc. Returns
    ``key``, the ``program`` attribute of a `DERIVED_TARGET` call. Call only after `status` said
    the kernel is available."""
    if key in _PROGRAMS:
        return key
    import jax.ffi

    compiler = _compiler()
    assert compiler is not None and _HANDLES
    library = _build(compiler, jax.ffi.include_dir(), f"derived-{key}", source)
    handle = ctypes.cdll.LoadLibrary(str(library))
    address = ctypes.cast(handle.adamx_leaf, ctypes.c_void_p)
    _HANDLES[0].AdamxRegisterProgram(key.encode(), address)
    _HANDLES.append(handle)
    _PROGRAMS.add(key)
    return key
