"""The repository's own words point at things that exist: every repository path named in the README, docs/,
CONTRIBUTING.md, plugins/README.md and the sources' comments and docstrings, every relative Markdown link, and every
dotted `mrcnn.` name in the docs and docstrings (a module, or an attribute of one)."""

from __future__ import annotations

import importlib
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEXT = (".md", ".py", ".sh", ".cpp", ".h", ".cu", ".cuh", ".txt", ".toml", ".cfg")
# paths a build or a run makes, not the repository: the installed native libraries, the GPU session's output
MADE = ("mrcnn/lib", "benchmarks/results/gpu")
PATH = re.compile(r"(?<![\w./-])((?:mrcnn|export|cli|plugins|tests|benchmarks|docs|scripts|examples|\.ci)/[\w./-]*\w)")
LINK = re.compile(r"\]\(([^)\s]+)\)")
DOTTED = re.compile(r"(?<![\w./-])(mrcnn(?:\.\w+)+)")
# an export's metadata keys (docs/design.md §4; the exporter and the INT8 quantizer write them, and the source
# checkpoint's), not names
METADATA_KEYS = {
    *re.findall(r'"(mrcnn\.\w+)":', (ROOT / "export" / "exporter.py").read_text()),
    *re.findall(r'meta\["(mrcnn\.\w+)"\] =', (ROOT / "export" / "quantize.py").read_text()),  # --int8's own keys
    "mrcnn.source",
}


def tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / f for f in out if f.endswith(TEXT) and not f.startswith("benchmarks/results/")]


def named_paths(text: str) -> set[str]:
    text = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#include"))
    return {m.rstrip(".") for m in PATH.findall(text)}


def test_every_named_repository_path_exists():
    missing = []
    for f in tracked():
        for p in sorted(named_paths(f.read_text(errors="replace"))):
            if not p.startswith(MADE) and not (ROOT / p).exists():
                missing.append(f"{f.relative_to(ROOT)}: {p}")
    print(f"{len(tracked())} files read")
    assert not missing, "\n".join(missing)


def test_every_relative_markdown_link_exists():
    missing = []
    for f in (p for p in tracked() if p.suffix == ".md"):
        for target in LINK.findall(f.read_text()):
            path = target.split("#", 1)[0]
            if not path or re.match(r"[a-z]+:", path):
                continue
            if not (f.parent / path).exists():
                missing.append(f"{f.relative_to(ROOT)}: {target}")
    assert not missing, "\n".join(missing)


def resolves(name: str) -> bool:
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        try:
            for attr in parts[k:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def test_every_dotted_mrcnn_name_resolves():
    pytest.importorskip("onnx", reason="the ONNX extra (mrcnn.export names)")
    names: dict[str, set[str]] = {}
    for f in tracked():
        if f.suffix not in (".md", ".py"):
            continue
        for n in DOTTED.findall(f.read_text(errors="replace")):
            n = n.rstrip(".")
            if n not in METADATA_KEYS and not n.startswith("mrcnn.ops.mrcnn"):
                names.setdefault(n, set()).add(str(f.relative_to(ROOT)))
    bad = [f"{n} ({', '.join(sorted(fs)[:3])})" for n, fs in sorted(names.items()) if not resolves(n)]
    print(f"{len(names)} dotted names")
    assert not bad, "\n".join(bad)
