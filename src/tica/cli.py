"""The `tica` command: argument parsing and printing only; the work is in `tica.api`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from pathlib import Path
from typing import Sequence, get_args, get_type_hints

from . import __version__, api, bitstream
from .config import SHARD_IMAGES, TOP_K, TrainConfig
from .cost import DEFAULT_MAX_GFLOP, Budget
from .entropy.parallel import set_threads as set_coder_threads
from .errors import BudgetError, LimitError, OutputError, TicaError
from .image import image_bytes, image_format, read_image
from .models import CompressionModel
from .nn import bands
from .output import STDOUT, check_output, write_output
from .registry import DEFAULT_MODEL, list_models
from .serve.config import Listen, ServeConfig


QUALITY_HELP = ("rate: any number in a variable-rate model's range (1 = lowest rate; the "
                "integers are its standard points)")
NO_QUALITY = ("--quality applies only when an image is encoded: a stream records the quality "
              "it was coded at")


def _add_model_args(p: argparse.ArgumentParser, encode: bool = False,
                    quality: str | None = QUALITY_HELP) -> None:
    """--model, --weights, --untrained, and --quality with `quality` as its help (None: the
    command takes no quality)."""
    g = p.add_argument_group("model (decoding needs the model that encoded)")
    default = (f"default: picked for the images, {api.SMALL_IMAGE_MODEL} if no side exceeds "
               f"{api.SMALL_IMAGE_SIDE} px, else {api.PHOTO_MODEL}" if encode else
               f"default: the shipped model the stream names, else {DEFAULT_MODEL}")
    g.add_argument("--model", metavar="NAME",
                   help=f"registered preset ({', '.join(list_models())}); {default}")
    g.add_argument("--weights", metavar="FILE", help="a tica checkpoint (.safetensors) instead")
    if quality:
        g.add_argument("--quality", type=float, metavar="Q", help=quality)
    g.add_argument("--untrained", action="store_true",
                   help="allow a preset with no shipped weights: its seeded random model")


def _add_runtime_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where the work runs")
    g.add_argument("--device", default="auto", choices=api.DEVICES,
                   help="where the networks run: auto (default) is a CUDA GPU when one is "
                        "visible, else the CPU; streams decode identically on either")
    g.add_argument("--coder-threads", dest="coder_threads", type=int, metavar="N",
                   help="threads for entropy coding (default: $TICA_CODER_THREADS, else the "
                        "cores available)")


def _add_frame_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frame", type=int, metavar="K",
                   help="code frame K (from 0) of a multi-frame image (an animated GIF or WebP, "
                        "a multi-page TIFF), which is refused without it")


def _add_budget_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-gflop", dest="max_gflop", type=float, default=DEFAULT_MAX_GFLOP,
                   metavar="X", help="refuse, before any work, what would cost more than X "
                   f"GFLOP (estimated from the image sizes; default {DEFAULT_MAX_GFLOP:g}, which "
                   "holds a 4-Mpixel photograph with tica-photo; see tica.cost)")


def _option_type(hint) -> type:
    """The type an option parses to: a field's annotation, Optional unwrapped."""
    args = [a for a in get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _add_config_args(p: argparse.ArgumentParser, config: type,
                     notes: dict[str, str] | None = None) -> None:
    """One option per field of the dataclass `config` that carries help: --NAME-WITH-DASHES,
    with the field's type, default, help and any further argparse settings (choices,
    metavar) from the field, so each default is written once. A bool field that defaults to
    True is turned off by --no-NAME. `notes` adds to an option's help."""
    hints = get_type_hints(config)
    for f in dataclasses.fields(config):
        if "help" not in f.metadata:
            continue
        flag, typ = f.name.replace("_", "-"), _option_type(hints[f.name])
        extra = {k: v for k, v in f.metadata.items() if k != "help"}
        note = (notes or {}).get(f.name, "")
        if typ is bool:
            p.add_argument(f"--no-{flag}" if f.default else f"--{flag}", dest=f.name,
                           action="store_false" if f.default else "store_true",
                           help=("do not " if f.default else "") + f.metadata["help"] + note)
            continue
        if "choices" not in extra:
            extra.setdefault("metavar", {int: "N", float: "X"}.get(typ))
        shown = "; default %(default)s" if f.default is not None else ""
        p.add_argument("--" + flag, dest=f.name, type=typ, default=f.default,
                       help=f"{f.metadata['help']}{note}{shown}", **extra)


def _load_model(args: argparse.Namespace, stream: bytes | None = None):
    """The model the flags name; with none, the shipped model the stream's id names."""
    device = getattr(args, "device", "cpu")
    if stream is not None and not (args.model or args.weights):
        return api.load_for_stream(stream, device)
    return api.load(args.model, weights=args.weights, untrained=args.untrained, device=device)


def _read_stream(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TicaError(f"cannot read {path}: {exc.strerror or exc}") from None


def _pick_model(args: argparse.Namespace, sizes: list[tuple[int, int]]) -> str | None:
    """With no --model or --weights, set the preset that suits the images; the line that
    says so (printed once the stream is written, so an error stays one line)."""
    if args.model or args.weights:
        return None
    args.model = api.choose_model(sizes)
    side = max(max(s) for s in sizes)
    return (f"tica: no --model: picked {args.model} (largest side {side} px; up to "
            f"{api.SMALL_IMAGE_SIDE} px: {api.SMALL_IMAGE_MODEL}, larger: {api.PHOTO_MODEL})")


def _default_server_refusal(model, data: bytes) -> str | None:
    """Why a server with ServeConfig's defaults would refuse to classify this stream (or to
    reconstruct it, for a codec without a classifier) with a 413, or None."""
    config = ServeConfig()
    if len(data) > config.max_body_bytes:
        return f"{len(data)} bytes, over --max-body-bytes {config.max_body_bytes}"
    try:
        stream = bitstream.unpack(data, config.limits)
        op = "classify" if "classify" in model.operations else "reconstruct"
        config.budget.check(model, stream.sizes, (op,))
    except BudgetError as exc:
        return f"{exc.summary}; --max-gflop"
    except LimitError as exc:
        return f"{exc}; --max-pixels, --max-side or --max-images"
    return None


def cmd_encode(args: argparse.Namespace) -> int:
    if args.quality is not None and args.target_bpp is not None:
        raise TicaError("--quality and --target-bpp both set the rate: give one of them")
    check_output(args.output, args.images)            # refused before any work
    images = [read_image(p, frame=args.frame) for p in args.images]
    picked = _pick_model(args, [tuple(img.shape[-2:]) for img in images])
    model = _load_model(args)
    budget = Budget(args.max_gflop)
    qualities = args.quality
    if args.target_bpp is not None:
        qualities = api.qualities_for_bpp(model, images, args.target_bpp, budget, args.refine)
    data = api.compress(model, images, quality=qualities, budget=budget, refine=args.refine)
    write_output(args.output, data, args.images)
    if picked:
        print(picked, file=sys.stderr)
    refusal = _default_server_refusal(model, data)
    if refusal:
        print(f"tica: note: a `tica serve` with its default limits would refuse this stream "
              f"({refusal}): start it with a larger limit", file=sys.stderr)
    png = api.png_bytes(images)
    if png is not None and len(data) > png:
        print(f"tica: warning: {args.output} ({len(data)} bytes) is larger than the same "
              f"image(s) as lossless PNG ({png} bytes): the PNG is the smaller file",
              file=sys.stderr)
    pixels = sum(img.shape[1] * img.shape[2] for img in images)
    label = api.describe(model, api.stream_qualities(bitstream.unpack(data)))
    report = {"output": args.output, "model": label, "images": len(images),
              "sizes": [api.size_json(tuple(img.shape[-2:])) for img in images],
              "bytes": len(data), "bpp": 8 * len(data) / pixels, "png_bytes": png}
    if args.target_bpp is not None:
        report["qualities"] = qualities
    out = sys.stderr if args.output == STDOUT else sys.stdout     # the stream owns stdout
    if args.json:
        print(json.dumps(report), file=out)
    else:
        sizes = ", ".join(f"{img.shape[2]}x{img.shape[1]}" for img in images[:4])
        more = f" (+{len(images) - 4} more)" if len(images) > 4 else ""
        print(f"{args.output}: {len(images)} image(s) {sizes}{more} -> {len(data)} bytes, "
              f"{report['bpp']:.4f} bpp  [{report['model']}]", file=out)
    return 0


def _outputs(output: str, count: int) -> list[str]:
    """decode's files for `count` images named by -o: OUT.png, or OUT_0000.png, ... for a
    batch. OutputError for a folder, before any work."""
    if count == 1 or output == STDOUT:
        if count > 1:
            raise TicaError(f"-o - writes one image to standard output; the stream holds "
                            f"{count}: name a file (OUT.png writes OUT_0000.png, ...)")
        return [output]
    path = Path(output)
    if path.name in ("", ".", "..") or path.is_dir() or output.endswith(("/", os.sep)):
        raise OutputError(f"{output} is a folder: name a file (OUT.png writes OUT_0000.png, "
                          f"... for the stream's {count} images)")
    suffix = path.suffix or ".png"
    return [str(path.with_name(f"{path.stem}_{i:04d}{suffix}")) for i in range(count)]


def cmd_decode(args: argparse.Namespace) -> int:
    data = _read_stream(args.stream)
    model = _load_model(args, data)
    stream = api.parse_within(model, data, "reconstruct", budget=Budget(args.max_gflop))
    paths = _outputs(args.output, len(stream.payloads))
    for path in paths:                                 # refused before any work
        check_output(path, [args.stream])
        if path != STDOUT:
            image_format(path)
    images = api.reconstruct(model, stream, budget=None)
    out = sys.stderr if args.output == STDOUT else sys.stdout
    for img, path in zip(images, paths):
        where = write_output(path, image_bytes(img, path), [args.stream])
        print(f"{where}: {img.shape[2]}x{img.shape[1]}", file=out)
    return 0


def _stream_to_classify(args: argparse.Namespace) -> tuple[bytes, int | None, object]:
    """classify's input as a stream: a .tica as it is, or an image encoded here (the model
    picked as encode picks it, at --quality) -> (the stream, the image file's bytes, the
    model that encoded it; None and None for a stream)."""
    raw = _read_stream(args.stream)
    if raw[:len(bitstream.MAGIC)] == bitstream.MAGIC:
        if args.quality is not None:
            raise TicaError(NO_QUALITY)
        return raw, None, None
    image = read_image(raw, frame=args.frame)
    picked = _pick_model(args, [tuple(image.shape[-2:])])     # the rule encode follows
    model = _load_model(args)
    data = api.compress(model, image, quality=args.quality, budget=Budget(args.max_gflop))
    if picked:
        print(picked, file=sys.stderr)
    return data, len(raw), model


def _saving(replaced: int | None, sent: int) -> str:
    if replaced is None:
        return ""
    ratio = replaced / sent
    return (f" instead of the {replaced}-byte file ("
            + (f"{ratio:.1f}x smaller)" if ratio >= 1 else f"{1 / ratio:.1f}x larger)"))


def cmd_classify_remote(args: argparse.Namespace) -> int:
    """Edge side: encode an image locally (or take a .tica as is), send only the bitstream."""
    from .serve.client import classify_remote

    data, replaced, _ = _stream_to_classify(args)
    answer = classify_remote(args.server, data, args.top_k)
    answer["sent_bytes"] = len(data)
    if replaced is not None:
        answer["replaced_bytes"] = replaced
    if args.json:
        print(json.dumps(answer))
        return 0
    print(f"{args.stream}: sent {len(data)} bytes{_saving(replaced, len(data))} to "
          f"{args.server}  [{answer['model']}]")
    _print_classes(answer["images"])
    return 0


def _print_classes(images: list[dict]) -> None:
    for i, entry in enumerate(images):
        top = ", ".join(f"{t['label']} {t['prob']:.3f}" for t in entry["top"])
        print(f"  [{i}] {entry['size']['width']}x{entry['size']['height']}: {top}")


def cmd_classify(args: argparse.Namespace) -> int:
    if args.server:
        return cmd_classify_remote(args)
    data, replaced, model = _stream_to_classify(args)
    model = model or _load_model(args, data)
    stream = api.parse(model, data)
    results = api.classify(model, stream, k=args.top_k, budget=Budget(args.max_gflop))
    report = api.classify_report(model, data, stream, results)
    if replaced is not None:
        report["replaced_bytes"] = replaced
    if args.json:
        print(json.dumps(report))
        return 0
    coded = "" if replaced is None else ", encoded here"
    print(f"{args.stream}: {len(data)} bytes{coded}{_saving(replaced, len(data))}, "
          f"{report['bpp']:.4f} bpp, {len(report['images'])} image(s)  [{report['model']}]")
    _print_classes(report["images"])
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve.run import serve

    serve({f.name: getattr(args, f.name) for f in dataclasses.fields(ServeConfig)},
          Listen(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Listen)}))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_onnx

    model = _load_model(args)
    meta = export_onnx(model, args.onnx, args.quality)
    check = meta["check"]
    print(f"{args.onnx}: analysis.onnx, hyper.onnx, tables.npz, edge.json  "
          f"[{api.describe(model, meta['quality'])}, "
          f"id {meta['model_id']}]")
    print(f"  checked with onnxruntime: y within {check['y_max_abs_diff']:.2g} of PyTorch; "
          f"z, table indexes and means identical")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    info = api.inspect(_read_stream(args.stream))
    if args.json:
        print(json.dumps(info))
        return 0
    name = f" ({info['model']})" if info["model"] else ""
    print(f"tica bitstream v{info['version']}, model id {info['model_id']}{name}, "
          f"{info['images']} image(s), {info['bytes']} bytes "
          f"({info['container_bytes']} of container), {info['bpp']:.4f} bpp")
    for size, n in zip(info["sizes"][:16], info["payload_bytes"]):
        print(f"  {size['width']}x{size['height']}: {n} bytes payload")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from .data import STALE_AFTER_S, cache_dir, cache_entries, clear_cache
    folder = cache_dir()
    if args.clear:
        idle = 0.0 if args.all else STALE_AFTER_S
        removed = clear_cache(idle)
        freed = sum(e.bytes for e in removed)
        print(f"{folder}: removed {len(removed)} item(s), {freed / 2**20:.1f} MiB"
              + ("" if args.all else " (unused for an hour or more; --all: everything)")
              + "; training runs are never removed")
        return 0
    entries = cache_entries()
    if args.json:
        print(json.dumps({"folder": str(folder), "entries": [
            {"path": str(e.path), "kind": e.kind, "bytes": e.bytes,
             "idle_s": round(e.idle_s, 1), "source": e.source} for e in entries]}))
        return 0
    total = sum(e.bytes for e in entries)
    print(f"{folder}: {len(entries)} item(s) tica can make again, {total / 2**20:.1f} MiB "
          f"(`tica cache --clear` removes those unused for an hour)")
    for e in entries[:40]:
        since = (f"{e.idle_s / 3600:.1f} h" if e.idle_s >= 3600 else f"{e.idle_s / 60:.0f} min")
        source = f"  from {e.source}" if e.source else ""
        print(f"  {e.bytes / 2**20:9.1f} MiB  {e.kind:8s} unused {since:>8s}  "
              f"{e.path.name}{source}")
    if len(entries) > 40:
        print(f"  (+{len(entries) - 40} more)")
    return 0


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


