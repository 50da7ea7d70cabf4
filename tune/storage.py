"""A local storage path for Ray Tune whose files appear whole or not at all.

Tune keeps the state that ``Tuner.restore`` needs (trial list, search-algorithm state) in a staging
folder and copies it to the storage path every few seconds and whenever a trial finishes, with
``pyarrow.fs.copy_files``. On a local folder that copy writes the final file in place, so a driver
killed mid-copy leaves it truncated; on the rerun Tune's restore fails with ``EOFError`` on that file,
logs it, and carries on with a half-restored controller (seen in CI: a resumed sweep whose best trial
had no configuration at all). Object stores (s3://, gs://) write an object whole, so only local paths
need this: every file is written beside its target and renamed over it on close.
"""

from __future__ import annotations

import glob
import json
import os
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import ray.cloudpickle

from fmgnn.errors import InputError

# Tune's restore reads the newest file of each pattern in the experiment folder.
_STATE_FILES = {"experiment_state-*.json": json.loads, "basic-variant-state-*.json": ray.cloudpickle.loads,
                "searcher-state-*.pkl": ray.cloudpickle.loads, "search_gen_state-*.json": ray.cloudpickle.loads,
                "tuner.pkl": ray.cloudpickle.loads}


class _RenameOnClose:
    """A binary file written under a hidden temporary name and moved to ``path`` when closed: a process
    killed before the close leaves only that hidden file, never a short ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.partial = os.path.join(os.path.dirname(path), f".{uuid.uuid4().hex}.{os.path.basename(path)}.partial")
        self.file = open(self.partial, "wb")
        self.closed = False

    def write(self, data: Any) -> int:
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()

    def tell(self) -> int:
        return self.file.tell()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.file.close()
        os.replace(self.partial, self.path)


class AtomicLocalHandler(pafs.FileSystemHandler):
    """pyarrow's local file system, except that output streams rename over their target on close."""

    def __init__(self) -> None:
        self.local = pafs.LocalFileSystem()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AtomicLocalHandler)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __reduce__(self):  # Ray ships the storage context (and so this handler) to trial actors
        return AtomicLocalHandler, ()

    def get_type_name(self) -> str:
        return "atomic-local"

    def normalize_path(self, path: str) -> str:
        return self.local.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self.local.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self.local.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self.local.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.local.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError("atomic-local: refusing to delete the root folder's contents")

    def delete_file(self, path: str) -> None:
        self.local.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.local.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        with self.local.open_input_stream(src) as source, self.open_output_stream(dest, None) as target:
            while chunk := source.read(1 << 20):
                target.write(chunk)

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return self.local.open_input_stream(path)

    def open_input_file(self, path: str) -> pa.NativeFile:
        return self.local.open_input_file(path)

    def open_output_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        return pa.PythonFile(_RenameOnClose(path), mode="w")

    def open_append_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        return self.local.open_append_stream(path)


def storage_filesystem(storage_path: str) -> pafs.FileSystem | None:
    """The file system for Tune's ``storage_filesystem``: atomic writes on a local path; None (Ray's
    own choice) for a URI."""
    if "://" in storage_path:
        return None
    return pafs.PyFileSystem(AtomicLocalHandler())


def check_restorable(experiment_path: str) -> None:
    """Fail, naming the file, when a saved state that ``Tuner.restore`` reads cannot be read.

    Tune itself logs such a failure and goes on with a half-restored sweep (see the module's docstring).
    A URI is not checked: object stores never hold half an object.
    """
    if "://" in experiment_path:
        return
    for pattern, load in _STATE_FILES.items():
        found = sorted(glob.glob(os.path.join(experiment_path, pattern)))
        if not found:
            continue
        try:
            with open(found[-1], "rb") as f:
                load(f.read())
        except Exception as e:  # noqa: BLE001 - any failure to decode is the same bad file
            raise InputError(f"{found[-1]}: the interrupted sweep's saved state cannot be read "
                             f"({type(e).__name__}: {e}); it was cut by a run killed while writing it. "
                             f"Move {experiment_path} away to start the sweep again.") from e
