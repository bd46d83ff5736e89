"""The C ABI has one contract: plugins/kernels/include/mrcnn/kernels.h declares it, mrcnn/native/library.py's
SIGNATURES gives ctypes the same types. Parsed and compared here, so a change on one side only fails this test
instead of a call passing the wrong bits."""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

from mrcnn.native.library import SIGNATURES

HEADER = Path(__file__).resolve().parents[2] / "plugins" / "kernels" / "include" / "mrcnn" / "kernels.h"
SCALARS = {
    "int": ctypes.c_int,
    "int64_t": ctypes.c_int64,
    "float": ctypes.c_float,
    "size_t": ctypes.c_size_t,
    "cudaStream_t": ctypes.c_void_p,
    "const char*": ctypes.c_char_p,
    "size_t*": ctypes.POINTER(ctypes.c_size_t),
}


def ctype_of(c_type: str) -> type:
    """The ctypes type that carries a C parameter or return type: data pointers travel as void*."""
    t = re.sub(r"\s*\*\s*", "*", c_type.strip())
    if t in SCALARS:
        return SCALARS[t]
    if t.endswith("*"):
        return ctypes.c_void_p
    raise AssertionError(f"kernels.h: no ctypes type for {c_type!r}")


def header_functions(text: str) -> dict[str, tuple[type, list[type]]]:
    """name -> (restype, argtypes) of every MRCNN_API declaration."""
    text = re.sub(r"//[^\n]*", "", text)
    out = {}
    for ret, name, params in re.findall(r"MRCNN_API\s+([\w\s\*]+?)\s*(\w+)\s*\(([^)]*)\)\s*;", text):
        args = []
        for p in params.split(","):
            p = " ".join(p.split())
            if p in ("", "void"):
                continue
            c_type = re.sub(r"\s*\w+$", "", p)  # drop the parameter's name
            args.append(ctype_of(c_type))
        out[name] = (ctype_of(ret), args)
    return out


def names(types: list[type]) -> list[str]:
    return [t.__name__ for t in types]


def compare(header: dict, table: dict) -> list[str]:
    problems = [f"{n}: in kernels.h, not in SIGNATURES" for n in sorted(set(header) - set(table))]
    problems += [f"{n}: in SIGNATURES, not in kernels.h" for n in sorted(set(table) - set(header))]
    for n in sorted(set(header) & set(table)):
        (hr, ha), (tr, ta) = header[n], table[n]
        if hr is not tr:
            problems.append(f"{n}: returns {hr.__name__} in kernels.h, {tr.__name__} in SIGNATURES")
        if names(ha) != names(ta):
            problems.append(f"{n}: kernels.h ({', '.join(names(ha))}) vs SIGNATURES ({', '.join(names(ta))})")
    return problems


def test_ctypes_signatures_equal_the_header():
    header = header_functions(HEADER.read_text())
    problems = compare(header, SIGNATURES)
    print(f"{len(header)} functions in kernels.h; {len(SIGNATURES)} in SIGNATURES")
    assert len(header) >= 25 and not problems, "\n".join(problems)


def test_a_changed_argument_type_is_found():
    """The comparison is not blind: one argument's type changed in the header is named."""
    text = HEADER.read_text()
    assert text.count("float iou_threshold") == 2  # mrcnn_box_nms_cpu, mrcnn_box_nms_cuda
    problems = compare(header_functions(text.replace("float iou_threshold", "int64_t iou_threshold", 1)), SIGNATURES)
    print(problems)
    assert len(problems) == 1 and problems[0].startswith("mrcnn_box_nms_cpu: kernels.h ("), problems
