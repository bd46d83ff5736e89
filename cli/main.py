"""`mrcnn` command line. Every command calls one library function; MrcnnError -> one line on stderr, exit 1."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import typer

from mrcnn.errors import MrcnnError, message_line

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Mask R-CNN training and deployment toolchain.",
)
data_app = typer.Typer(no_args_is_help=True, help="Datasets.")
convert_app = typer.Typer(no_args_is_help=True, help="Import weights from other frameworks.")
config_app = typer.Typer(no_args_is_help=True, help="Named configs and config files.")
app.add_typer(data_app, name="data")
app.add_typer(convert_app, name="convert")
app.add_typer(config_app, name="config")


def _log(msg: str) -> None:
    print(msg, flush=True)


def _fail(msg: str, code: int = 1) -> None:
    print(f"error: {msg}", file=sys.stderr, flush=True)
    raise typer.Exit(code)


def handled(fn):
    """One clear line for expected errors; no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MrcnnError as e:
            line = message_line(e)
            code = getattr(e, "exit_code", 1)  # a run stopped by a signal: 128 + its number, not an error
            if code != 1:
                print(line, file=sys.stderr, flush=True)
                raise typer.Exit(code) from None
            _fail(line)
        except FileNotFoundError as e:
            _fail(f"{e.filename}: no such file or directory")
        except OSError as e:  # the machine's, not ours: a full disk, a read-only folder, a lost mount
            _fail(f"{e.filename}: {e.strerror}" if e.filename else str(e))
        except KeyboardInterrupt:
            _fail("interrupted", 130)

    return wrapper


@app.command()
@handled
def info() -> None:
    """Versions, GPU visibility and which optional runtimes work here."""
    from mrcnn.api.info import runtime_info

    rows = runtime_info()
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


@data_app.command("synth")
@handled
def data_synth(
    out: Path = typer.Argument(..., help="output folder (train2017/, val2017/, annotations/)"),
    train: int = typer.Option(200, "--train", help="training images"),
    val: int = typer.Option(50, "--val", help="validation images"),
    size: int = typer.Option(256, "--size", help="image side in pixels"),
    seed: int = typer.Option(0, "--seed", help="random seed (same seed -> identical files)"),
) -> None:
    """Generate the deterministic synthetic COCO-format shapes dataset."""
    from mrcnn.data.synth import generate_synthetic
    from mrcnn.progress import reporter

    if train < 0 or val < 0 or size < 32:
        raise MrcnnError("--train/--val must be >= 0 and --size >= 32")
    with reporter(train + val, "synth", log=_log) as rep:
        summary = generate_synthetic(
            out, n_train=train, n_val=val, size=size, seed=seed, progress=lambda d, t: rep.update(d)
        )
    print(f"wrote {out}: {summary}")


@data_app.command("check")
@handled
def data_check(
    data: Path = typer.Argument(..., help="dataset folder (COCO 2017 or Roboflow layout) or dataset .json"),
    split: list[str] = typer.Option(["train", "val"], "--split", help="splits to check (repeatable)"),
    decode: bool = typer.Option(False, "--decode", help="also decode every image (finds corrupt files; slower)"),
) -> None:
    """Report what a dataset holds and what training would skip; exit 1 when anything would be skipped."""
    from mrcnn.data.check import check_dataset

    check_dataset(data, list(split), decode=decode, log=_log)
    print(f"{data}: ok")


@config_app.command("list")
@handled
def config_list() -> None:
    """The named configs (`--config NAME`)."""
    from mrcnn.config import describe_presets

    for name, text in describe_presets():
        print(f"{name:<22}{text}")


@config_app.command("show")
@handled
def config_show(
    name: str = typer.Argument(..., help="a named config or a .json config file"),
    set_: list[str] = typer.Option([], "--set", help="config override section.key=value (repeatable)"),
) -> None:
    """Every field of a config as JSON: save it, edit it, train with `--config FILE.json`."""
    from mrcnn.config import get_config

    print(get_config(name, list(set_)).to_json(indent=2))


