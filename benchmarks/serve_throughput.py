"""The server's overhead: `mrcnn serve ARTIFACT` under the concurrency sweep of `mrcnn bench --server` (1, 2, 4, 8
clients, HTTP and gRPC) against `mrcnn bench ARTIFACT` offline on the same images, same threads, same batch (the
server's --max-batch), measured in one run: offline, then the server, then offline again (the offline img/s is the
mean of the two, so a drift of the host's speed is split). Goal: at 4 clients the server's img/s >= 0.9x offline
(overhead <= 10%).

    python benchmarks/serve_throughput.py --artifact mrcnn-demo/run/model_final.pt --data mrcnn-demo/data
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import commit, machine, save

from mrcnn.deploy.bench import bench_artifacts
from mrcnn.deploy.load import bench_server


def start_server(
    artifact: Path, batch: int, delay_us: int, threads: int, device: str
) -> tuple[subprocess.Popen, str, str]:
    """`mrcnn serve` on free ports; (the process, its HTTP URL, its gRPC address) from its startup line."""
    cmd = [
        sys.executable,
        "-m",
        "mrcnn",
        "serve",
        str(artifact),
        "--http-port",
        "0",
        "--grpc-port",
        "0",
        "--metrics-port",
        "0",
        "--max-batch",
        str(batch),
        "--max-queue-delay-us",
        str(delay_us),
        "--threads",
        str(threads),
        "--device",
        device,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url: list[tuple[str, str]] = []
    seen: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            seen.append(line.rstrip())
            m = re.search(r"HTTP (http://\S+), gRPC (\S+),", line)
            if m:
                url.append((m.group(1), m.group(2)))

    threading.Thread(target=read, daemon=True).start()
    for _ in range(1200):
        if url or proc.poll() is not None:
            break
        time.sleep(0.25)
    if not url:
        proc.kill()
        raise SystemExit("the server did not start:\n" + "\n".join(seen[-20:]))
    return proc, *url[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifact", type=Path, default=Path("mrcnn-demo/run/model_final.pt"))
    ap.add_argument("--data", type=Path, default=Path("mrcnn-demo/data"))
    ap.add_argument("--batch", type=int, default=4, help="the server's --max-batch and the offline batch")
    ap.add_argument("--delay-us", type=int, default=2000, help="the server's --max-queue-delay-us")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads of the predictor, offline and served")
    ap.add_argument("--requests", type=int, default=40, help="requests per client")
    ap.add_argument("--iters", type=int, default=30, help="offline calls (of --batch images) per half")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (offline and served alike)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-save", action="store_true")
    a = ap.parse_args()
    quiet = lambda m: None  # noqa: E731

    def offline() -> dict:
        r = bench_artifacts(
            [a.artifact],
            batch=a.batch,
            data=a.data,
            iters=a.iters,
            warmup=3,
            threads=a.threads,
            device=a.device,
            log=quiet,
        )
        return r["rows"][0]

    first = offline()
    proc, url, grpc = start_server(a.artifact, a.batch, a.delay_us, a.threads, a.device)
    try:
        served = bench_server(
            url, grpc=grpc, clients=(1, 2, 4, 8), requests=a.requests, data=a.data, images=8, log=print
        )
    finally:
        proc.terminate()
        proc.wait(60)
    second = offline()
    offline_img_s = (first["img_s"] + second["img_s"]) / 2
    print(
        f"offline ({a.artifact.name}, batch {a.batch}, {a.threads} threads): {first['img_s']:.2f} and "
        f"{second['img_s']:.2f} img/s"
    )
    for r in served["rows"]:
        r["vs_offline"] = r["img_s"] / offline_img_s
        print(
            f"{r['protocol']:4s} {r['clients']} clients: {r['img_s']:.2f} img/s = {r['vs_offline']:.2f}x offline; "
            f"p50 {r['p50_ms']:.1f} ms p99 {r['p99_ms']:.1f} ms; batches {r['batches']}"
        )
    at4 = {r["protocol"]: r["vs_offline"] for r in served["rows"] if r["clients"] == 4}
    print(f"goal: at 4 clients >= 0.9x offline: HTTP {at4.get('http', 0):.2f}x, gRPC {at4.get('grpc', 0):.2f}x")
    if not a.no_save:
        p = save(
            "serve_throughput",
            {
                "machine": machine(a.device),
                "commit": commit(),
                "args": {k: str(v) for k, v in vars(a).items()},
                "offline": [first, second],
                "offline_img_s": offline_img_s,
                "server": served,
                "at_4_clients_vs_offline": at4,
            },
            a.json,
        )
        print(f"wrote {p}")


if __name__ == "__main__":
    main()