# this repository's layout: the CLI's fallback when TICA_DATA is unset, never a library default
DATA_ENV, DATA_FALLBACK, TRAIN_DATA = "TICA_DATA", "../shared/data", "cifar10-jpeg.tar.gz"


def data_root() -> str:
    """The data folder: $TICA_DATA, else ../shared/data."""
    return os.environ.get(DATA_ENV) or DATA_FALLBACK


def default_train_data() -> str:
    """What `tica train` trains on without --data: CIFAR-10 in the data folder."""
    path = Path(data_root()) / TRAIN_DATA
    if not path.exists():
        raise TicaError(f"no --data given and no {path}: pass --data, or set {DATA_ENV} to the "
                        f"folder that holds {TRAIN_DATA}")
    return str(path)


def cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    if not args.run_dir:
        raise TicaError("tica train needs --run-dir DIR (a plan of several runs: python -m "
                        "tica_tools.plan run PLAN, in the repository)")
    fields = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__ and v is not None}
    bad = [kv for kv in args.set or [] if "=" not in kv or not kv.split("=", 1)[0]]
    if bad:
        raise TicaError(f"--set {bad[0]}: give FIELD=VALUE (e.g. --set depth=6)")
    fields["model_overrides"] = {k: _parse_value(v) for k, v in
                                 (kv.split("=", 1) for kv in args.set or [])}
    if "data" not in fields:
        fields["data"] = default_train_data()
    result = train(TrainConfig(**fields), resume=args.resume)
    print(f"weights: {result.weights} ({result.steps} steps)")
    return 0


