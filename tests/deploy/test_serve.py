"""`mrcnn serve` on Triton Inference Server (docs/design.md §6, claim 9; docs/serving.md): every response equals
`mrcnn predict` on the same file and artifact; the server batches, survives bad requests and disconnects, keeps its
memory, drains on SIGTERM and leaves nothing behind; its endpoints are Triton's. Servers listen on 127.0.0.1 only,
on ports the OS picks, and every test is bounded in time. The model repositories' configs parse as Triton's
ModelConfig."""

from __future__ import annotations

import io
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from helpers import one_error_line
from PIL import Image
from typer.testing import CliRunner

from mrcnn.cli.main import app
from mrcnn.deploy.predict import predict
from mrcnn.deploy.serving import INPUTS, OUTPUTS, Request, ServedModel

runner = CliRunner()
BOX_TOL, SCORE_TOL, MASK_TOL = 1e-2, 1e-4, 1e-3  # docs/design.md §6 (pixels, score, fraction of mask pixels)


def needs_server() -> None:
    pytest.importorskip("tritonclient.http", reason="the `serve` extra (tritonclient) is not installed")
    from mrcnn.deploy.server import triton_dist
    from mrcnn.errors import MrcnnError

    try:
        triton_dist()
    except MrcnnError as e:
        pytest.skip(str(e))


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


class Server:
    """`mrcnn serve ARTIFACT` as a user starts it (its own process), on free loopback ports read from its startup
    line."""

    def __init__(self, artifact: Path, *args: str, startup_s: float = 240) -> None:
        cmd = [sys.executable, "-m", "mrcnn", "serve", str(artifact), "--http-port", "0", "--grpc-port", "0"]
        cmd += ["--metrics-port", "0", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if not self.ready.wait(startup_s) or self.proc.poll() is not None:
            self.stop()
            raise AssertionError("the server did not start:\n" + "\n".join(self.lines[-30:]))
        line = next(ln for ln in self.lines if ln.startswith("serving model"))
        self.http = re.search(r"HTTP http://([\d.]+:\d+)", line).group(1)
        self.grpc = re.search(r"gRPC ([\d.]+:\d+)", line).group(1)
        self.metrics = re.search(r"metrics (http://\S+/metrics)", line).group(1)

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if line.startswith("serving model"):
                self.ready.set()
        self.ready.set()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> tuple[int, float]:
        t0 = time.perf_counter()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(timeout=5)
        return self.proc.returncode, time.perf_counter() - t0

    def pids(self) -> list[int]:
        """This server's process tree below the CLI (tritonserver and its Python-backend stubs)."""
        out, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            try:
                for task in Path(f"/proc/{pid}/task").iterdir():
                    kids = [int(c) for c in (task / "children").read_text().split()]
                    out += kids
                    todo += kids
            except OSError:
                continue
        return out

    def rss_mb(self) -> float:
        total = 0
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                total += int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
            except (OSError, AttributeError):
                continue
        return total / 1024


def infer(address: str, data: bytes, score: float | None = None, protocol: str = "http"):
    """One request as a client without our package makes it; returns the response's tensors."""
    import tritonclient.grpc as grpc
    import tritonclient.http as http

    module = http if protocol == "http" else grpc
    client = module.InferenceServerClient(address)
    inputs = [module.InferInput("image", [1, 1], "BYTES")]
    inputs[0].set_data_from_numpy(np.array([[data]], dtype=np.object_))
    if score is not None:
        inputs.append(module.InferInput("score_threshold", [1, 1], "FP32"))
        inputs[1].set_data_from_numpy(np.array([[score]], dtype=np.float32))
    try:
        r = client.infer("mrcnn", inputs)
        return {o.name: r.as_numpy(o.name)[0] for o in OUTPUTS}
    finally:
        client.close()


def detections_equal(response: dict, annotations: list[dict], what: str) -> None:
    """A response against predict's predictions.json entries of the same image (score order both)."""
    import pycocotools.mask as mask_util

    n = len(response["scores"])
    assert n == len(annotations), f"{what}: {n} detections served, {len(annotations)} predicted"
    for k, a in enumerate(sorted(annotations, key=lambda a: -a["score"])):
        x0, y0, x1, y1 = response["boxes"][k].tolist()
        d_box = max(abs(u - v) for u, v in zip((x0, y0, x1 - x0, y1 - y0), a["bbox"], strict=True))
        d_score = abs(float(response["scores"][k]) - a["score"])
        rle = json.loads(response["masks"][k])
        mine = mask_util.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        theirs = mask_util.decode({"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"].encode()})
        d_mask = float((mine != theirs).mean())
        assert int(response["labels"][k]) == a["category_id"], (what, k, int(response["labels"][k]), a)
        assert d_box <= BOX_TOL and d_score <= SCORE_TOL and d_mask <= MASK_TOL, (what, k, d_box, d_score, d_mask)