@app.command()
@handled
def train(
    data: Path | None = typer.Option(
        None,
        "--data",
        help="COCO-format dataset: a COCO 2017 or Roboflow folder, "
        "or a dataset .json naming each split's annotations and images (with "
        "--resume: default the run's own)",
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="run folder (checkpoints, metrics.jsonl); default: the "
        "next runs/train/exp{N}, or with --resume the latest one",
    ),
    config: str | None = typer.Option(
        None,
        "--config",
        help="named config (r50-fpn, the default; r18-fpn, "
        "shapes-tiny, ...: `mrcnn config list`) or a .json config file (`mrcnn "
        "config show NAME`); with --resume: default the run's own",
    ),
    amp: str = typer.Option(None, "--amp", help="bf16 | fp16 | off"),
    accum: int = typer.Option(None, "--accum", help="gradient accumulation steps"),
    channels_last: bool = typer.Option(None, "--channels-last/--no-channels-last", help="NHWC memory format"),
    compile_: bool = typer.Option(
        None, "--compile/--no-compile", help="torch.compile the backbone + FPN (the first steps compile)"
    ),
    batch: int = typer.Option(None, "--batch", help="images per device per micro-step"),
    max_iter: int = typer.Option(None, "--max-iter", help="optimizer steps"),
    epochs: float = typer.Option(None, "--epochs", help="passes over the training images (instead of --max-iter)"),
    max_minutes: float = typer.Option(
        None,
        "--max-minutes",
        help="wall-clock budget: the run shortens itself to "
        "what fits at its measured pace (LR steps move with its end)",
    ),
    lr: float = typer.Option(None, "--lr", help="base LR for the reference batch (scaled linearly)"),
    ema: float = typer.Option(
        None,
        "--ema",
        help="decay of a moving average of the weights that evaluation and the saved models use (e.g. 0.9998; 0: off)",
    ),
    eval_period: int = typer.Option(None, "--eval-period", help="COCO eval every P iterations (0: at the end)"),
    checkpoint_period: int = typer.Option(None, "--checkpoint-period", help="checkpoint every P iterations"),
    workers: int = typer.Option(
        None, "--workers", help="data loader worker processes (default: 0 on CPU, up to 4 on a GPU)"
    ),
    weights: Path | None = typer.Option(
        None,
        "--weights",
        help="starting weights: an mrcnn checkpoint or torchvision Mask R-CNN state dict "
        "(fine-tune; classes matched by name), or a torchvision ImageNet ResNet (backbone)",
    ),
    resume: bool = typer.Option(False, "--resume", help="continue from OUT/last.pt"),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="start over in an OUT that holds a run (its checkpoints and metrics are replaced)"
    ),
    strict: bool = typer.Option(False, "--strict", help="bad data is an error instead of a skipped sample"),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: cuda if visible)"),
    seed: int = typer.Option(None, "--seed"),
    set_: list[str] = typer.Option([], "--set", help="config override section.key=value (repeatable)"),
) -> None:
    """Train a Mask R-CNN (AMP, DDP under torchrun, accumulation, channels-last, resume)."""
    from mrcnn.config import get_config
    from mrcnn.training.runs import default_run_dir, resume_settings
    from mrcnn.training.trainer import train as run_train

    if out is None:
        out = default_run_dir(resume)
        print(f"run folder: {out}")
    if resume:
        cfg, data = resume_settings(out, config, list(set_), data)
    elif data is None:
        raise MrcnnError("--data is required: a COCO-format dataset folder or dataset .json")
    else:
        cfg = get_config(config or "r50-fpn", list(set_))
    s = cfg.solver
    for name, value in (
        ("amp", amp),
        ("accum", accum),
        ("channels_last", channels_last),
        ("compile", compile_),
        ("batch", batch),
        ("max_iter", max_iter),
        ("base_lr", lr),
        ("eval_period", eval_period),
        ("checkpoint_period", checkpoint_period),
        ("num_workers", workers),
        ("max_minutes", max_minutes),
        ("ema_decay", ema),
    ):
        if value is not None:
            setattr(s, name, value)
    if seed is not None:
        cfg.seed = seed
    if epochs is not None:
        if max_iter is not None:
            raise MrcnnError("--epochs and --max-iter both set the length of the run: give one")
        s.epochs = epochs
    elif max_iter is not None:
        s.epochs = 0.0  # an explicit --max-iter wins over a config's (or a resumed run's) epochs
    result = run_train(
        cfg, data, out, resume=resume, overwrite=overwrite, weights=weights, device=device, strict=strict, log=_log
    )
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one line, not one per rank
        print(f"done: {result.iteration} iterations, checkpoint {result.checkpoint}")


