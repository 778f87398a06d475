"""One path abstraction for every file a run reads or writes: local folders or object stores.

``MODEL_DIR``, ``INITIAL_CHECKPOINT_PATH`` and the files under them (checkpoints, metrics,
summaries, configs, eval and infer outputs) may be local paths or ``gs://`` URLs (``s3://``
and ``az://`` for files other than checkpoints). Everything goes through
:func:`resolve`, which returns an ``etils.epath.Path``: its local backend is plain ``os``
calls, its object-store backend is fsspec (``gcsfs`` for ``gs://``, installed by
``pip install 't5x_instruct[gcs]'``).

Why fsspec and not epath's default: with TensorFlow installed, epath sends ``gs://`` through
``tf.io.gfile``, which would import TensorFlow into the core (checkpoints, metrics, serving).
Importing this module sets ``EPATH_USE_TF=false`` unless the environment already chose.
Orbax reads the same setting, since it also goes through epath; its array data goes through
TensorStore's own ``gs://`` driver.

A string with any other ``scheme://`` is refused with one error, instead of silently becoming
a local folder named ``memory:``.
"""

from __future__ import annotations

import os
import re
import uuid
from typing import Any

from etils import epath

from t5x_instruct.errors import UserInputError

# Read by epath at the first object-store access (not at import), so this is early enough.
os.environ.setdefault("EPATH_USE_TF", "false")

PathLike = str | os.PathLike[str]

# Schemes epath serves through fsspec, and the fsspec package each one needs.
OBJECT_STORES = {"gs": "gcsfs", "s3": "s3fs", "az": "adlfs"}
# Orbax writes arrays with TensorStore, whose drivers know local paths and gs:// only.
CHECKPOINT_SCHEMES = ("gs",)

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def scheme(path: PathLike) -> str | None:
    """``'gs'`` for ``gs://b/x``, ``None`` for a local path (``file://`` counts as local)."""
    match = _SCHEME.match(os.fspath(path))
    if match is None or match.group(1).lower() == "file":
        return None
    return match.group(1).lower()


def is_local(path: PathLike) -> bool:
    return scheme(path) is None


def resolve(path: PathLike, *, what: str = "path", for_checkpoints: bool = False) -> epath.Path:
    """``path`` as an ``epath.Path``: local paths made absolute, object-store URLs kept.

    Args:
      path: a local path, ``file://...`` or an object-store URL.
      what: how the user named it (``'MODEL_DIR'``, ``'train.initial_checkpoint_path'``),
        for the error message.
      for_checkpoints: also require a scheme that orbax checkpoints can live on.

    Raises:
      UserInputError: an unknown scheme, or one checkpoints cannot use.
    """
    text = os.fspath(path)
    found = scheme(text)
    if found is None:
        text = text[len("file://") :] if text.lower().startswith("file://") else text
        return epath.Path(os.path.abspath(os.path.expanduser(text)))
    allowed = CHECKPOINT_SCHEMES if for_checkpoints else tuple(OBJECT_STORES)
    if found not in allowed:
        kinds = ", ".join(f"{s}://" for s in allowed)
        raise UserInputError(
            f"{what}={text!r}: unsupported scheme '{found}://'; use a local path or {kinds}"
            + (" (checkpoints are written by orbax/TensorStore)" if for_checkpoints else "")
            + "."
        )
    _check_backend(found, text, what)
    return epath.Path(text)


def _check_backend(found: str, text: str, what: str) -> None:
    """One clear error when the fsspec filesystem for ``found`` is not installed."""
    import fsspec

    protocol = "gcs" if found == "gs" else found
    try:
        fsspec.get_filesystem_class(protocol)
    except (ImportError, ValueError) as exc:
        package = OBJECT_STORES[found]
        raise UserInputError(
            f"{what}={text!r} needs the {package!r} package for {found}:// paths: "
            f"pip install {package} (for gs://: pip install 't5x_instruct[gcs]')."
        ) from exc


def join(base: PathLike, *parts: str) -> epath.Path:
    """``base / parts`` without re-validating ``base`` (already resolved)."""
    out = base if isinstance(base, epath.Path) else epath.Path(os.fspath(base))
    for part in parts:
        out = out / part
    return out


def makedirs(path: PathLike) -> epath.Path:
    """Create a folder and its parents; on object stores folders are implicit (a no-op)."""
    path = epath.Path(os.fspath(path))
    if is_local(path):
        path.mkdir(parents=True, exist_ok=True)
    return path


def is_dir(path: PathLike) -> bool:
    return epath.Path(os.fspath(path)).is_dir()


def exists(path: PathLike) -> bool:
    return epath.Path(os.fspath(path)).exists()


def listdir(path: PathLike) -> list[str]:
    """Names in a folder (``[]`` when it does not exist)."""
    path = epath.Path(os.fspath(path))
    if not path.is_dir():
        return []
    return sorted(child.name for child in path.iterdir())


def read_text(path: PathLike) -> str:
    return epath.Path(os.fspath(path)).read_text(encoding="utf-8")


def write_text_atomic(path: PathLike, text: str) -> None:
    """Write ``text`` so that readers see the old file or the new one, never a part.

    Locally: a temporary file renamed into place (atomic on POSIX). On object stores one
    upload is already all-or-nothing, so the object is written directly.
    """
    path = epath.Path(os.fspath(path))
    makedirs(path.parent)
    if not is_local(path):
        path.write_text(text, encoding="utf-8")
        return
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    with open(os.fspath(tmp), "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(os.fspath(tmp), os.fspath(path))


def remove_tree(path: PathLike) -> None:
    """Delete a file or a folder with its contents (missing is fine)."""
    path = epath.Path(os.fspath(path))
    if path.is_dir():
        path.rmtree()
    elif path.exists():
        path.unlink()


class ObjectWriter:
    """A file-like sink for an object store, which cannot append: every ``flush`` rewrites the
    whole object from the bytes written so far (so readers see a complete prefix)."""

    def __init__(self, path: PathLike) -> None:
        self.path = epath.Path(os.fspath(path))
        self._buffer = bytearray()

    def write(self, data: bytes) -> None:
        self._buffer.extend(data)

    def flush(self) -> None:
        self.path.write_bytes(bytes(self._buffer))

    def close(self) -> None:
        self.flush()


class _TensorBoardObjectStore:
    """tensorboardX writer factory: event files on object stores through this module."""

    def open(self, path: str) -> Any:
        return ObjectWriter(path)

    def directory_check(self, path: str) -> None:
        del path  # object stores have no folders to create


def register_tensorboard_writers() -> None:
    """Route tensorboardX event files for object-store URLs through epath/fsspec (instead of
    its own google-cloud-storage client)."""
    from tensorboardX import record_writer

    for name in OBJECT_STORES:
        record_writer.register_writer_factory(name, _TensorBoardObjectStore())
