"""Native CPU kernels: C sources shipped in ``native/``, compiled once per machine, loaded with ctypes.

Why not a wheel with compiled code: the kernels are built for the CPU they run on
(``-march=native``: AVX512-BF16 where the CPU has it, AVX2 or NEON otherwise;
``$ADAPTERHUB_KERNEL_CFLAGS`` adds flags, e.g. ``-mno-avx512bf16`` to build the portable path), and torch is not
needed to build them (plain C over raw pointers), so the package stays pure Python and installs on
any torch in its range. The first use on a machine compiles the source with the system C compiler
(``$CC``, else ``cc``/``gcc``/``clang``; about a second) into the user cache
(``$XDG_CACHE_HOME/adapterhub/kernels``), keyed by the source (with the shared `native/*.h`), the compiler, its flags and the
CPU's feature flags; later uses load the cached library. A build is written to a temporary file
and renamed into place, so processes building at once never load a half-written library.

OpenMP: the kernels parallelise with ``#pragma omp``, linked against ``libgomp.so.1``, which
resolves to the libgomp torch has already loaded (torch is imported first): one pool of workers,
the engine thread's, as ``compute_threads`` requires. A compiler without OpenMP builds them
single-threaded (logged).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from adapterhub.cache_dir import user_cache_dir

__all__ = ["KernelUnavailable", "load_kernel", "kernel_cache_dir"]

log = logging.getLogger(__name__)

SOURCES = Path(__file__).resolve().parent / "native"
_FLAG_SETS = (
    ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared"],
    ["-O3", "-fopenmp", "-fPIC", "-shared"],
    ["-O3", "-march=native", "-fPIC", "-shared"],
    ["-O3", "-fPIC", "-shared"],
)
_COMPILE_TIMEOUT_S = 120


class KernelUnavailable(RuntimeError):
    """A native kernel that cannot be built here (no C compiler, or every build failed)."""


def kernel_cache_dir() -> Path:
    """Where built kernels are kept: ``$XDG_CACHE_HOME/adapterhub/kernels`` (``~/.cache/...``)."""
    return user_cache_dir("kernels")


def _compiler() -> str:
    for candidate in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)  # type: ignore[return-value]
    raise KernelUnavailable("no C compiler found (set $CC, or install gcc or clang)")


def _cpu_signature() -> str:
    """The CPU's feature flags (``-march=native`` builds for exactly these)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def _compiler_version(cc: str) -> str:
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _build(cc: str, source: Path, flags: list[str], out: Path, errors: list[str]) -> bool:
    """Compile ``source`` into ``out`` (atomically); a failure's first compiler line goes to ``errors``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    try:
        result = subprocess.run([cc, *flags, str(source), "-o", tmp], capture_output=True, text=True,
                                timeout=_COMPILE_TIMEOUT_S)
        if result.returncode != 0:
            log.info("building %s with %s failed: %s", source.name, " ".join(flags), result.stderr.strip()[:2000])
            errors.append(next((line for line in result.stderr.splitlines() if "error" in line), "")[:300])
            return False
        os.replace(tmp, out)
        return True
    except (OSError, subprocess.SubprocessError) as e:
        log.info("building %s failed: %s", source.name, e)
        errors.append(str(e)[:300])
        return False
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.lru_cache(maxsize=None)
def load_kernel(name: str) -> ctypes.CDLL:
    """The compiled library of ``native/<name>.c``, built on first use (see the module doc)."""
    import torch  # noqa: F401  (its libgomp must be the one the kernel binds to)

    source = SOURCES / f"{name}.c"
    cc = _compiler()
    version = _compiler_version(cc)
    # the shared headers are part of every kernel's source
    text = b"\0".join([source.read_bytes(), *(h.read_bytes() for h in sorted(SOURCES.glob("*.h")))])
    extra = os.environ.get("ADAPTERHUB_KERNEL_CFLAGS", "").split()
    errors: list[str] = []
    for base_flags in _FLAG_SETS:
        flags = [*base_flags, *extra]
        key = hashlib.sha256(b"\0".join([text, cc.encode(), version.encode(), " ".join(flags).encode(),
                                         _cpu_signature().encode()])).hexdigest()[:20]
        out = kernel_cache_dir() / f"{name}-{key}.so"
        if not out.is_file() and not _build(cc, source, flags, out, errors):
            continue
        try:
            lib = ctypes.CDLL(str(out))
        except OSError as e:  # a cached file gone bad: build it again, once
            log.info("reloading %s failed (%s); rebuilding", out, e)
            out.unlink(missing_ok=True)
            if not _build(cc, source, flags, out, errors):
                continue
            lib = ctypes.CDLL(str(out))
        if "-fopenmp" not in flags:
            log.warning("native kernel %s built without OpenMP: it runs on one thread", name)
        return lib
    first = next((e for e in errors if e), "no message")
    raise KernelUnavailable(f"the native kernel {name} could not be built with {cc}: {first}")
