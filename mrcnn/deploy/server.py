"""`mrcnn serve ARTIFACT`: Triton Inference Server hosting an artifact as one model, with dynamic batching, HTTP +
gRPC, Prometheus metrics, health / metadata / statistics endpoints (Triton's own).

The server is the `tritonserver` of the nvidia-pytriton wheel (the `serve` extra), run as a child process with our
model repository (triton_repo.serve_repository: one Python-backend model, triton_models.ServeModel, that runs
mrcnn/deploy/serving.py). What this module adds around it:
- the Python backend's stub for this interpreter's version, and this interpreter's environment for it: its
  `python3` first on PATH (the stub takes that environment) and its libpython first on LD_LIBRARY_PATH (the stub
  links `libpython3.X.so`; a system libpython of another patch release breaks it);
- checks before anything starts: the artifact loads here, the options are sane, the ports are free (one line each);
- readiness: it waits for Triton's /v2/health/ready, then says where it listens;
- shutdown: SIGINT / SIGTERM are passed to Triton as SIGTERM, which stops taking requests, lets the ones in flight
  finish and unloads the model; then the workspace and any shared-memory region of ours are removed. The server dies
  with this process (PR_SET_PDEATHSIG), and each server's shared memory has its own prefix.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mrcnn.deploy.artifacts import check_artifact_type
from mrcnn.deploy.serving import ServedModel
from mrcnn.deploy.triton_repo import python_version_tag, serve_repository
from mrcnn.device import check_threads
from mrcnn.errors import MrcnnError, require_file

SHM = Path("/dev/shm")
PR_SET_PDEATHSIG = 1


def triton_dist() -> Path:
    """The folder of the tritonserver that nvidia-pytriton's wheel ships (found without importing pytriton)."""
    spec = importlib.util.find_spec("pytriton")
    dist = Path(spec.origin).parent / "tritonserver" if spec and spec.origin else None
    if dist is None or not (dist / "bin" / "tritonserver").is_file():
        raise MrcnnError(
            "mrcnn serve needs Triton Inference Server, which the `serve` extra installs "
            "(pip install 'mrcnn[serve]': nvidia-pytriton ships tritonserver)"
        )
    return dist


@dataclass
class ServerOptions:
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    model_name: str = "mrcnn"
    max_batch: int = 4
    max_queue_delay_us: int = 2000
    instances: int = 1
    score: float = 0.5
    threads: int = 0
    device: str | None = None
    max_pixels: int | None = None
    exit_timeout_s: int = 30
    ready_timeout_s: float = 300.0
    verbose: bool = False
    ports: dict[str, int] = field(default_factory=dict)  # the ports in use once started (0 resolved)

    def check(self) -> None:
        for what, port in (("--http-port", self.http_port), ("--grpc-port", self.grpc_port)):
            if not 0 <= port <= 65535:
                raise MrcnnError(f"{what} must be in 0..65535 (0: any free port), got {port}")
        if not 0 <= self.metrics_port <= 65535:
            raise MrcnnError(f"--metrics-port must be in 0..65535 (0: any free port), got {self.metrics_port}")
        if not self.model_name or not all(c.isalnum() or c in "-_." for c in self.model_name):
            raise MrcnnError(f"--model-name must be letters, digits, '-', '_' or '.', got {self.model_name!r}")
        if not 1 <= self.max_batch <= 1024:
            raise MrcnnError(f"--max-batch must be in 1..1024, got {self.max_batch}")
        if not 0 <= self.max_queue_delay_us <= 10_000_000:
            raise MrcnnError(f"--max-queue-delay-us must be in 0..10000000, got {self.max_queue_delay_us}")
        if not 1 <= self.instances <= 64:
            raise MrcnnError(f"--instances must be in 1..64, got {self.instances}")
        if not 0.0 <= self.score <= 1.0:
            raise MrcnnError(f"--score must be in [0, 1], got {self.score}")
        check_threads(self.threads)
        if self.max_pixels is not None and self.max_pixels < 1:
            raise MrcnnError(f"--max-pixels must be >= 1, got {self.max_pixels}")
        if not 0 <= self.exit_timeout_s <= 3600:
            raise MrcnnError(f"--exit-timeout must be in 0..3600 seconds, got {self.exit_timeout_s}")


