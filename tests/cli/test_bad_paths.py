"""Every CLI command that reads or writes a file, against every bad path a user can hand it: a missing path, a
directory, an empty file, a truncated file, a file of the wrong type and an output that cannot be written. Each is
one `error:` line, exit 1, no traceback, and nothing written anywhere (the test folder is unchanged)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import one_error_line
from typer.testing import CliRunner

from mrcnn.cli.main import app

runner = CliRunner()

CASES = ("missing", "directory", "empty", "truncated", "wrong type", "unwritable output")

# command -> (what it reads, the suffix its input carries, argv from (input, output folder, good files))
COMMANDS = {
    "data check": ("dataset", ".json", lambda i, o, g: ["data", "check", i]),
    "data synth": (None, None, lambda i, o, g: ["data", "synth", f"{o}/synth", "--train", "2", "--val", "1"]),
    "train": (
        "dataset",
        ".json",
        lambda i, o, g: ["train", "--config", "shapes-tiny", "--data", i, "--out", f"{o}/run", "--max-iter", "1"],
    ),
    "train --weights": (
        "checkpoint",
        ".pt",
        lambda i, o, g: [
            "train",
            "--config",
            "shapes-tiny",
            "--data",
            g["data"],
            "--weights",
            i,
            "--out",
            f"{o}/run",
            "--max-iter",
            "1",
        ],
    ),
    "eval": ("checkpoint", ".pt", lambda i, o, g: ["eval", i, "--data", g["data"], "--json", f"{o}/e.json"]),
    "eval --data": (
        "dataset",
        ".json",
        lambda i, o, g: ["eval", g["checkpoint"], "--data", i, "--json", f"{o}/e.json"],
    ),
    "validate": (
        "onnx",
        ".onnx",
        lambda i, o, g: ["validate", i, "--reference", g["checkpoint"], "--data", g["data"], "--json", f"{o}/v.json"],
    ),
    "export": ("checkpoint", ".pt", lambda i, o, g: ["export", i, "-o", f"{o}/m.onnx"]),
    "build": ("onnx", ".onnx", lambda i, o, g: ["build", i, "-o", f"{o}/m.plan"]),
    "bench": (
        "checkpoint",
        ".pt",
        lambda i, o, g: ["bench", i, "--iters", "2", "--warmup", "0", "--json", f"{o}/b.json"],
    ),
    "bench --data": (
        "dataset",
        ".json",
        lambda i, o, g: ["bench", g["checkpoint"], "--data", i, "--iters", "2", "--json", f"{o}/b.json"],
    ),
    "predict": ("image", ".png", lambda i, o, g: ["predict", g["checkpoint"], i, "--out", f"{o}/pred"]),
    "predict artifact": ("checkpoint", ".pt", lambda i, o, g: ["predict", i, g["image"], "--out", f"{o}/pred"]),
    "convert torchvision": ("checkpoint", ".pth", lambda i, o, g: ["convert", "torchvision", i, f"{o}/c.pt"]),
    "config show": ("config", ".json", lambda i, o, g: ["config", "show", i]),
}
WRITES = {
    "data synth",
    "train",
    "train --weights",
    "eval",
    "eval --data",
    "validate",
    "export",
    "build",
    "bench",
    "bench --data",
    "predict",
    "predict artifact",
    "convert torchvision",
}


@pytest.fixture(scope="module")
def good(tiny, tiny_onnx, synth_data, tmp_path_factory) -> dict:
    """A valid file of each kind the commands read."""
    from mrcnn.config import get_config

    folder = tmp_path_factory.mktemp("good")
    config = folder / "config.json"
    config.write_text(get_config("shapes-tiny").to_json(indent=2))
    image = next(iter(sorted((synth_data / "val2017").iterdir())))
    dataset = folder / "dataset.json"  # a dataset file naming the synthetic splits
    dataset.write_text(
        json.dumps(
            {
                "train": {
                    "annotations": str(synth_data / "annotations/instances_train2017.json"),
                    "images": str(synth_data / "train2017"),
                },
                "val": {
                    "annotations": str(synth_data / "annotations/instances_val2017.json"),
                    "images": str(synth_data / "val2017"),
                },
            }
        )
    )
    return {
        "checkpoint": str(tiny["ckpt"]),
        "onnx": str(tiny_onnx["portable"]),
        "data": str(synth_data),
        "dataset": str(dataset),
        "image": str(image),
        "config": str(config),
    }


def _input(case: str, kind: str, suffix: str, folder: Path, good: dict) -> str:
    """The bad input of `case` for a command that reads a `kind` file named *`suffix`."""
    path = folder / f"input{suffix}"
    if case == "missing":
        return str(path)
    if case == "directory":
        path.mkdir()
        return str(path)
    if case == "empty":
        path.write_bytes(b"")
    elif case == "truncated":
        data = Path(good[kind]).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif case == "wrong type":  # a valid file of another kind, under this kind's name
        other = {
            "checkpoint": "image",
            "onnx": "checkpoint",
            "image": "dataset",
            "dataset": "image",
            "config": "image",
        }[kind]
        shutil.copyfile(good[other], path)
    return str(path)


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): (p.stat().st_size if p.is_file() else None) for p in folder.rglob("*")}


# every case that applies: the input cases where the command reads a file, the output case where it writes one
APPLICABLE = [
    (command, case)
    for command in COMMANDS
    for case in CASES
    if (COMMANDS[command][0] is not None if case != "unwritable output" else command in WRITES)
]


@pytest.mark.parametrize("command, case", APPLICABLE)
def test_every_command_refuses_a_bad_path_in_one_line_and_writes_nothing(command, case, good, tmp_path, monkeypatch):
    kind, suffix, argv = COMMANDS[command]
    monkeypatch.chdir(tmp_path)  # a default output (runs/...) would land here, and be seen
    inputs = tmp_path / "in"
    inputs.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    if case == "unwritable output":
        (tmp_path / "a-file").write_text("x")
        out = tmp_path / "a-file"  # below a regular file: nobody can write there, root included (ENOTDIR)
        given = good[kind] if kind else ""
    else:
        given = _input(case, kind, suffix, inputs, good)
    args = argv(given, str(out), good)
    before = _snapshot(tmp_path)
    err = one_error_line(runner.invoke(app, args))
    print(f"{command} x {case}: {err}")
    assert _snapshot(tmp_path) == before, "something was written"
    named = str(out) if case == "unwritable output" else given
    assert Path(named).name in err, f"the message does not name {named}"
