"""`mrcnn triton-repo ENGINE`: the Triton model repository for GPU servers. Every config.pbtxt parses as Triton's
ModelConfig (tritonclient's protobuf), and the ensemble's wiring holds: each step reads tensors that exist upstream
with the same data type and dims, maps only its model's inputs and outputs, and the ensemble's outputs are produced
with the dtypes and dims it declares. Loading it needs Triton's TensorRT backend and a GPU: the `tensorrt` test."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from helpers import needs_rtx, needs_tensorrt
from typer.testing import CliRunner

from mrcnn.cli.main import app
from mrcnn.deploy.serving import INPUTS, OUTPUTS

runner = CliRunner()
pb = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="the `serve` extra (tritonclient)")


def parse(path):
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), pb.ModelConfig())


@pytest.fixture(scope="module")
def repo(tiny_onnx, tmp_path_factory):
    """The tiny rtx export built into an engine (batch 1..2) here, and its repository."""
    needs_rtx()
    tmp = tmp_path_factory.mktemp("repo")
    plan = tmp / "tiny-rtx.plan"
    r = runner.invoke(app, ["build", str(tiny_onnx["rtx"]), "-o", str(plan), "--batch", "2"])
    assert r.exit_code == 0, r.stdout + r.stderr
    r = runner.invoke(app, ["triton-repo", str(plan), "-o", str(tmp / "repo"), "--plugins", "/opt/lib/plugins.so"])
    assert r.exit_code == 0, r.stdout + r.stderr
    return tmp / "repo", plan


def test_every_config_is_a_triton_model_config(repo):
    root, plan = repo
    configs = {p.parent.name: parse(p) for p in root.glob("*/config.pbtxt")}
    print({k: (c.platform or c.backend, c.max_batch_size) for k, c in configs.items()})
    assert set(configs) == {"mrcnn", "mrcnn_preprocess", "mrcnn_engine", "mrcnn_postprocess"}
    info = json.loads(plan.with_name(plan.name + ".json").read_text())
    engine = configs["mrcnn_engine"]
    assert engine.platform == "tensorrt_plan" and engine.max_batch_size == info["profile"]["images"]["max"][0] == 2
    assert engine.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU and engine.dynamic_batching
    assert (root / "mrcnn_engine" / "1" / "model.plan").read_bytes() == plan.read_bytes()
    for name in ("mrcnn_preprocess", "mrcnn_postprocess"):
        assert configs[name].backend == "python" and "import" in (root / name / "1" / "model.py").read_text()
    assert "--backend-config=tensorrt,plugins=/opt/lib/plugins.so" not in (root / "README.md").read_text()
    assert "LD_PRELOAD" in (root / "README.md").read_text()


def tensor_table(config) -> tuple[dict, dict]:
    types = pb.DataType.Name
    ins = {t.name: (types(t.data_type), list(t.dims), t.optional) for t in config.input}
    outs = {t.name: (types(t.data_type), list(t.dims)) for t in config.output}
    return ins, outs


def test_the_ensemble_is_wired_and_speaks_the_schema_of_mrcnn_serve(repo):
    root, _ = repo
    configs = {p.parent.name: parse(p) for p in root.glob("*/config.pbtxt")}
    ens = configs["mrcnn"]
    ins, outs = tensor_table(ens)
    assert ens.platform == "ensemble"
    assert [(n, t[2]) for n, t in ins.items()] == [(t.name, t.optional) for t in INPUTS]
    assert list(outs) == [t.name for t in OUTPUTS]
    available = {n: (t[0], t[1]) for n, t in ins.items()}  # tensor -> (dtype, dims), as the steps produce them
    problems = []
    for step in ens.ensemble_scheduling.step:
        m_in, m_out = tensor_table(configs[step.model_name])
        for key, value in step.input_map.items():
            if key not in m_in:
                problems.append(f"{step.model_name}: no input {key}")
            elif value not in available:
                problems.append(f"{step.model_name}.{key} reads {value}, which nothing upstream makes")
            elif available[value] != m_in[key][:2]:
                problems.append(f"{step.model_name}.{key} {m_in[key][:2]} reads {value} {available[value]}")
        missing = [k for k, t in m_in.items() if not t[2] and k not in step.input_map]
        problems += [f"{step.model_name}: required input {k} not mapped" for k in missing]
        for key, value in step.output_map.items():
            if key not in m_out:
                problems.append(f"{step.model_name}: no output {key}")
            else:
                available[value] = m_out[key]
    for name, t in outs.items():
        if available.get(name) != t:
            problems.append(f"ensemble output {name} {t}: made as {available.get(name)}")
    print("\n".join(problems) or "wired")
    assert not problems


def test_a_repository_needs_a_new_folder_and_an_engine(repo, tmp_path):
    root, plan = repo
    r = runner.invoke(app, ["triton-repo", str(plan), "-o", str(root)])
    assert r.exit_code == 1 and "not empty" in r.stderr
    bare = tmp_path / "bare.plan"
    shutil.copy(plan, bare)
    r = runner.invoke(app, ["triton-repo", str(bare), "-o", str(tmp_path / "r")])
    assert r.exit_code == 1 and "no bare.plan.json beside it" in r.stderr


@pytest.mark.tensorrt
def test_tritonserver_serves_the_repository_on_a_gpu(tiny_onnx, synth_data, tmp_path):
    """On a GPU machine with Triton's TensorRT and Python backends: a TensorRT engine of the portable export, its
    repository loads, and a request to the ensemble gets the schema's outputs."""
    needs_tensorrt()
    tritonserver = shutil.which("tritonserver")
    if tritonserver is None:
        pytest.skip("no tritonserver with the TensorRT backend on PATH (NVIDIA's Triton container has one)")
    import socket
    import time
    import urllib.request

    import numpy as np
    import tritonclient.http as http

    plan = tmp_path / "tiny.plan"
    r = runner.invoke(
        app, ["build", str(tiny_onnx["portable"]), "-o", str(plan), "--runtime", "tensorrt", "--batch", "2"]
    )
    assert r.exit_code == 0, r.stdout + r.stderr
    r = runner.invoke(app, ["triton-repo", str(plan), "-o", str(tmp_path / "repo")])
    assert r.exit_code == 0, r.stdout + r.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            tritonserver,
            f"--model-repository={tmp_path / 'repo'}",
            "--http-address=127.0.0.1",
            f"--http-port={port}",
            "--grpc-port=0",
            "--allow-metrics=false",
        ]
    )
    try:
        for _ in range(600):
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        client = http.InferenceServerClient(f"127.0.0.1:{port}")
        image = http.InferInput("image", [1, 1], "BYTES")
        image.set_data_from_numpy(np.array([[next((synth_data / "val2017").glob("*.png")).read_bytes()]], np.object_))
        out = client.infer("mrcnn", [image])
        assert [o.name for o in OUTPUTS if out.as_numpy(o.name) is not None] == [o.name for o in OUTPUTS]
    finally:
        proc.terminate()
        proc.wait(60)