def _eval_classifier(model, data, args: argparse.Namespace) -> int:
    """A pixel classifier (vit-pixel-*): top-1 / top-5 on the clean images, one row."""
    from .evaluate import Uncompressed, evaluate

    if args.quality not in (None, "all"):
        raise TicaError(f"{api.describe(model)} is a pixel classifier: it has no --quality")
    if data.split is None:
        raise TicaError(f"{api.describe(model)} is a classifier: it needs labelled data "
                        f"(a class-per-folder split), and {args.data} is a folder of images")
    r = evaluate(Uncompressed(model, name=model.config.name), data.batches()).to_dict()
    if args.json:
        print(json.dumps({"results": [r]}))
    else:
        print(f"{api.describe(model)}: top-1 {r['top1']:.4f}  top-5 {r['top5']:.4f}  clean "
              f"pixels ({r['images']} images, {r['seconds']:.0f} s)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import eval_data, evaluate_curve

    data = eval_data(args.data, args.split, limit=args.limit)
    model = api.load(args.model, weights=args.weights, untrained=args.untrained,
                     device=args.device)
    if not isinstance(model, CompressionModel):
        return _eval_classifier(model, data, args)
    qualities = None                                # the standard points
    if args.quality not in (None, "all"):
        try:
            qualities = [float(q) for q in args.quality.split(",")]
        except ValueError:
            raise TicaError(f"--quality takes numbers or 'all', got {args.quality!r}") from None
    results = []
    for result in evaluate_curve(model, data, qualities, args.refine):
        results.append(r := result.to_dict())
        if not args.json:
            top = (f"top-1 {r['top1']:.4f}  top-5 {r['top5']:.4f}  " if r["top1"] is not None
                   else "")
            z = f"  z {100 * r['z_fraction']:.1f}% of payload" if r["z_fraction"] is not None else ""
            print(f"{api.describe(model, r['quality'])}: {top}bpp {r['bpp']:.4f}  "
                  f"PSNR {r['psnr']:.2f} dB  MS-SSIM {r['ms_ssim']:.4f}{z}  "
                  f"({r['images']} images, {r['seconds']:.0f} s)")
    if args.json:
        print(json.dumps({"results": results}))
    return 0


def cmd_shards(args: argparse.Namespace) -> int:
    from .data import write_shards

    paths = write_shards(args.data, args.split, args.out, per_shard=args.per_shard)
    print(f"{len(paths)} shard(s) in {args.out}")
    return 0


def _add_work_args(p: argparse.ArgumentParser, func, encode: bool = False,
                   quality: str | None = QUALITY_HELP) -> None:
    """What every coding subcommand takes: the model, where it runs, the work budget."""
    _add_model_args(p, encode=encode, quality=quality)
    _add_runtime_args(p)
    _add_budget_arg(p)
    p.set_defaults(func=func)


def _encode_parser(sub) -> None:
    p = sub.add_parser("encode", help="image(s) -> tica bitstream")
    p.add_argument("images", nargs="+", metavar="IMG", help="PNG/JPEG/WebP/... image(s); "
                   "several make one batch stream")
    p.add_argument("-o", "--output", required=True, metavar="OUT.tica",
                   help="the stream, written atomically (never over an input, a folder or a "
                        "device; a symbolic link's target is replaced); - for standard output")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.add_argument("--target-bpp", dest="target_bpp", type=float, metavar="X",
                   help="variable-rate models: per image, the highest quality whose stream takes "
                        "at most X bits per pixel (found by bisection over real streams)")
    p.add_argument("--refine", type=int, default=0, metavar="STEPS",
                   help="encoder-side refinement: STEPS optimisation steps on each image's "
                        "latents (a smaller or better stream for the same decoder; each step "
                        "costs about three reconstructions; 20 is a good start; default 0)")
    _add_frame_arg(p)
    _add_work_args(p, cmd_encode, encode=True)


def _decode_parser(sub) -> None:
    p = sub.add_parser("decode", help="tica bitstream -> image(s)")
    p.add_argument("stream", metavar="IN.tica", help="the bitstream to decode")
    p.add_argument("-o", "--output", required=True, metavar="OUT.png",
                   help="output image (.png, .jpg, .webp), written as encode writes; a batch "
                        "writes OUT_0000.png, OUT_0001.png, ...; - writes one PNG to standard "
                        "output")
    _add_work_args(p, cmd_decode, quality=None)


def _classify_parser(sub) -> None:
    p = sub.add_parser("classify", help="classes straight from a tica bitstream (no pixels)")
    p.add_argument("stream", metavar="IN.tica", help="a bitstream, or an image: encoded here first "
                   "(the model picked as encode picks it), and with --server sent as a "
                   "bitstream")
    p.add_argument("--top-k", type=int, default=TOP_K, metavar="K",
                   help="how many classes to give per image, most probable first (default "
                        "%(default)s)")
    p.add_argument("--server", metavar="URL", help="ask a `tica serve` server (e.g. "
                   "http://127.0.0.1:8000) instead of decoding here")
    p.add_argument("--json", action="store_true", help="print JSON: {model, model_id, bytes, bpp, "
                   "images: [{size, bytes, bpp, quality, top: [{label, index, prob}]}]}")
    _add_frame_arg(p)
    _add_work_args(p, cmd_classify, quality="with an image: the rate to encode it "
                   "at (a stream records its own quality); " + QUALITY_HELP)


def _serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="HTTP service: classify, reconstruct and encode bitstreams")
    _add_config_args(p, Listen)
    _add_config_args(p, ServeConfig)
    p.set_defaults(func=cmd_serve)


