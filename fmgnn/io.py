"""Atomic file writes and the record every run leaves beside its outputs.

A reader never sees a half-written file: we write to a hidden temp file in the same
directory and ``os.replace`` it into place, which is atomic on POSIX file systems.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from fmgnn.errors import InputError


def temp_path_beside(path: Path) -> Path:
    """A new empty hidden file in ``path``'s directory, with the permissions of a normal file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_name, 0o666 & ~umask)  # mkstemp makes 0600; the final file should not be private
    return Path(tmp_name)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success move it onto ``path``, on error delete it."""
    path = Path(path)
    tmp = temp_path_beside(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a new temp folder beside ``path``; on success it replaces ``path``, on error it is deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            shutil.rmtree(old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


TRACKED_PACKAGES = (
    "fmgnn", "ray", "torch", "torch-geometric", "transformers", "numpy", "pyarrow",
    "scikit-learn", "pandas", "optuna", "nilearn",
)


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(repo: Path | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo or Path(__file__).parent,
            capture_output=True, text=True, timeout=5, check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None  # not a git checkout, e.g. a Ray job's unpacked working_dir


def environment_record() -> dict[str, Any]:
    """What ran: versions, interpreter, host and time, for ``versions.json`` in every run dir."""
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "argv": sys.argv,
        "git_commit": git_commit(),
        "packages": package_versions(),
    }


RUN_LOCK = ".fmgnn.lock"


@contextlib.contextmanager
def run_folder_lock(folder: Path, job: str) -> Iterator[None]:
    """Hold ``folder`` for one job: a second job on it stops at once with one clear error.

    An OS file lock (``filelock``; released by the OS when the process dies, so a killed job leaves no
    stale lock). Jobs take it once their inputs are checked, right before their first write.
    """
    from filelock import FileLock, Timeout

    from fmgnn.errors import InputError

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / RUN_LOCK, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise InputError(f"{folder}: another {job} job is writing this folder; wait for it to finish or give "
                         "this one another folder") from None
    try:
        yield
    finally:
        lock.release()


PACKAGE_SCHEME = "pkg://"


def package_path(path: str, field: str) -> str:
    """``pkg://<package>/<file>``: a file shipped inside an installed Python package, located without
    importing it (data and models that come as PyPI packages); any other path is returned as given."""
    if not path.startswith(PACKAGE_SCHEME):
        return path
    package, _, name = path[len(PACKAGE_SCHEME):].partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"{field}: {path}: Python package {package!r} is not installed")
    return str(Path(list(spec.submodule_search_locations)[0]) / name)


MANIFEST_FILE = "manifest.json"


def config_hash(config: dict[str, Any]) -> str:
    """A short hash of a run's resolved settings: two runs with the same hash ran the same config."""
    import hashlib

    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def write_manifest(folder: Path, job: str, config: dict[str, Any], inputs: dict[str, Any],
                   outputs: list[str], metrics: str | None, settings: str | None = None) -> None:
    """``folder/manifest.json``: which job made the folder, its config hash, what it read (other runs and
    files, by setting name), what it wrote (paths relative to the folder) and where its metrics are. The
    typed records (``BLEGRun``, ``FIMPRun``, ``SweepRun``...) read it; another job never has to know the
    layout to tell what a folder is or where it came from. ``settings``: the hash of the settings that decide
    the results (the job recipe's rerun rule, ``pipelines.job``)."""
    atomic_write_json(folder / MANIFEST_FILE, {
        "job": job, "config_hash": config_hash(config), "settings_hash": settings,
        "finished": datetime.now(timezone.utc).isoformat(),
        "inputs": {k: str(v) for k, v in inputs.items() if v not in (None, "")}, "outputs": sorted(outputs),
        "metrics": metrics})


def read_manifest(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / MANIFEST_FILE
    return json.loads(path.read_text()) if path.is_file() else None