@app.command("eval")
@handled
def eval_(
    artifact: Path = typer.Argument(..., help="checkpoint (.pt) or exported model (.onnx)"),
    data: Path = typer.Option(..., "--data", help="COCO-format dataset folder or dataset .json (as for train)"),
    split: str = typer.Option("val2017", "--split", help="split to evaluate: val2017 / val, train2017 / train, ..."),
    batch: int = typer.Option(2, "--batch"),
    json_out: Path | None = typer.Option(None, "--json", help="write metrics + COCO results json"),
    device: str | None = typer.Option(None, "--device"),
    strict: bool = typer.Option(False, "--strict"),
    per_class: bool = typer.Option(True, "--per-class/--no-per-class", help="also print AP per class"),
    max_images: int = typer.Option(0, "--max-images", help="evaluate the first N images only (0: all)"),
    precision: str = typer.Option(
        "fp32", "--precision", help="a checkpoint's networks in fp32 or bf16 (CPUs with AVX512-BF16 or AMX, GPUs)"
    ),
) -> None:
    """COCO bbox + segm AP table (and AP per class)."""
    from mrcnn.api.validate import evaluate_artifact
    from mrcnn.evaluation.coco import format_per_class, format_table

    metrics = evaluate_artifact(
        artifact,
        data,
        split=split,
        batch_size=batch,
        device=device,
        json_out=json_out,
        strict=strict,
        log=_log,
        max_images=max_images,
        precision=precision,
    )
    print(format_table(metrics))
    if per_class:
        print(format_per_class(metrics))


@app.command()
@handled
def validate(
    artifact: Path = typer.Argument(..., help="exported model (.onnx) or checkpoint (.pt) to check"),
    data: Path = typer.Option(..., "--data", help="COCO-format dataset folder or dataset .json (as for train)"),
    reference: Path | None = typer.Option(
        None,
        "--reference",
        help="the model to compare with (default: the "
        "checkpoint an exported model was made from, named in its metadata)",
    ),
    max_ap_drop: float | None = typer.Option(
        None,
        "--max-ap-drop",
        help="exit 1 when bbox or segm AP is lower than the reference's by more than this (0.01 = 1 AP point)",
    ),
    split: str = typer.Option("val2017", "--split", help="split to evaluate: val2017 / val, train2017 / train, ..."),
    batch: int = typer.Option(2, "--batch"),
    json_out: Path | None = typer.Option(None, "--json", help="write the report (metrics, drops, pairing)"),
    device: str | None = typer.Option(None, "--device"),
    strict: bool = typer.Option(False, "--strict"),
    max_images: int = typer.Option(0, "--max-images", help="the first N images only (0: all)"),
    precision: str = typer.Option(
        "fp32", "--precision", help="a checkpoint's networks in fp32 or bf16 (CPUs with AVX512-BF16 or AMX, GPUs)"
    ),
    bundle: Path | None = typer.Option(
        None,
        "--bundle",
        help="also write a polygraphy bundle to this new folder: inputs, ONNX Runtime's outputs and the command "
        "that checks a TensorRT engine against them on a GPU machine",
    ),
    bundle_images: int = typer.Option(4, "--bundle-images", help="images of the split in the bundle"),
) -> None:
    """COCO AP of a model and of its reference on the same images, detections paired up, and an AP-drop gate."""
    from mrcnn.api.validate import format_validation, validate_artifact

    report = validate_artifact(
        artifact,
        data,
        reference=reference,
        max_ap_drop=max_ap_drop,
        split=split,
        batch_size=batch,
        device=device,
        json_out=json_out,
        strict=strict,
        log=_log,
        max_images=max_images,
        precision=precision,
        bundle=bundle,
        bundle_images=bundle_images,
    )
    print(format_validation(report))
    if report["failed"]:
        raise MrcnnError(f"{artifact}: {'; '.join(report['failed'])}, more than --max-ap-drop {max_ap_drop:g}")


