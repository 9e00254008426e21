"""Builds kvsync's C extension, kvsync._native; all other metadata is in pyproject.toml.

Every kvsync/csrc/*.c file is compiled into the one module. The sources include xxhash.h (the
xxHash library, BSD-2-Clause, 0.8.x) with XXH_INLINE_ALL, so that header is all they need: there
is no library to link. It is not kept in this repository. The first of these is used:
  1. $KVSYNC_XXHASH_INCLUDE, a directory holding xxhash.h (offline builds, a vetted copy);
  2. the system's /usr/include/xxhash.h or /usr/local/include/xxhash.h (e.g. libxxhash-dev);
  3. the header vendored in the pinned sdist of the PyPI package xxhash, downloaded once and
     checked against its sha256; only xxhash.h and its LICENSE are kept, in build/xxhash-0.8/.
"""

import hashlib
import io
import os
import tarfile
import urllib.request
from glob import glob
from pathlib import Path

from setuptools import Extension, setup

ROOT = Path(__file__).resolve().parent
# xxhash 3.5.0 vendors xxHash 0.8.2. This is PyPI's content-addressed address of
# https://files.pythonhosted.org/packages/source/x/xxhash/xxhash-3.5.0.tar.gz (the address its
# simple index lists): the same file, but unlike the /packages/source/ redirect it is served by
# every mirror and proxy of PyPI. The sha256 pins the content whatever the address.
XXHASH_SDIST_URL = (
    "https://files.pythonhosted.org/packages/00/5e/"
    "d6e5258d69df8b4ed8c83b6664f2b47d30d2dec551a29ad72a6c69eafd31/xxhash-3.5.0.tar.gz"
)
XXHASH_SDIST_SHA256 = "84f2caddf951c9cbf8dc2e22a89d4ccf5d86391ac6418fe81e3c67d0cf60b45f"
# sdist member -> file name in the cache. xxhash.h comes last: its presence marks a complete cache.
XXHASH_MEMBERS = {
    "xxhash-3.5.0/deps/xxhash/LICENSE": "LICENSE",
    "xxhash-3.5.0/deps/xxhash/xxhash.h": "xxhash.h",
}
# Under build/ (git-ignored), so it is not committed, and reused by later builds of this tree.
XXHASH_CACHE = ROOT / "build" / "xxhash-0.8"
SYSTEM_INCLUDE_DIRS = (Path("/usr/include"), Path("/usr/local/include"))


def xxhash_include_dirs() -> list[str]:
    """The include directories that make `#include "xxhash.h"` resolve (see the module doc)."""
    override = os.environ.get("KVSYNC_XXHASH_INCLUDE")
    if override:
        if not (Path(override) / "xxhash.h").is_file():
            raise SystemExit(f"setup.py: KVSYNC_XXHASH_INCLUDE={override} has no xxhash.h")
        return [override]
    if any((directory / "xxhash.h").is_file() for directory in SYSTEM_INCLUDE_DIRS):
        return []  # the compiler searches these by itself
    if not (XXHASH_CACHE / "xxhash.h").is_file():
        download_xxhash_header()
    return [str(XXHASH_CACHE)]


def download_xxhash_header() -> None:
    """Fetches the pinned sdist, checks its sha256 and keeps xxhash.h and its LICENSE."""
    # urllib rather than `pip download`: build isolation may hide pip. urlopen honours
    # https_proxy / no_proxy from the environment, and verifies TLS with the system's CAs.
    try:
        with urllib.request.urlopen(XXHASH_SDIST_URL, timeout=120) as response:
            data = response.read()
    except OSError as error:  # URLError, HTTPError and timeouts are all OSErrors
        raise SystemExit(
            f"setup.py: cannot download xxhash.h from {XXHASH_SDIST_URL}: {error}\n"
            "Offline? Set KVSYNC_XXHASH_INCLUDE to a directory holding xxhash.h (xxHash 0.8.x)."
        ) from error
    digest = hashlib.sha256(data).hexdigest()
    if digest != XXHASH_SDIST_SHA256:
        raise SystemExit(
            f"setup.py: {XXHASH_SDIST_URL} has sha256 {digest}, expected {XXHASH_SDIST_SHA256};"
            " refusing to build with it."
        )
    XXHASH_CACHE.mkdir(parents=True, exist_ok=True)
    # Only the named members are read (no extractall, so no path from the archive is trusted).
    # Each is written under a temporary name and renamed: a concurrent or interrupted build never
    # leaves half a header behind.
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member, name in XXHASH_MEMBERS.items():
            source = tar.extractfile(member)
            if source is None:
                raise SystemExit(f"setup.py: {member} is not a file in the xxhash sdist")
            partial = XXHASH_CACHE / f".{name}.{os.getpid()}"
            partial.write_bytes(source.read())
            partial.replace(XXHASH_CACHE / name)


SOURCES = sorted(glob("kvsync/csrc/*.c"))
if not SOURCES:
    raise SystemExit("setup.py: no C sources in kvsync/csrc/ (run it from the repository root)")

setup(
    ext_modules=[
        Extension(
            "kvsync._native",
            sources=SOURCES,
            # setuptools rebuilds the module when a header it depends on changes.
            depends=sorted(glob("kvsync/csrc/*.h")),
            include_dirs=xxhash_include_dirs(),
            # Warnings are errors: the C is small and new, keep it clean. xxhash.h 0.8.2 compiles
            # without a warning under these flags (gcc 12), so -Werror stays.
            extra_compile_args=["-O3", "-std=c11", "-Wall", "-Wextra", "-Werror"],
        )
    ],
)