def _export_parser(sub) -> None:
    p = sub.add_parser("export", help="write the encoder side as ONNX for edge devices")
    p.add_argument("--onnx", required=True, metavar="DIR",
                   help="the folder to write analysis.onnx, hyper.onnx, tables.npz and "
                        "edge.json into")
    _add_model_args(p)
    p.set_defaults(func=cmd_export)


def _info_parser(sub) -> None:
    p = sub.add_parser("info", help="what a bitstream holds (no model needed)")
    p.add_argument("stream", metavar="IN.tica", help="the bitstream to describe")
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    p.set_defaults(func=cmd_info)


def _train_parser(sub) -> None:
    """`tica train`: one option per TrainConfig field with help (tica.config), plus the
    run folder, model overrides and resume. Plans of several runs are a tool of this
    repository (python -m tica_tools.plan run PLAN), not part of the library."""
    p = sub.add_parser("train", help="train a model (step 1 or 2 of the paper's recipe)")
    p.add_argument("--run-dir", dest="run_dir", help="where state, metrics and the export go "
                   "(required)")
    _add_config_args(p, TrainConfig, notes={
        "data": f"; default ${DATA_ENV}/{TRAIN_DATA} (${DATA_ENV} unset: {DATA_FALLBACK})"})
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", help="model config override")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR's checkpoint")
    p.set_defaults(func=cmd_train)