def claim_ports(host: str, wanted: dict[str, int]) -> dict[str, int]:
    """Each wanted port checked free on `host` (0: a free one picked), or one error line naming the busy one."""
    out = {}
    for what, port in wanted.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as e:
                if port == 0 or e.errno not in (98, 48):  # EADDRINUSE (Linux, macOS)
                    raise MrcnnError(f"--host {host}: cannot listen there ({e.strerror or e})") from None
                raise MrcnnError(
                    f"port {port} ({what}) is in use on {host}; choose another with --{what}-port"
                ) from None
            out[what] = s.getsockname()[1]
    if len(set(out.values())) != len(out):
        raise MrcnnError(f"the HTTP, gRPC and metrics ports must differ, got {out}")
    return out


def _die_with_parent() -> None:  # (runs in the child between fork and exec)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class TritonServer:
    """A tritonserver child process on a model repository; `start()` returns once it is ready, `stop()` drains it."""

    def __init__(self, repository: Path, workspace: Path, opts: ServerOptions, log: Callable[[str], None]) -> None:
        self.repository, self.workspace, self.opts, self.log = repository, workspace, opts, log
        self.dist = triton_dist()
        self.shm_prefix = f"mrcnn-serve-{os.getpid()}-{int(time.time() * 1000) % 100000}-"
        self.proc: subprocess.Popen | None = None
        self.lines: collections.deque[str] = collections.deque(maxlen=400)
        self.reader: threading.Thread | None = None

    # -- set-up --------------------------------------------------------------------------------------------------
    def backends(self) -> Path:
        """backends/python with the stub of this interpreter's version (symlinks into the wheel)."""
        src = self.dist / "backends" / "python"
        stub = self.dist / "python_backend_stubs" / python_version_tag() / "triton_python_backend_stub"
        if not stub.is_file():
            raise MrcnnError(
                f"Triton's Python backend has no stub for Python {python_version_tag()} (in {stub.parent.parent})"
            )
        dst = self.workspace / "backends" / "python"
        dst.mkdir(parents=True, exist_ok=True)
        for f in (*src.iterdir(), stub):
            if f.is_file():
                (dst / f.name).symlink_to(f)
        return dst.parent

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p)
        env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def command(self) -> list[str]:
        o, p = self.opts, self.opts.ports
        return [
            str(self.dist / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={self.backends()}",
            f"--cache-directory={self.dist / 'caches'}",
            f"--http-address={o.host}",
            f"--http-port={p['http']}",
            f"--grpc-address={o.host}",
            f"--grpc-port={p['grpc']}",
            f"--metrics-address={o.host}",
            f"--metrics-port={p['metrics']}",
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            "--allow-cpu-metrics=true",
            "--model-control-mode=none",
            "--strict-readiness=true",
            "--disable-auto-complete-config",
            f"--exit-timeout-secs={o.exit_timeout_s}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            f"--log-verbose={1 if o.verbose else 0}",
        ]

    # -- running -------------------------------------------------------------------------------------------------
    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            if self.opts.verbose:
                self.log(line)

    def ready(self) -> bool:
        url = f"http://{self.connect_host()}:{self.opts.ports['http']}/v2/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def connect_host(self) -> str:
        return "127.0.0.1" if self.opts.host in ("0.0.0.0", "") else self.opts.host

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.command(),
            env=self.environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a terminal's Ctrl-C reaches us; we pass it on as one SIGTERM
            preexec_fn=_die_with_parent,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        deadline = time.monotonic() + self.opts.ready_timeout_s
        while not self.ready():
            if self.proc.poll() is not None:
                self.reader.join(timeout=5)
                raise MrcnnError(f"Triton Inference Server did not start: {self.failure()}")
            if time.monotonic() > deadline:
                self.stop()
                raise MrcnnError(f"Triton Inference Server was not ready after {self.opts.ready_timeout_s:g} s")
            time.sleep(0.2)

    def failure(self) -> str:
        """The server's own words on why it stopped (its error lines), for one error line."""
        keys = ("error", "failed", "Error", "Exception", "unhealthy")
        found = [ln for ln in self.lines if any(k in ln for k in keys) and "NVML" not in ln and "DCGM" not in ln]
        text = found[-1] if found else (self.lines[-1] if self.lines else f"exit status {self.proc.returncode}")
        return text.strip()[-400:]

    def stop(self) -> int:
        """SIGTERM: Triton refuses new requests, finishes those in flight (at most --exit-timeout s), unloads the model
        and exits; a server still there 15 s past that is killed. Returns its exit status."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=self.opts.exit_timeout_s + 15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.reader is not None:
            self.reader.join(timeout=5)
        for leftover in SHM.glob(f"{self.shm_prefix}*") if SHM.is_dir() else []:
            leftover.unlink(missing_ok=True)
        return self.proc.returncode

    def urls(self) -> dict[str, str]:
        h, p = self.connect_host(), self.opts.ports
        return {
            "http": f"http://{h}:{p['http']}",
            "grpc": f"{h}:{p['grpc']}",
            "metrics": f"http://{h}:{p['metrics']}/metrics",
        }


class StopRequested(Exception):
    pass


@contextlib.contextmanager
def stop_on_signals():
    """SIGINT and SIGTERM raise StopRequested in the main thread (once), the previous handlers restored after."""

    def handler(signum, frame):
        raise StopRequested(signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def serve(
    artifact: str | Path,
    opts: ServerOptions,
    *,
    log: Callable[[str], None] = print,
    on_ready: Callable[[TritonServer], None] | None = None,
) -> int:
    """Check, start, say where, wait for SIGINT / SIGTERM, drain and stop (module docstring). `on_ready(server)`
    is called once the server is ready (tests and benchmarks drive it from there; returning ends the wait only
    through a signal). Returns the server's exit status."""
    opts.check()
    artifact = check_artifact_type(require_file(artifact, "no such artifact", "a checkpoint, export or engine"))
    triton_dist()
    opts.ports = claim_ports(opts.host, {"http": opts.http_port, "grpc": opts.grpc_port, "metrics": opts.metrics_port})
    # the artifact loads here first: a bad one is one line before any server starts, and its class names and
    # runtime go into the model's config
    probe = ServedModel(
        artifact, device=opts.device, score=opts.score, threads=opts.threads, max_pixels=opts.max_pixels, log=log
    )
    params = {
        "artifact": str(artifact.resolve()),
        "score": repr(opts.score),
        "threads": str(opts.threads),
        "device": opts.device or "",
        "max_pixels": str(opts.max_pixels or ""),
        "class_names": json.dumps(probe.class_names),
        "runtime": probe.runtime,
        "score_floor": repr(probe.floor),
    }
    description = f"{artifact.name} on {probe.runtime}, {len(probe.class_names)} classes"
    del probe
    kind = "KIND_GPU" if (opts.device or "").startswith("cuda") else "KIND_CPU"
    workspace = Path(tempfile.mkdtemp(prefix="mrcnn-serve-"))
    server = None
    try:
        repo = serve_repository(
            workspace / "models", opts.model_name, params, opts.max_batch, opts.max_queue_delay_us, opts.instances, kind
        )
        server = TritonServer(repo, workspace, opts, log)
        with stop_on_signals():
            try:
                log(f"starting Triton Inference Server for {description} ...")
                server.start()
                u = server.urls()
                log(
                    f"serving model '{opts.model_name}' ({description}): HTTP {u['http']}, gRPC {u['grpc']}, "
                    f"metrics {u['metrics']}; max batch {opts.max_batch}, {opts.instances} instance(s). "
                    "Ctrl-C or SIGTERM stops it"
                )
                if on_ready is not None:
                    on_ready(server)
                while server.proc.poll() is None:
                    time.sleep(0.2)
                raise MrcnnError(f"Triton Inference Server stopped: {server.failure()}")
            except StopRequested as e:
                log(f"{e}: finishing the requests in flight, then stopping")
        code = server.stop()
        log("stopped")
        return code
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workspace, ignore_errors=True)