def predicted(artifact: Path, files: list[Path], out: Path, score: float) -> dict[str, list[dict]]:
    """`mrcnn predict --score score` on `files`: each file's annotations."""
    predict(artifact, files, out, score=score, overlays=False, log=lambda m: None, progress=False)
    doc = json.loads((out / "predictions.json").read_text())
    by_id = {im["id"]: im["file_name"] for im in doc["images"]}
    out_map: dict[str, list[dict]] = {str(f): [] for f in files}
    for a in doc["annotations"]:
        out_map[by_id[a["image_id"]]].append(a)
    return out_map


@pytest.fixture(scope="module")
def val_files(synth_data) -> list[Path]:
    return sorted((synth_data / "val2017").glob("*.png"))


# ---- without a server: the model code and the repositories ----------------------------------------------------------
def test_served_model_equals_predict(trained, val_files, tmp_path):
    """The served model's responses (one batch of every val image, one request corrupt) equal predict's."""
    model = ServedModel(trained["ckpt"], device="cpu", score=0.3, log=lambda m: None)
    want = predicted(trained["ckpt"], val_files, tmp_path / "p", 0.3)
    requests = [Request(f.read_bytes()) for f in val_files] + [Request(b"\x89PNG\r\n\x1a\nbroken")]
    got = model.infer(requests)
    print([len(r["scores"][0]) if isinstance(r, dict) else str(r) for r in got])
    assert "not a readable image" in str(got[-1])
    for f, r in zip(val_files, got[:-1], strict=True):
        detections_equal({k: v[0] for k, v in r.items()}, want[str(f)], f.name)
    assert sum(len(v) for v in want.values()) >= 3, "too few detections to compare"