def _eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="top-1/top-5, bpp, PSNR, MS-SSIM over a split, from real bitstreams")
    p.add_argument("--data", required=True, metavar="DIR_OR_ARCHIVE",
                   help="an ImageFolder split's folder or archive (e.g. cifar10-jpeg.tar.gz), "
                   "or a folder of images of any sizes, without labels (e.g. kodak/)")
    p.add_argument("--split", help="default: the held-out split, test or val")
    p.add_argument("--limit", type=int, help="evaluate N images spread over the whole split, "
                   "every class in proportion (a folder of images: its first N by name)")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="the preset whose shipped weights to evaluate (default %(default)s)")
    p.add_argument("--weights", metavar="FILE", help="a tica checkpoint to evaluate instead")
    p.add_argument("--quality", default="all",
                   help="quality, comma-separated qualities, or 'all' (default): the standard points")
    p.add_argument("--refine", type=int, default=0, metavar="STEPS",
                   help="encode with STEPS steps of refinement, as `tica encode --refine` does")
    p.add_argument("--untrained", action="store_true", help="allow an untrained preset")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    _add_runtime_args(p)
    p.set_defaults(func=cmd_eval)


def _shards_parser(sub) -> None:
    p = sub.add_parser("shards", help="write an ImageFolder split as WebDataset tar shards")
    p.add_argument("--data", required=True, metavar="DIR_OR_ARCHIVE",
                   help="an ImageFolder data set's folder or archive")
    p.add_argument("--split", default="train", help="the split to write (default %(default)s)")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder for the shards")
    p.add_argument("--per-shard", dest="per_shard", type=int, default=SHARD_IMAGES, metavar="N",
                   help="images per shard (default %(default)s)")
    p.set_defaults(func=cmd_shards)