@app.command()
@handled
def export(
    checkpoint: Path = typer.Argument(..., help="mrcnn checkpoint (.pt)"),
    output: Path | None = typer.Option(None, "-o", "--output", help="ONNX file (default: CHECKPOINT.onnx)"),
    flavour: str = typer.Option(
        "trt",
        "--flavour",
        help="trt (mrcnn custom ops -> TensorRT plugins) | portable "
        "(standard ONNX ops only) | rtx (standard ops TensorRT-RTX "
        "builds: RoIAlign as gathers, NMS as a loop)",
    ),
    opset: int = typer.Option(18, "--opset", help="ONNX opset (>= 16: RoiAlign semantics)"),
    batch: int | None = typer.Option(None, "--batch", help="static batch size (default: dynamic)"),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="dynamic batch (the default)"),
    height: int | None = typer.Option(None, "--height", help="static padded input height (with --width)"),
    width: int | None = typer.Option(None, "--width", help="static padded input width (with --height)"),
    dynamic_size: bool = typer.Option(False, "--dynamic-size", help="dynamic input size (the default)"),
    fp16: bool = typer.Option(
        False,
        "--fp16",
        help="networks in float16 (BatchNorm folded first), the ops between "
        "them and the inputs / outputs float32; half the weights' size",
    ),
    set_: list[str] = typer.Option([], "--set", help="config override, e.g. model.box_score_thresh=0.3"),
    engine: bool = typer.Option(
        False,
        "--engine",
        help="also build the engine (as `mrcnn build` with its default "
        "profile; --flavour rtx: TensorRT-RTX, else TensorRT)",
    ),
    int8: bool = typer.Option(
        False, "--int8", help="INT8 Q/DQ graph (NVIDIA ModelOpt), calibrated on --calib; portable or rtx flavour"
    ),
    calib: Path | None = typer.Option(None, "--calib", help="--int8: the calibration dataset (COCO folder)"),
    calib_images: int = typer.Option(32, "--calib-images", help="--int8: calibration images drawn from --calib"),
    calib_split: str = typer.Option("train2017", "--calib-split", help="--int8: the split they are drawn from"),
    calib_method: str = typer.Option("entropy", "--calib-method", help="--int8: entropy | max"),
    seed: int = typer.Option(0, "--seed", help="--int8: the seed that draws the calibration images"),
) -> None:
    """Export a checkpoint to ONNX (self-describing: config, classes, preprocessing in metadata_props)."""
    from mrcnn.export import Int8Options, export_checkpoint

    if calib is not None and not int8:
        _fail("--calib goes with --int8")
    if int8 and calib is None:
        _fail("--int8 needs --calib DATA: the dataset whose images calibrate the INT8 ranges")
    int8_options = (
        Int8Options(calib, images=calib_images, method=calib_method, seed=seed, split=calib_split) if int8 else None
    )

    if engine:  # before the export: a missing runtime is one line, not an ONNX without its engine
        from mrcnn.deploy.build import engine_runtime, import_runtime

        import_runtime(engine_runtime(flavour))
    path = export_checkpoint(
        checkpoint,
        output,
        flavour=flavour,
        opset=opset,
        batch=batch,
        dynamic_batch=dynamic_batch,
        height=height,
        width=width,
        dynamic_size=dynamic_size,
        fp16=fp16,
        overrides=list(set_),
        int8=int8_options,
        log=_log,
    )
    if engine:
        from mrcnn.deploy.build import build_artifact

        build_artifact(path, runtime=engine_runtime(flavour), log=_log)