def parse_config(path: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_serve_repository_config_is_triton_model_config(tmp_path):
    pytest.importorskip("tritonclient.grpc", reason="the `serve` extra (tritonclient) is not installed")
    from mrcnn.deploy.triton_repo import serve_repository

    repo = serve_repository(tmp_path, "mrcnn", {"artifact": "/m.pt", "class_names": '["a \\"b\\""]'}, 4, 2000, 2)
    cfg = parse_config(repo / "mrcnn" / "config.pbtxt")
    print(cfg)
    assert (cfg.name, cfg.backend, cfg.max_batch_size) == ("mrcnn", "python", 4)
    assert [(i.name, i.optional) for i in cfg.input] == [(t.name, t.optional) for t in INPUTS]
    assert [o.name for o in cfg.output] == [t.name for t in OUTPUTS]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 2000 and cfg.instance_group[0].count == 2
    assert json.loads(cfg.parameters["class_names"].string_value) == ['a "b"']


# ---- one server for the tests that share it ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(trained):
    needs_server()
    s = Server(
        trained["ckpt"],
        "--max-batch",
        "4",
        "--max-queue-delay-us",
        "20000",
        "--score",
        "0.3",
        "--max-pixels",
        "100000",
        "--device",
        "cpu",
        "--threads",
        "1",
    )
    yield s
    code, took = s.stop()
    print("\n".join(s.lines[-5:]))
    assert code == 0, (code, s.lines[-20:])


def test_every_response_equals_predict_pt(server, trained, val_files, tmp_path):
    want = predicted(trained["ckpt"], val_files, tmp_path / "p", 0.3)
    for protocol, address in (("http", server.http), ("grpc", server.grpc)):
        for f in val_files:
            detections_equal(infer(address, f.read_bytes(), protocol=protocol), want[str(f)], f"{protocol} {f.name}")
    # a request's own threshold: what predict --score 0.6 writes
    want6 = predicted(trained["ckpt"], val_files, tmp_path / "p6", 0.6)
    for f in val_files:
        detections_equal(infer(server.http, f.read_bytes(), score=0.6), want6[str(f)], f"score 0.6 {f.name}")


def test_load_8_clients_50_requests_none_lost_none_wrong_batched(server, trained, val_files, tmp_path):
    """8 concurrent clients x 50 requests: every response equals predict's for its image, none is lost, and
    Triton's statistics show batches larger than 1."""
    import tritonclient.http as http

    from mrcnn.deploy.load import batch_counts

    want = predicted(trained["ckpt"], val_files, tmp_path / "p", 0.3)
    bodies = [(f, f.read_bytes()) for f in val_files]
    admin = http.InferenceServerClient(server.http)
    before = batch_counts(admin, "mrcnn", "http")

    def client(k: int) -> list[str]:
        wrong = []
        for i in range(50):
            f, data = bodies[(k + i) % len(bodies)]
            try:
                detections_equal(infer(server.http, data), want[str(f)], f.name)
            except Exception as e:  # counted, and named in the failure
                wrong.append(f"client {k} request {i}: {type(e).__name__}: {str(e)[:200]}")
        return wrong

    with ThreadPoolExecutor(8) as ex:
        wrong = [w for ws in ex.map(client, range(8)) for w in ws]
    after = batch_counts(admin, "mrcnn", "http")
    batches = {b: after[b] - before.get(b, 0) for b in after if after[b] > before.get(b, 0)}
    served = sum(b * n for b, n in batches.items())
    print(f"batches (size: executions) {batches}; {served} requests executed; wrong {wrong[:3]}")
    assert not wrong, wrong[:5]
    assert served == 400, "requests lost or counted twice"
    assert max(batches) > 1, batches


def test_bad_requests_get_their_error_and_others_succeed(server, val_files):
    good = val_files[0].read_bytes()
    big = png(np.zeros((300, 400, 3), np.uint8))  # 0.12 MP > --max-pixels 100000
    cases = {
        "empty": (b"", "empty"),
        "corrupt": (good[:16] + b"\x00" * 200, "not a readable image"),
        "truncated": (good[: len(good) // 2], "not a readable image"),
        "over the limit": (big, "above the limit"),
        "text": (b"hello, this is not an image at all", "not a readable image"),
        "json": (b'{"image": "x"}', "JSON text"),
    }
    import tritonclient.utils

    def one(item):
        name, (data, expected) = item
        try:
            infer(server.http, data)
            return name, "no error"
        except tritonclient.utils.InferenceServerException as e:
            return name, str(e)

    with ThreadPoolExecutor(4) as ex:  # the bad ones and good ones interleaved, concurrently
        goods = [ex.submit(infer, server.http, good) for _ in range(6)]
        bad = dict(ex.map(one, cases.items()))
        results = [g.result() for g in goods]
    print(json.dumps(bad, indent=1))
    for name, (_, expected) in cases.items():
        assert expected in bad[name], (name, bad[name])
    assert all(len(r["scores"]) == len(results[0]["scores"]) for r in results)
    with pytest.raises(tritonclient.utils.InferenceServerException, match="score_threshold"):
        infer(server.http, good, score=1.5)


def test_a_client_that_disconnects_mid_request_does_not_disturb_the_server(server, val_files):
    host, port = server.http.split(":")
    body = val_files[0].read_bytes()
    for cut in (0.5, 1.0):  # half a request's body, then a whole request whose response is never read
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "image",
                        "shape": [1, 1],
                        "datatype": "BYTES",
                        "parameters": {"binary_data_size": len(body) + 4},
                    }
                ]
            }
        ).encode()
        payload = header + len(body).to_bytes(4, "little") + body
        head = (
            f"POST /v2/models/mrcnn/infer HTTP/1.1\r\nHost: {server.http}\r\nContent-Type: application/octet-stream"
            f"\r\nInference-Header-Content-Length: {len(header)}\r\nContent-Length: {len(payload)}\r\n\r\n"
        ).encode()
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(head + payload[: int(len(payload) * cut)])
        time.sleep(0.5)
    r = infer(server.http, body)
    with urllib.request.urlopen(f"http://{server.http}/v2/health/ready", timeout=5) as ready:
        assert ready.status == 200
    assert len(r["scores"]) >= 0 and r["image_size"].tolist() == list(Image.open(val_files[0]).size[::-1])


def test_endpoints_are_tritons(server, trained):
    from mrcnn.model.checkpoint import load_checkpoint

    names = load_checkpoint(trained["ckpt"])["class_names"]
    get = lambda path: json.loads(urllib.request.urlopen(f"http://{server.http}{path}", timeout=10).read())  # noqa: E731
    assert urllib.request.urlopen(f"http://{server.http}/v2/health/live", timeout=5).status == 200
    meta = get("/v2/models/mrcnn")
    config = get("/v2/models/mrcnn/config")
    print(meta)
    assert [i["name"] for i in meta["inputs"]] == ["image", "score_threshold"]
    assert [o["name"] for o in meta["outputs"]] == [t.name for t in OUTPUTS]
    assert json.loads(config["parameters"]["class_names"]["string_value"]) == names
    metrics = urllib.request.urlopen(server.metrics, timeout=10).read().decode()
    ok = [ln for ln in metrics.splitlines() if ln.startswith("nv_inference_request_success{") and 'model="mrcnn"' in ln]
    print(ok)
    assert ok and float(ok[0].rsplit(" ", 1)[1]) > 0


