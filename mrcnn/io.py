"""Small helpers every part of mrcnn shares: files written atomically, JSON, checksums, numbered output folders.

    atomic_write(path, write_fn)   a partial file never appears under the final name (temp file + rename)
    write_json(path, obj)          atomically
    file_sha256(path)              which checkpoint an export came from
    next_run_dir(task)             runs/TASK/exp, exp2, ... (as Ultralytics): a command without --out never writes
                                   over an earlier run's files
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from mrcnn.errors import MrcnnError


def atomic_write(path: str | Path, write_fn) -> Path:
    """Call `write_fn(tmp_path)` then rename onto `path`: a partial file never appears under the final name."""
    path = Path(path)
    if path.is_dir():
        raise MrcnnError(f"{path}: is a directory, expected a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def file_sha256(path: str | Path) -> str:
    """The hex SHA-256 of a file (read in 1 MiB blocks): which checkpoint an export came from."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json(path: str | Path, obj) -> Path:
    data = json.dumps(obj)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(data))


ROOT = Path("runs")


def _name(n: int) -> str:
    return "exp" if n == 1 else f"exp{n}"


def next_run_dir(task: str, root: str | Path = ROOT) -> Path:
    """The first free ROOT/TASK/exp{N}."""
    base = Path(root) / task
    n = 1
    while (base / _name(n)).exists():
        n += 1
    return base / _name(n)