@app.command()
@handled
def build(
    onnx_model: Path = typer.Argument(..., help="an mrcnn export (.onnx)"),
    output: Path | None = typer.Option(None, "-o", "--output", help="engine file (default: ONNX_MODEL.plan)"),
    runtime: str = typer.Option(
        "tensorrt-rtx",
        "--runtime",
        help="tensorrt-rtx (builds without a GPU; rtx "
        "flavour) | tensorrt (on a GPU; trt flavour with "
        "our plugins, or portable) | openvino (an IR, .xml + .bin, for CPUs; portable flavour)",
    ),
    batch: int = typer.Option(1, "--batch", help="largest batch of the profile (dynamic-batch models)"),
    min_shape: str | None = typer.Option(None, "--min-shape", help="BxHxW of images, e.g. 1x32x32"),
    opt_shape: str | None = typer.Option(None, "--opt-shape", help="BxHxW the engine is tuned for"),
    max_shape: str | None = typer.Option(None, "--max-shape", help="BxHxW, e.g. 1x1344x1344"),
    fp16: bool = typer.Option(
        False,
        "--fp16",
        help="tensorrt: let the builder use float16 in a float32 graph (an "
        "`export --fp16` graph is float16 without it, on both runtimes)",
    ),
    plugins: Path | None = typer.Option(
        None, "--plugins", help="tensorrt: the mrcnn plugin library to load (default: the installed one)"
    ),
    serialize_plugins: bool = typer.Option(
        False,
        "--serialize-plugins",
        help="tensorrt: put the plugin library inside the engine (it then runs without loading it)",
    ),
    timing_cache: Path | None = typer.Option(
        None, "--timing-cache", help="read (when it exists) and write the builder's timing cache here"
    ),
    workspace: int | None = typer.Option(None, "--workspace", help="the builder's workspace limit in MiB"),
    precision: str | None = typer.Option(
        None, "--precision", help="openvino: f32 (default) | bf16 (CPUs with AVX512-BF16 or AMX)"
    ),
) -> None:
    """Build a TensorRT(-RTX) engine (.plan, with a .plan.json description) or an OpenVINO IR (.xml) from an
    exported ONNX."""
    from mrcnn.deploy.build import BuildOptions, build_artifact, parse_shape

    shapes = [
        None if v is None else parse_shape(v, flag)
        for v, flag in ((min_shape, "--min-shape"), (opt_shape, "--opt-shape"), (max_shape, "--max-shape"))
    ]
    options = BuildOptions(
        fp16=fp16,
        plugins=plugins,
        serialize_plugins=serialize_plugins,
        timing_cache=timing_cache,
        workspace_mib=workspace,
    )
    build_artifact(
        onnx_model,
        output,
        runtime=runtime,
        min_shape=shapes[0],
        opt_shape=shapes[1],
        max_shape=shapes[2],
        batch=batch,
        options=options,
        precision=precision,
        log=_log,
    )


@app.command()
@handled
def bench(
    artifacts: list[Path] | None = typer.Argument(
        None, help="checkpoints (.pt) and exported models (.onnx), compared side by side"
    ),
    batch: int = typer.Option(1, "--batch", help="images per call"),
    size: str = typer.Option("480x640", "--size", help="HxW of the synthetic images (without --data)"),
    data: Path | None = typer.Option(None, "--data", help="take the first images of this dataset's val split"),
    iters: int = typer.Option(50, "--iters", help="timed calls per artifact"),
    warmup: int = typer.Option(5, "--warmup", help="untimed calls per artifact first"),
    threads: int = typer.Option(0, "--threads", help="CPU threads for torch and ONNX Runtime (0: their default)"),
    paste: bool = typer.Option(True, "--paste/--no-paste", help="paste masks into the image (as predict does)"),
    device: str | None = typer.Option(None, "--device"),
    json_out: Path | None = typer.Option(None, "--json", help="write the measurements"),
    server: str | None = typer.Option(
        None, "--server", help="a running server's HTTP address (mrcnn serve): load it instead of timing artifacts"
    ),
    grpc_url: str | None = typer.Option(None, "--grpc-url", help="--server: its gRPC address (default: HTTP port + 1)"),
    model_name: str = typer.Option("mrcnn", "--model-name", help="--server: the model's name"),
    clients: str = typer.Option("1,2,4,8", "--clients", help="--server: the concurrencies to sweep"),
    requests: int = typer.Option(20, "--requests", help="--server: requests per client"),
    protocol: str = typer.Option("both", "--protocol", help="--server: http, grpc or both"),
) -> None:
    """Latency (mean, p50, p90, p99), images/s and memory of artifacts, timed taking turns on the same images.

    With --server: a running server under 1, 2, 4, 8 concurrent clients (HTTP and gRPC), and the batches it formed."""
    from mrcnn.deploy.bench import bench_artifacts, format_bench

    try:
        h, w = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise MrcnnError(f"--size must be HxW (e.g. 480x640), got {size!r}") from None
    if server is not None:
        from mrcnn.deploy.load import bench_server

        if artifacts:
            raise MrcnnError("--server loads a running server: give it no artifacts")
        try:
            sweep = [int(c) for c in clients.split(",")]
        except ValueError:
            raise MrcnnError(f"--clients must be numbers separated by commas, got {clients!r}") from None
        bench_server(
            server,
            grpc=grpc_url,
            model=model_name,
            protocols=("http", "grpc") if protocol == "both" else (protocol,),
            clients=sweep,
            requests=requests,
            data=data,
            size=(h, w),
            images=max(batch, 8),
            warmup=warmup,
            json_out=json_out,
            log=_log,
        )
        return
    report = bench_artifacts(
        artifacts or [],
        batch=batch,
        size=(h, w),
        data=data,
        iters=iters,
        warmup=warmup,
        device=device,
        threads=threads,
        paste=paste,
        json_out=json_out,
        log=_log,
    )
    print(format_bench(report))


