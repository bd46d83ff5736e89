"""The one project error type (the CLI prints it as one line and exits 1), and how a line about a bad file reads."""

from __future__ import annotations

from pathlib import Path


class MrcnnError(Exception):
    """A user-facing error (bad input, bad file, bad option). Message is one line, no traceback."""


class UnreadableImage(MrcnnError):
    """An image file that cannot be decoded (truncated, corrupt, not an image): readers that skip bad images catch
    this kind apart from the other refusals (a mode or size the project does not take)."""


def message_line(e: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (at most `limit` characters), or its type's name when it has none."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else type(e).__name__


def first_line(e: BaseException, limit: int = 160) -> str:
    """`Kind: first line of the message` (at most `limit` characters of it), for one error line about a file."""
    text = message_line(e, limit)
    return type(e).__name__ if text == type(e).__name__ else f"{type(e).__name__}: {text}"


def require_file(path: str | Path, missing: str, expected: str, label: str = "") -> Path:
    """`path` as an existing file, else one error line: `{label}{path}: {missing}` when there is nothing there,
    `{label}{path}: is a directory, expected {expected}` for a folder."""
    path = Path(path)
    if not path.exists():
        raise MrcnnError(f"{label}{path}: {missing}")
    if path.is_dir():
        raise MrcnnError(f"{label}{path}: is a directory, expected {expected}")
    return path


_MAGIC = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"BM", "a BMP image"),
    (b"PK\x03\x04", "a zip archive (torch's checkpoint format)"),
    (b"\x80", "a pickle (torch's legacy checkpoint format)"),
)


def file_kind(path: str | Path) -> str | None:
    """What a file's first bytes say it is, in words ("a PNG image", "an ONNX model", "JSON text", "empty"), for
    messages about a file of the wrong type; None when they say nothing known."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return None
    return bytes_kind(head)


def bytes_kind(head: bytes) -> str | None:
    """What data's first bytes say it is (file_kind's words), for data that is not a file (a request's body)."""
    if not head:
        return "empty"
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if len(head) >= 3 and head[0] == 0x08 and 3 <= head[1] <= 15 and head[2] == 0x12:  # ir_version, producer_name
        return "an ONNX model"
    if head.lstrip()[:1] in (b"{", b"["):
        return "JSON text"
    return None


def unreadable(
    path: str | Path, what: str, error: BaseException, expected: str, head: bytes | None = None
) -> MrcnnError:
    """The one error line for a file that failed to read as a `what`: empty, of another kind than `expected` (a word
    of file_kind's answer: "image", "JSON", "torch", "ONNX"), or the reader's own reason. `head`: the data's first
    bytes where `path` only names data that is not a file."""
    kind = file_kind(path) if head is None else bytes_kind(head[:64])
    if kind == "empty":
        return MrcnnError(f"{path}: not a readable {what} (the file is empty)")
    if kind and expected not in kind:
        return MrcnnError(f"{path}: not a {what}: the file is {kind}")
    return MrcnnError(f"{path}: not a readable {what} ({first_line(error)})")