def test_memory_after_1000_requests_within_10_percent_of_after_100(server, val_files):
    bodies = [f.read_bytes() for f in val_files]

    def send(n: int) -> None:
        with ThreadPoolExecutor(4) as ex:
            list(ex.map(lambda i: infer(server.http, bodies[i % len(bodies)]), range(n)))

    send(100)
    at_100 = server.rss_mb()
    send(900)
    at_1000 = server.rss_mb()
    print(f"resident memory of the server's processes: {at_100:.0f} MB after 100 requests, {at_1000:.0f} MB after 1000")
    assert at_1000 <= 1.1 * at_100


# ---- a server of the trt-flavour export ---------------------------------------------------------------------------
def test_every_response_equals_predict_onnx(trained, val_files, tmp_path):
    needs_server()
    want = predicted(trained["onnx"], val_files, tmp_path / "p", 0.5)
    s = Server(trained["onnx"], "--threads", "1")
    try:
        for f in val_files:
            detections_equal(infer(s.http, f.read_bytes()), want[str(f)], f.name)
    finally:
        code, _ = s.stop()
    assert code == 0, s.lines[-20:]


# ---- start and stop ------------------------------------------------------------------------------------------------
def test_sigterm_drains_the_requests_in_flight_then_exits_0_leaving_nothing(trained, val_files):
    needs_server()
    s = Server(trained["ckpt"], "--max-batch", "8", "--max-queue-delay-us", "1500000", "--threads", "1")
    tree = s.pids()
    shm = Path("/dev/shm")
    prefix = f"mrcnn-serve-{s.proc.pid}-"
    held = [p.name for p in shm.glob(f"{prefix}*")]  # the server's shared memory while it runs
    body = val_files[0].read_bytes()
    with ThreadPoolExecutor(4) as ex:
        inflight = [ex.submit(infer, s.http, body) for _ in range(4)]  # they wait up to 1.5 s to be batched
        time.sleep(0.3)
        code, took = s.stop(signal.SIGTERM, timeout=60)
        results = [f.result(timeout=30) for f in inflight]
    left = [p for p in tree if Path(f"/proc/{p}").exists()]
    ours = [p.name for p in shm.glob(f"{prefix}*")]
    print(
        f"exit {code} after {took:.1f} s; {len(results)} in-flight requests answered; processes left {left}; "
        f"shared memory {held} while serving, {ours} after"
    )
    print("\n".join(s.lines[-4:]))
    assert code == 0 and took <= 10, (code, took)
    assert all("scores" in r for r in results)
    assert held and not left and not ours, "the check saw no shared memory of the server's, or some was left"


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--max-batch", "0"], "--max-batch must be in 1..1024"),
        (["--score", "2"], "--score must be in [0, 1]"),
        (["--http-port", "70000"], "--http-port must be in 0..65535"),
        (["--threads", "100000"], "--threads must be in 0..1024"),
    ],
)
def test_a_bad_option_is_one_error_line_before_the_server_starts(trained, args, expected):
    """(In this process: the command checks everything before it starts a server, so none is started.)"""
    needs_server()
    r = runner.invoke(app, ["serve", str(trained["ckpt"]), *args])
    print(r.stdout, r.stderr)
    assert expected in one_error_line(r) and "starting" not in r.stdout


def test_a_busy_port_or_a_missing_artifact_is_one_error_line(trained, tmp_path):
    needs_server()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = runner.invoke(app, ["serve", str(trained["ckpt"]), "--http-port", str(port)])
    print(r.stderr)
    assert one_error_line(r) == f"error: port {port} (http) is in use on 127.0.0.1; choose another with --http-port"
    r = runner.invoke(app, ["serve", str(tmp_path / "nope.pt")])
    assert one_error_line(r) == f"error: {tmp_path / 'nope.pt'}: no such artifact"


# ---- a converted R-50 on real photographs ---------------------------------------------------------------------------
@pytest.mark.slow
def test_r50_on_real_photographs_equals_predict(r50_photo, tmp_path):
    """torchvision's architecture (tamed random weights) converted (conftest `r50_photo`), served, on scikit-image's
    photographs at 800/1333: each response equals predict's."""
    needs_server()
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image (a test dependency) ships the photos")
    root = Path(skimage_data.__file__).parent
    files = [root / n for n in ("astronaut.png", "coffee.png")]  # 512 x 512 and 600 x 400 px
    want = predicted(r50_photo, files, tmp_path / "p", 0.05)  # (torchvision's threshold: ~100 each)
    s = Server(r50_photo, "--device", "cpu", "--score", "0.05")
    try:
        for f in files:
            detections_equal(infer(s.http, f.read_bytes()), want[str(f)], f.name)
    finally:
        code, _ = s.stop()
    assert code == 0 and sum(len(v) for v in want.values()) >= 20