@app.command()
@handled
def predict(
    artifact: Path = typer.Argument(..., help="checkpoint (.pt) or exported model (.onnx)"),
    images: list[Path] = typer.Argument(..., help="image files or folders of images"),
    out: Path | None = typer.Option(
        None, "--out", help="folder for the PNG overlays and predictions.json (default: the next runs/predict/exp{N})"
    ),
    score: float = typer.Option(0.5, "--score", help="keep detections with at least this score"),
    batch: int = typer.Option(1, "--batch", help="images per forward pass"),
    no_overlays: bool = typer.Option(False, "--no-overlays", help="write predictions.json only"),
    skip_bad: bool = typer.Option(
        False, "--skip-bad", help="skip images that cannot be read (each one is listed) instead of stopping"
    ),
    max_pixels: int | None = typer.Option(
        None, "--max-pixels", help="largest image accepted, width x height (default 64000000, or $MRCNN_MAX_PIXELS)"
    ),
    device: str | None = typer.Option(None, "--device"),
    precision: str = typer.Option(
        "fp32", "--precision", help="a checkpoint's networks in fp32 or bf16 (CPUs with AVX512-BF16 or AMX, GPUs)"
    ),
) -> None:
    """Detections on images: PNG overlays and a COCO-format predictions.json (each image with its overlay)."""
    from mrcnn.data.image_io import set_max_pixels
    from mrcnn.deploy.predict import predict as run_predict
    from mrcnn.io import next_run_dir

    set_max_pixels(max_pixels)
    out = out if out is not None else next_run_dir("predict")
    res = run_predict(
        artifact,
        images,
        out,
        score=score,
        batch_size=batch,
        device=device,
        overlays=not no_overlays,
        skip_bad=skip_bad,
        precision=precision,
        log=_log,
    )
    skipped = f" ({len(res['skipped'])} skipped)" if res["skipped"] else ""
    print(f"{res['detections']} detections on {res['images']} images{skipped} -> {res['out']}")