def _cache_parser(sub) -> None:
    p = sub.add_parser("cache", help="what tica keeps in $TICA_CACHE (extracted archives, "
                       "decoded splits), and clearing it")
    p.add_argument("--clear", action="store_true", help="remove what nothing has used for an "
                   "hour (training runs are never removed)")
    p.add_argument("--all", action="store_true", help="with --clear: whatever its last use")
    p.add_argument("--json", action="store_true", help="print the listing as JSON")
    p.set_defaults(func=cmd_cache)


SUBCOMMANDS = (_encode_parser, _decode_parser, _classify_parser, _serve_parser, _export_parser,
               _info_parser, _train_parser, _eval_parser, _shards_parser, _cache_parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tica", description=(
        "Compress images into a real bitstream, classify straight from it, decode it."))
    parser.add_argument("--version", action="version", version=f"tica {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


class ProgressBar:
    """What a banded run (a large photograph, tica.nn.bands) has done, on one terminal line."""

    WIDTH = 30

    def __init__(self, stream) -> None:
        self.stream = stream

    def __call__(self, label: str, done: int, total: int) -> None:
        fill = self.WIDTH * done // total
        self.stream.write(f"\rtica: {label:3s} [{'#' * fill}{'.' * (self.WIDTH - fill)}] "
                          f"{done}/{total}")
        if done == total:
            self.stream.write("\r" + " " * (self.WIDTH + 24) + "\r")
        self.stream.flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "top_k", 1) < 1:
        parser.error("--top-k must be at least 1")
    try:
        if getattr(args, "coder_threads", None) is not None:
            set_coder_threads(args.coder_threads)
        if not sys.stderr.isatty():
            return args.func(args)
        with bands.reporting(ProgressBar(sys.stderr)):
            return args.func(args)
    except BudgetError as exc:
        print(f"tica: error: {exc.summary}: pass --max-gflop {math.ceil(exc.cost)} to allow it",
              file=sys.stderr)
        return 1
    except TicaError as exc:
        print(f"tica: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:             # `tica ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
