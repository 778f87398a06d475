"""Result files that are either whole or absent: atomic writes and resumable JSONL chunks.

Every local file is written under a temporary name and renamed into place (``os.replace``
is atomic on POSIX); on an object store one upload is all-or-nothing. So a run killed at any
moment leaves complete files only; a rerun skips what exists and rewrites the rest. Paths
may be local or ``gs://`` (:mod:`t5x_instruct.runtime.paths`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from t5x_instruct.errors import UserInputError
from t5x_instruct.runtime import paths


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    paths.write_text_atomic(paths.resolve(path, what="output file"), text)


def jsonl_text(records: Iterable[Mapping[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def write_jsonl(path: str, records: Iterable[Mapping[str, Any]]) -> None:
    atomic_write_text(path, jsonl_text(records))


def write_json(path: str, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2) + "\n")


class ChunkedJsonl:
    """``<output>.jsonl`` built from chunk files ``<output>.chunks/<index>.jsonl``.

    Chunk ``i`` holds records ``[i * chunk_size, (i + 1) * chunk_size)``. A manifest (what
    produced the chunks: inputs, checkpoint, settings) is written first; a rerun with another
    manifest refuses to mix its records with the old ones. :meth:`finish` concatenates the
    chunks into the output file and deletes them, keeping the manifest, so a rerun of a
    finished job does nothing.
    """

    def __init__(self, output: str, *, num_records: int, chunk_size: int, manifest: dict) -> None:
        self.output = os.fspath(output)
        self.chunk_dir = self.output[: -len(".jsonl")] + ".chunks"
        self.num_records = num_records
        self.chunk_size = chunk_size
        self.manifest = {**manifest, "num_records": num_records, "chunk_size": chunk_size}

    @property
    def num_chunks(self) -> int:
        return -(-self.num_records // self.chunk_size)

    def bounds(self, index: int) -> tuple[int, int]:
        start = index * self.chunk_size
        return start, min(start + self.chunk_size, self.num_records)

    def chunk_path(self, index: int) -> str:
        return os.fspath(paths.join(self.chunk_dir, f"{index:05d}.jsonl"))

    def _manifest_path(self) -> str:
        return os.fspath(paths.join(self.chunk_dir, "manifest.json"))

    def open(self) -> None:
        """Check (or write) the manifest; raise if the folder holds another job's chunks."""
        path = self._manifest_path()
        if paths.exists(path):
            old = json.loads(paths.read_text(path))
            new = json.loads(json.dumps(self.manifest))
            if old != new:
                changed = sorted(k for k in {*old, *new} if old.get(k) != new.get(k))
                raise UserInputError(
                    f"{self.chunk_dir} holds the results of another job (differs in "
                    f"{', '.join(changed)}); delete {self.chunk_dir} and {self.output}, or "
                    "write elsewhere (infer.output_dir)."
                )
        else:
            if paths.exists(self.output):
                raise UserInputError(
                    f"{self.output} exists but was not written by this job; delete it or write "
                    "elsewhere (infer.output_dir)."
                )
            write_json(path, self.manifest)

    def done(self) -> bool:
        return paths.exists(self.output)

    def pending(self) -> list[int]:
        """Chunks not written yet (half-written ones never exist under their final name)."""
        if self.done():
            return []
        written = set(paths.listdir(self.chunk_dir))
        return [
            i for i in range(self.num_chunks) if os.path.basename(self.chunk_path(i)) not in written
        ]

    def write_chunk(self, index: int, records: list[Mapping[str, Any]]) -> None:
        start, end = self.bounds(index)
        if len(records) != end - start:
            raise ValueError(f"chunk {index}: {len(records)} records, expected {end - start}")
        write_jsonl(self.chunk_path(index), records)

    def finish(self) -> None:
        """Concatenate every chunk into the output file (atomically), then drop the chunks."""
        if self.done():
            return
        parts = [paths.read_text(self.chunk_path(i)) for i in range(self.num_chunks)]
        atomic_write_text(self.output, "".join(parts))
        for name in paths.listdir(self.chunk_dir):
            if name != "manifest.json":
                paths.remove_tree(paths.join(self.chunk_dir, name))