@app.command()
@handled
def serve(
    artifact: Path = typer.Argument(..., help="checkpoint (.pt), export (.onnx) or engine (.plan)"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (0.0.0.0: every interface)"),
    http_port: int = typer.Option(8000, "--http-port", help="HTTP/REST port (0: any free one)"),
    grpc_port: int = typer.Option(8001, "--grpc-port", help="gRPC port (0: any free one)"),
    metrics_port: int = typer.Option(8002, "--metrics-port", help="Prometheus metrics port (0: any free one)"),
    model_name: str = typer.Option("mrcnn", "--model-name", help="the model's name in Triton's URLs"),
    max_batch: int = typer.Option(4, "--max-batch", help="most requests Triton batches into one predictor call"),
    max_queue_delay_us: int = typer.Option(
        2000, "--max-queue-delay-us", help="how long a request may wait for others to batch with (microseconds)"
    ),
    instances: int = typer.Option(1, "--instances", help="model instances (processes) serving in parallel"),
    score: float = typer.Option(0.5, "--score", help="score threshold of a request that names none"),
    threads: int = typer.Option(0, "--threads", help="CPU threads per instance (0: torch's default)"),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda[:N] (default: cuda when available)"),
    max_pixels: int | None = typer.Option(None, "--max-pixels", help="largest image accepted (default 64 MP)"),
    exit_timeout: int = typer.Option(30, "--exit-timeout", help="seconds a stop waits for requests in flight"),
    verbose: bool = typer.Option(False, "--verbose", help="print Triton's own log"),
) -> None:
    """Serve an artifact on Triton Inference Server: HTTP + gRPC, dynamic batching, Prometheus metrics."""
    from mrcnn.deploy.server import ServerOptions, serve

    opts = ServerOptions(
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        model_name=model_name,
        max_batch=max_batch,
        max_queue_delay_us=max_queue_delay_us,
        instances=instances,
        score=score,
        threads=threads,
        device=device,
        max_pixels=max_pixels,
        exit_timeout_s=exit_timeout,
        verbose=verbose,
    )
    code = serve(artifact, opts, log=_log)
    if code:
        raise MrcnnError(f"Triton Inference Server exited with status {code}")


@app.command("triton-repo")
@handled
def triton_repo(
    engine: Path = typer.Argument(..., help="an engine (.plan) with its .plan.json (mrcnn build)"),
    output: Path = typer.Option(..., "-o", "--output", help="the repository folder to write (new or empty)"),
    model_name: str = typer.Option("mrcnn", "--model-name", help="the ensemble's name (the model clients call)"),
    score: float = typer.Option(0.5, "--score", help="score threshold of a request that names none"),
    instances: int = typer.Option(1, "--instances", help="instances of each model"),
    max_queue_delay_us: int = typer.Option(2000, "--max-queue-delay-us", help="the engine's batching delay"),
    plugins: Path | None = typer.Option(
        None, "--plugins", help="where the server will find libmrcnn_trt_plugins.so (for the README's command)"
    ),
) -> None:
    """A Triton model repository of an engine for GPU servers, with the request / response schema of `mrcnn serve`.

    The engine (tensorrt_plan), Python-backend pre- and post-processing and an ensemble, with a README."""
    from mrcnn.deploy.triton_repo import gpu_repository

    out = gpu_repository(
        engine,
        output,
        name=model_name,
        score=score,
        instances=instances,
        delay_us=max_queue_delay_us,
        plugins=plugins,
    )
    _log(f"wrote {out} (start it as its README.md says)")


@convert_app.command("torchvision")
@handled
def convert_torchvision(
    src: Path = typer.Argument(..., help="torchvision maskrcnn_resnet50_fpn state dict (.pth)"),
    dst: Path = typer.Argument(..., help="mrcnn checkpoint to write (.pt)"),
    classes: str | None = typer.Option(None, "--classes", help="comma-separated class names (no background)"),
) -> None:
    """Map torchvision maskrcnn_resnet50_fpn weights onto the mrcnn model."""
    from mrcnn.model.convert import convert_torchvision as conv

    names = [c.strip() for c in classes.split(",")] if classes else None
    conv(src, dst, class_names=names)
    print(f"wrote {dst}")


@app.command()
@handled
def demo(
    out: Path = typer.Option(Path("mrcnn-demo"), "--out", help="working folder"),
    max_iter: int | None = typer.Option(None, "--max-iter", help="training iterations (default: config's)"),
    no_export: bool = typer.Option(False, "--no-export", help="stop after the PyTorch evaluation"),
) -> None:
    """The whole pipeline on the embedded synthetic data: synth -> train -> COCO eval -> ONNX export (trt,
    portable, rtx, rtx --fp16, portable and rtx --int8) and OpenVINO IRs -> validation on ONNX Runtime / OpenVINO
    against the checkpoint -> TensorRT-RTX engines of the rtx models -> bench -> predict overlays, then one summary
    table."""
    from mrcnn.api.demo import demo as run_demo
    from mrcnn.api.demo import format_report

    res = run_demo(out, max_iter=max_iter, export=not no_export, log=_log)
    print(format_report(res))
    failed = [
        f"{Path(r['path']).name}: {f} (gate {r['validation']['max_ap_drop']:g})"
        for r in [*res.get("onnx", {}).values(), *res.get("openvino", {}).values()]
        for f in r["validation"]["failed"]
    ]
    if failed:
        raise MrcnnError(f"demo: {'; '.join(failed)}: AP below the checkpoint's by more than the gate")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
