"""A fake ``gs://`` object store for tests: fsspec's in-memory filesystem under the ``gs`` and
``gcs`` protocols, so epath (and everything built on :mod:`t5x_instruct.runtime.paths`) takes
its real object-store code path, with no network and no ``gcsfs``.

Like a bucket it has no folders to create, no append and no rename: objects are written
whole. Use as a context manager (or :func:`install` / :func:`uninstall` in a fixture).
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

from etils.epath import backend as epath_backend
from fsspec.implementations.memory import MemoryFileSystem

PROTOCOLS = ("gs", "gcs")


class FakeObjectStore(MemoryFileSystem):
    """In-memory objects keyed ``/<bucket>/<name>``; separate from fsspec's ``memory://``."""

    protocol = PROTOCOLS
    root_marker = ""
    store: ClassVar[dict[str, Any]] = {}
    pseudo_dirs: ClassVar[list[str]] = [""]

    @classmethod
    def _strip_protocol(cls, path: Any) -> str:
        path = str(path)
        for prefix in ("gs://", "gcs://"):
            path = path.removeprefix(prefix)
        path = path.strip("/")
        return "/" + path if path else ""

    def mv(self, *args: Any, **kwargs: Any) -> None:
        raise OSError("object stores have no rename (the code under test must not need one)")

    def open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if "a" in mode:
            raise OSError(f"object stores cannot append ({path!r}, mode {mode!r})")
        return super().open(path, mode, **kwargs)


def _registry() -> dict[str, Any]:
    return importlib.import_module("fsspec.registry")._registry


def install() -> None:
    for protocol in PROTOCOLS:
        _registry()[protocol] = FakeObjectStore
    FakeObjectStore.store.clear()
    FakeObjectStore.pseudo_dirs[:] = [""]
    # epath caches one filesystem per protocol name: drop any earlier (real) one.
    epath_backend._FileSystemSpecBackend._get_filesystem.cache_clear()


def uninstall() -> None:
    for protocol in PROTOCOLS:
        _registry().pop(protocol, None)
    FakeObjectStore.store.clear()
    epath_backend._FileSystemSpecBackend._get_filesystem.cache_clear()


def objects() -> dict[str, bytes]:
    """``{'gs://bucket/name': content}`` of every object written."""
    return {f"gs:/{key}": f.getvalue() for key, f in FakeObjectStore.store.items()}


class fake_gcs:  # lower case: used as `with fake_gcs():`
    def __enter__(self) -> fake_gcs:
        install()
        return self

    def __exit__(self, *exc: Any) -> None:
        uninstall()
