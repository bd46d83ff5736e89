"""Small helpers every part of mrcnn shares: files written atomically, JSON, checksums, numbered output folders.

atomic_write(path, write_fn)   a partial file never appears under the final name (temp file + rename); the file
                               gets the mode a plain open() would give it; a failure is one error line
write_json(path, obj)          atomically, strict JSON (a non-finite number is null)
check_writable_file / _dir     before the work: can the output be written there? (one error line if not)
file_sha256(path)              which checkpoint an export came from
next_run_dir(task)             runs/TASK/exp, exp2, ... (as Ultralytics): a command without --out never writes
                               over an earlier run's files
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
import tempfile
from pathlib import Path

from mrcnn.errors import MrcnnError


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _new_file_mode(path: Path) -> int:
    """The mode a plain open() would give `path`: an existing file's own, else 0o666 less the umask."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~current_umask()


def atomic_write(path: str | Path, write_fn) -> Path:
    """Call `write_fn(tmp_path)` then rename onto `path`: a partial file never appears under the final name. The file
    gets the mode a plain open() would (mkstemp's temp file is 0600). An OSError (read-only folder, full disk) is one
    MrcnnError naming the file; the temp file is removed."""
    path = Path(path)
    if path.is_dir():
        raise MrcnnError(f"{path}: is a directory, expected a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise MrcnnError(f"{path}: cannot write there ({e.strerror or e})") from None
    try:
        write_fn(tmp)
        os.chmod(tmp, _new_file_mode(path))
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        os_error = _os_error_behind(e)
        if os_error is not None:
            raise MrcnnError(
                f"{path}: could not be written ({os_error.strerror or os_error}); nothing was left there"
            ) from None
        raise
    return path


def _os_error_behind(e: BaseException | None) -> OSError | None:
    """The OSError `e` is or was raised from: a writer that wraps it (torch.save's zip writer raises a RuntimeError
    while a full disk's ENOSPC is its context) still names the machine's reason."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def check_writable_dir(folder: str | Path, what: str = "output folder") -> Path:
    """Before any work: `folder` (made if missing, as its first writable ancestor allows) takes a new file; else one
    MrcnnError naming it. Nothing is left behind."""
    folder = Path(folder)
    probe_in = folder
    while not probe_in.exists():  # the first existing ancestor is where a new folder would be made
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        raise MrcnnError(f"{what} {folder}: cannot write there ({probe_in} is a file, not a folder)")
    try:
        fd, probe = tempfile.mkstemp(prefix=".mrcnn-write-check.", dir=probe_in)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise MrcnnError(f"{what} {folder}: cannot write there ({e.strerror or e})") from None
    return folder


def check_writable_file(path: str | Path, what: str = "output") -> Path:
    """Before any work: a file can be written at `path` (its folder, made if missing, takes new files)."""
    path = Path(path)
    if path.is_dir():
        raise MrcnnError(f"{what} {path}: is a directory, expected a file path")
    check_writable_dir(path.parent, f"{what} {path}: its folder")
    return path


def strict_json(obj):
    """`obj` with every non-finite float as None (what strict JSON readers take: NaN / Infinity are not JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def file_sha256(path: str | Path) -> str:
    """The hex SHA-256 of a file (read in 1 MiB blocks): which checkpoint an export came from."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json(path: str | Path, obj) -> Path:
    data = json.dumps(strict_json(obj), allow_nan=False)
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
