"""`mrcnn bench --server URL`: load on a running server (`mrcnn serve`, or any Triton serving the same schema), as
perf_analyzer would give it: for each protocol (HTTP, gRPC) and each concurrency (clients sending one request after
another, each on its own connection), the latency p50 / p90 / p99, images/s, errors, and the batch sizes Triton
formed (from its statistics, before and after). The images are those `mrcnn bench --data` times, sent as PNG files'
bytes (lossless: the same pixels).
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from PIL import Image

from mrcnn.deploy.bench import bench_images
from mrcnn.errors import MrcnnError, message_line

PROTOCOLS = ("http", "grpc")


def png_bytes(image: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buf, format="PNG")
    return buf.getvalue()


def addresses(url: str, grpc: str | None) -> dict[str, str]:
    """{"http": host:port, "grpc": host:port} from the server's HTTP URL (and its gRPC address: default the HTTP
    port + 1, Triton's convention)."""
    u = urlparse(url if "://" in url else f"http://{url}")
    if u.scheme not in ("http", "") or not u.hostname or u.port is None:
        raise MrcnnError(f"--server must be the server's HTTP address, e.g. http://127.0.0.1:8000, got {url!r}")
    return {"http": f"{u.hostname}:{u.port}", "grpc": grpc or f"{u.hostname}:{u.port + 1}"}


def client_module(protocol: str):
    try:
        if protocol == "http":
            import tritonclient.http as module
        else:
            import tritonclient.grpc as module
    except ImportError:
        raise MrcnnError("mrcnn bench --server needs tritonclient: pip install 'mrcnn[serve]'") from None
    return module


def request(module, data: bytes, score: float | None) -> list:
    """A request of the schema of mrcnn/deploy/serving.py: the image's bytes, and the threshold if given."""
    image = module.InferInput("image", [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[data]], dtype=np.object_))
    inputs = [image]
    if score is not None:
        t = module.InferInput("score_threshold", [1, 1], "FP32")
        t.set_data_from_numpy(np.array([[score]], dtype=np.float32))
        inputs.append(t)
    return inputs


def batch_counts(client, model: str, protocol: str) -> dict[int, int]:
    """{batch size: executions} from Triton's statistics of `model` (gRPC's JSON gives 64-bit counts as strings)."""
    extra = {"as_json": True} if protocol == "grpc" else {}
    stats = client.get_inference_statistics(model, **extra)
    out: dict[int, int] = {}
    for s in stats["model_stats"][0].get("batch_stats", []):
        out[int(s["batch_size"])] = int(s["compute_infer"]["count"])
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def run_clients(
    protocol: str, address: str, model: str, images: list[bytes], clients: int, per_client: int, score, timeout_s
) -> dict:
    module = client_module(protocol)

    def make():
        if protocol == "http":
            return module.InferenceServerClient(address, connection_timeout=timeout_s, network_timeout=timeout_s)
        return module.InferenceServerClient(address)

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    admin = make()
    before = batch_counts(admin, model, protocol)

    def one(k: int) -> None:
        c = make()
        for i in range(per_client):
            data = images[(k * per_client + i) % len(images)]
            t0 = time.perf_counter()
            try:
                extra = {"client_timeout": timeout_s} if protocol == "grpc" else {}
                r = c.infer(model, request(module, data, score), **extra)
                ok = r.as_numpy("scores") is not None and r.as_numpy("boxes") is not None
                dt = time.perf_counter() - t0
                with lock:
                    if ok:
                        latencies.append(dt)
                    else:
                        errors.append("a response without scores or boxes")
            except Exception as e:  # the client's errors are data here: counted and named
                with lock:
                    errors.append(message_line(e, 200))
        c.close()

    threads = [threading.Thread(target=one, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    after = batch_counts(admin, model, protocol)
    admin.close()
    batches = {b: after.get(b, 0) - before.get(b, 0) for b in sorted(after) if after.get(b, 0) > before.get(b, 0)}
    executions = sum(batches.values())
    ms = [x * 1e3 for x in latencies]
    return {
        "protocol": protocol,
        "clients": clients,
        "requests": clients * per_client,
        "ok": len(latencies),
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:3],
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "img_s": len(latencies) / wall if wall > 0 else 0.0,
        "wall_s": wall,
        "batches": batches,
        "mean_batch": sum(b * n for b, n in batches.items()) / executions if executions else 0.0,
    }


def bench_server(
    url: str,
    *,
    grpc: str | None = None,
    model: str = "mrcnn",
    protocols: Sequence[str] = PROTOCOLS,
    clients: Sequence[int] = (1, 2, 4, 8),
    requests: int = 20,
    data: str | Path | None = None,
    size: tuple[int, int] = (480, 640),
    images: int = 8,
    score: float | None = None,
    warmup: int = 2,
    timeout_s: float = 120.0,
    json_out: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """The sweep of the module docstring; returns {"rows": [...], ...}, also written to `json_out`."""
    from mrcnn.io import check_writable_file, write_json

    if json_out:
        check_writable_file(json_out, "--json")
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad or not protocols:
        raise MrcnnError(f"--protocol must be http, grpc or both, got {', '.join(protocols) or 'none'}")
    if not clients or any(c < 1 or c > 256 for c in clients):
        raise MrcnnError(f"--clients must be numbers in 1..256, got {list(clients)}")
    if requests < 1:
        raise MrcnnError(f"--requests must be >= 1, got {requests}")
    addr = addresses(url, grpc)
    bodies = [png_bytes(im) for im in bench_images(data, images, size, log=log)]
    rows = []
    for protocol in protocols:
        module = client_module(protocol)
        try:
            c = module.InferenceServerClient(addr[protocol])
            live = c.is_server_ready() and c.is_model_ready(model)
            c.close()
        except Exception as e:
            raise MrcnnError(f"{protocol} {addr[protocol]}: no server there ({message_line(e, 200)})") from None
        if not live:
            raise MrcnnError(f"{protocol} {addr[protocol]}: the server or its model {model!r} is not ready")
        run_clients(protocol, addr[protocol], model, bodies, 1, warmup, score, timeout_s)  # warm-up, untimed
        for n in clients:
            row = run_clients(protocol, addr[protocol], model, bodies, n, requests, score, timeout_s)
            rows.append(row)
            log(format_row(row))
    report = {
        "server": addr,
        "model": model,
        "images": [list(Image.open(io.BytesIO(b)).size[::-1]) for b in bodies[:3]],
        "requests_per_client": requests,
        "rows": rows,
    }
    if json_out:
        write_json(json_out, report)
    return report


def format_row(r: dict) -> str:
    batches = ", ".join(f"{b}x{n}" for b, n in r["batches"].items()) or "none"
    return (
        f"{r['protocol']:4s} {r['clients']:2d} clients: {r['ok']}/{r['requests']} ok, {r['errors']} errors, "
        f"p50 {r['p50_ms']:.1f} ms, p90 {r['p90_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, {r['img_s']:.2f} img/s; "
        f"batches (size x count) {batches}"
    )
