"""Load test of `tica serve` on loopback, bounded in count and time.

    python benchmarks/load.py                       # the full run (a few minutes on 2 cores)
    python benchmarks/load.py --requests 200 --quick

1. Throughput at concurrency 1, 8 and 32, with micro-batching (the default 2 ms window) and
   without (--no-batching), each against its own fresh server process.
2. The soak: N requests at concurrency 32 with 5% corrupt streams: every answer is checked
   against the library's own classification of the same stream (0 lost or mismatched
   answers), every corrupt stream must get a 4xx, no 5xx at all; p50/p99 latency,
   throughput, and the server's resident memory before and after.
3. The mixed run (fair service): a few heavy streams (default: the issue's 1024x1024 image for
   tica-cifar, 319 GFLOP to classify with windowed attention, inside the default budget;
   --heavy-side 2000, 1,224 GFLOP to classify, is the largest square stream the budget lets
   the encoder write: reconstructing it would cost 1,986 of the 2,000; --heavy-encodes N adds
   N encodes of that image as a PNG, which /v1/encode gives to tica-photo) in flight while many
   32x32 CIFAR requests arrive at concurrency 20: the small requests' p50/p99 alone and with
   the heavy ones, the heavy ones' latency, deadline answers (504) and every other 5xx (must
   be 0); and, as the control, the same against one lane with no batch cost cap
   (--max-batch-gflop inf), the scheduling before issue 11.
Writes docs/benchmarks/load.{md,json} (1 and 2) and load_mixed.{md,json} (3).

    python benchmarks/load.py --mixed-only --mixed-requests 200     # only the mixed run
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from tica.cli import data_root
import tica
from tica.cost import DEFAULT_MAX_GFLOP
from tica.data import load_split
from tica.image import encode_png
from tica.serve import ServeConfig
from tica.entropy.parallel import available_cores
from tica_tools.timing import cpu_name, write_benchmark
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _server import ServerProcess  # noqa: E402  (the tests' server launcher, one copy)

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(data_root())


def start_server(batching: bool, threads: int, *extra: str) -> ServerProcess:
    return ServerProcess("--threads", str(threads), *([] if batching else ["--no-batching"]), *extra)


def corrupt(data: bytes, rng: random.Random) -> bytes:
    """A damaged stream: a flipped bit, a truncation or a wrong model id."""
    kind = rng.choice(("flip", "truncate", "model"))
    out = bytearray(data)
    if kind == "flip":
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        del out[rng.randrange(1, len(out)):]
    else:
        out[3] ^= 0xFF                       # another model id (the CRC catches it too)
    return bytes(out)


async def post(client: httpx.AsyncClient, url: str, body: bytes, path: str = "/v1/classify?top_k=1"
               ) -> tuple[int, dict | None, float]:
    """POST one body (a stream to /v1/classify by default): (status, json, seconds); status -1
    if no answer. An answer that is not JSON (an encoded stream) reads as {"bytes": N}."""
    start = time.perf_counter()
    try:
        r = await client.post(url + path, content=body,
                              headers={"Content-Type": "application/octet-stream"})
        answer = r.json() if r.headers.get("content-type", "").startswith("application/json") \
            else {"bytes": len(r.content)}
        return r.status_code, answer, time.perf_counter() - start
    except (httpx.HTTPError, ValueError) as exc:
        return -1, {"error": repr(exc)}, time.perf_counter() - start


async def fire(url: str, bodies: list[bytes], concurrency: int, timeout: float
               ) -> tuple[list[tuple[int, dict | None, float]], float]:
    """POST every body to /v1/classify with `concurrency` in flight; (status, json, s) each."""
    results: list = [None] * len(bodies)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(bodies)):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        async def worker():
            while not queue.empty():
                i = queue.get_nowait()
                results[i] = await post(client, url, bodies[i])
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return results, time.perf_counter() - start


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="soak requests")
    parser.add_argument("--throughput-requests", type=int, default=300)
    parser.add_argument("--corrupt", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=2, help="server torch threads")
    parser.add_argument("--timeout", type=float, default=60.0, help="per request, seconds")
    parser.add_argument("--quick", action="store_true", help="concurrency 1 and 8 only")
    parser.add_argument("--rss-samples", type=int, default=10,
                        help="soak chunks, the server's memory read after each")
    parser.add_argument("--mixed-only", action="store_true", help="only the mixed run")
    parser.add_argument("--no-mixed", action="store_true", help="skip the mixed run")
    parser.add_argument("--mixed-requests", type=int, default=400, help="small requests per mixed run")
    parser.add_argument("--mixed-concurrency", type=int, default=20)
    parser.add_argument("--heavy-streams", type=int, default=2, help="heavy requests in flight")
    parser.add_argument("--heavy-side", type=int, default=1024,
                        help="side of the heavy streams' one image (for tica-cifar)")
    parser.add_argument("--heavy-encodes", type=int, default=0,
                        help="heavy-side PNGs posted to /v1/encode beside the heavy streams")
    parser.add_argument("--deadline-s", type=float, help="the server's (default: its own)")
    parser.add_argument("--max-gflop", type=float, default=DEFAULT_MAX_GFLOP,
                        help="the server's budget, and the heavy stream's")
    parser.add_argument("--no-control", action="store_true",
                        help="skip the one-lane control of the mixed run")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model = tica.load("tica-cifar")
    split = load_split(DATA / "cifar10-jpeg.tar.gz", "test", limit=500)
    streams = [tica.compress(model, split.images[i].float() / 255) for i in range(len(split))]
    expected = [int(tica.classify_logits(model, s).argmax()) for s in streams]
    args.out.mkdir(parents=True, exist_ok=True)
    ok = True
    if not args.mixed_only:
        ok &= throughput_and_soak(args, model, streams, expected)
    if not args.no_mixed:
        ok &= mixed(args, model, streams, expected)
    return 0 if ok else 1


def metric(url: str, name: str) -> int:
    """A counter from the server's /metrics."""
    text = httpx.get(url + "/metrics").text
    return next((int(float(l.split()[-1])) for l in text.splitlines() if l.startswith(name + " ")), 0)


def throughput(args, streams: list[bytes]) -> list[dict]:
    rows = []
    for batching in (True, False):
        server = start_server(batching, args.threads)
        try:
            for concurrency in ((1, 8) if args.quick else (1, 8, 32)):
                n = args.throughput_requests if concurrency > 1 else args.throughput_requests // 3
                bodies = [streams[i % len(streams)] for i in range(n)]
                results, wall = asyncio.run(fire(server.url, bodies, concurrency, args.timeout))
                ok = sum(1 for s, _, _ in results if s == 200)
                rows.append({"batching": batching, "concurrency": concurrency, "requests": n,
                             "ok": ok, "req_s": n / wall,
                             "p50_ms": 1e3 * pct([t for *_, t in results], 0.5),
                             "p99_ms": 1e3 * pct([t for *_, t in results], 0.99)})
                print(rows[-1])
        finally:
            server.stop()
    return rows


def throughput_and_soak(args, model, streams: list[bytes], expected: list[int]) -> bool:
    rows = throughput(args, streams)
    rng = random.Random(0)
    server = start_server(True, args.threads)
    try:
        rss_before = server.rss_mb()
        bodies, truth = [], []
        for i in range(args.requests):
            k = i % len(streams)
            if rng.random() < args.corrupt:
                bodies.append(corrupt(streams[k], rng))
                truth.append(None)
            else:
                bodies.append(streams[k])
                truth.append(expected[k])
        # in equal chunks, the server's memory read after each: does it grow or level off?
        results, wall, rss_series = [], 0.0, []
        step = -(-len(bodies) // max(1, args.rss_samples))
        for start in range(0, len(bodies), step):
            part, seconds = asyncio.run(fire(server.url, bodies[start:start + step], 32, args.timeout))
            results += part
            wall += seconds
            rss_series.append([start + len(part), server.rss_mb()])
        rss_after = rss_series[-1][1]
        batches = metric(server.url, "tica_batches_total")
    finally:
        server.stop()
    server_errors = sum(1 for s, _, _ in results if s >= 500 or s < 0)
    lost = sum(1 for r in results if r is None)
    mismatched = sum(1 for (s, body, _), t in zip(results, truth)
                     if t is not None and (s != 200 or body["images"][0]["top"][0]["index"] != t))
    corrupt_ok = sum(1 for (s, _, _), t in zip(results, truth) if t is None and s in (400, 413, 422))
    n_corrupt = sum(1 for t in truth if t is None)
    soak = {"requests": args.requests, "concurrency": 32, "corrupt": n_corrupt,
            "corrupt_refused_4xx": corrupt_ok, "server_errors": server_errors, "lost": lost,
            "mismatched": mismatched, "req_s": args.requests / wall,
            "p50_ms": 1e3 * pct([t for *_, t in results], 0.5),
            "p99_ms": 1e3 * pct([t for *_, t in results], 0.99),
            "rss_before_mb": rss_before, "rss_after_mb": rss_after, "rss_mb_after_requests": rss_series,
            "batches": batches, "wall_s": wall, "model": tica.describe(model)}
    print(soak)
    report = render(rows, soak, args)
    write_benchmark(args.out, "load", report, {"throughput": rows, "soak": soak})
    return server_errors == lost == mismatched == 0 and corrupt_ok == n_corrupt


# ---- the mixed run ----------------------------------------------------------------------------
def heavy_image(side: int) -> torch.Tensor:
    """A side x side photograph: the first Kodak image, resized (noise without the data)."""
    photos = sorted((DATA / "kodak").glob("*.png"))
    if photos:
        with Image.open(photos[0]) as img:
            pixels = np.asarray(img.convert("RGB").resize((side, side), Image.LANCZOS))
        return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255
    return torch.rand(3, side, side, generator=torch.Generator().manual_seed(0))


def heavy_stream(model, side: int, max_gflop: float) -> bytes:
    """A maximum-cost stream: one side x side photograph for `model`."""
    return tica.compress(model, heavy_image(side), budget=tica.Budget(max_gflop))


async def mixed_load(url: str, smalls: list[bytes], heavy: bytes, heavy_streams: int,
                     concurrency: int, timeout: float, settle_s: float = 1.0,
                     encode: bytes = b"", heavy_encodes: int = 0):
    """`heavy_streams` heavy requests (and `heavy_encodes` encodes of the image file `encode`,
    the server picking the model) at once, then (`settle_s` later, once the server holds
    them) the small ones at `concurrency`: (small results, heavy results, whether a heavy
    one was still unanswered when the last small one answered)."""
    async with httpx.AsyncClient(timeout=timeout) as client:
        start = time.perf_counter()
        heavy_tasks = [asyncio.create_task(post(client, url, heavy)) for _ in range(heavy_streams)]
        heavy_tasks += [asyncio.create_task(post(client, url, encode, "/v1/encode"))
                        for _ in range(heavy_encodes)]
        if heavy_tasks:
            await asyncio.sleep(settle_s)
        small_results, _ = await fire(url, smalls, concurrency, timeout)
        smalls_done = time.perf_counter() - start
        heavy_results = list(await asyncio.gather(*heavy_tasks))
    return small_results, heavy_results, any(t > smalls_done for *_, t in heavy_results)


def is_deadline(status: int, body: dict | None) -> bool:
    return status == 504 and (body or {}).get("error") == "DeadlineError"


def summarize(scheduling: str, small: list, heavy: list, in_flight: bool, truth: list[int]) -> dict:
    seconds = [t for *_, t in small]
    answers = small + heavy
    return {"scheduling": scheduling, "heavy_requests": len(heavy), "small_requests": len(small),
            "small_ok": sum(1 for s, *_ in small if s == 200),
            "small_mismatched": sum(1 for (s, body, _), t in zip(small, truth)
                                    if s == 200 and body["images"][0]["top"][0]["index"] != t),
            "small_p50_ms": 1e3 * pct(seconds, 0.5), "small_p99_ms": 1e3 * pct(seconds, 0.99),
            "small_max_ms": 1e3 * max(seconds),
            "small_within_5s": sum(1 for s, _, t in small if s == 200 and t <= 5.0),
            "heavy_status": [s for s, *_ in heavy], "heavy_s": [t for *_, t in heavy],
            "heavy_in_flight_throughout": in_flight,
            "deadline_answers": sum(1 for s, body, _ in answers if is_deadline(s, body)),
            "other_5xx": sum(1 for s, body, _ in answers
                             if (s >= 500 or s < 0) and not is_deadline(s, body))}


def mixed(args, model, streams: list[bytes], expected: list[int]) -> bool:
    smalls = [streams[i % len(streams)] for i in range(args.mixed_requests)]
    truth = [expected[i % len(streams)] for i in range(args.mixed_requests)]
    heavy = heavy_stream(model, args.heavy_side, args.max_gflop)
    encode = encode_png(heavy_image(args.heavy_side)) if args.heavy_encodes else b""
    common = ["--max-gflop", str(args.max_gflop)] + (
        ["--deadline-s", str(args.deadline_s)] if args.deadline_s else [])
    setups = [("cost-capped lanes (default)", [])]
    if not args.no_control:
        setups.append(("one lane, no cost cap (--max-batch-gflop inf)", ["--max-batch-gflop", "inf"]))
    runs = []
    for scheduling, flags in setups:
        server = start_server(True, args.threads, *common, *flags)
        try:
            asyncio.run(fire(server.url, smalls[:40], args.mixed_concurrency, args.timeout))  # warm
            if not flags:
                alone, _ = asyncio.run(fire(server.url, smalls, args.mixed_concurrency, args.timeout))
                runs.append(summarize(scheduling, alone, [], False, truth))
                print(runs[-1])
            small, heavy_results, in_flight = asyncio.run(mixed_load(
                server.url, smalls, heavy, args.heavy_streams, args.mixed_concurrency, args.timeout,
                encode=encode, heavy_encodes=args.heavy_encodes))
            runs.append({**summarize(scheduling, small, heavy_results, in_flight, truth),
                         "expired": metric(server.url, "tica_expired_requests_total"),
                         "heavy_pieces": metric(server.url, "tica_heavy_pieces_total")})
            print(runs[-1])
        finally:
            server.stop()
    size = (args.heavy_side, args.heavy_side)
    photo = tica.load(tica.choose_model([size]))
    heavy_info = {"side": args.heavy_side, "bytes": len(heavy), "model": tica.describe(model),
                  "gflop": model.cost(size, "classify"), "encodes": args.heavy_encodes,
                  "encode_bytes": len(encode), "encode_model": tica.describe(photo),
                  "encode_gflop": photo.cost(size, "encode")}
    report = render_mixed(runs, heavy_info, args)
    write_benchmark(args.out, "load_mixed", report, {"heavy": heavy_info, "runs": runs})
    fair = runs[:2]
    return (all(r["other_5xx"] == 0 and r["small_mismatched"] == 0 for r in runs)
            and all(r["small_within_5s"] == r["small_requests"] for r in fair))


def render(rows: list[dict], soak: dict, args) -> str:
    base = {(r["concurrency"]): r["req_s"] for r in rows if not r["batching"]}
    L = ["# Service under load", "",
         f"Generated by `python benchmarks/load.py` on {cpu_name()}, {available_cores()} cores; server and client share them (loopback), server torch threads "
         f"{args.threads}. Each request is one {soak['model']} bitstream of a CIFAR-10 test image "
         "(about 1.2 kB) to /v1/classify.", "",
         "## Throughput", "",
         "| micro-batching | concurrency | requests | req/s | vs no batching | p50 ms | p99 ms |",
         "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = r["req_s"] / base[r["concurrency"]] if r["concurrency"] in base else float("nan")
        L.append(f"| {'on (2 ms window)' if r['batching'] else 'off'} | {r['concurrency']} | {r['requests']} | "
                 f"{r['req_s']:.0f} | {ratio:.2f}x | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |")
    s = soak
    L += ["", "## Soak", "",
          f"{s['requests']} requests at concurrency {s['concurrency']}, {s['corrupt']} of them corrupt "
          f"(a flipped bit, a truncation or another model's id): "
          f"**{s['server_errors']} server errors, {s['lost']} lost, {s['mismatched']} mismatched answers**; "
          f"{s['corrupt_refused_4xx']}/{s['corrupt']} corrupt streams refused with a 4xx. "
          f"{s['req_s']:.0f} req/s, p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, "
          f"{s['batches']} batched passes. Server memory (RSS) {s['rss_before_mb']:.0f} MB before, "
          f"{s['rss_after_mb']:.0f} MB after.", "",
          "Server memory during the soak (RSS after each chunk of requests):", "",
          "| requests done | RSS MB |", "|---:|---:|"]
    L += [f"| {n} | {mb:.0f} |" for n, mb in s["rss_mb_after_requests"]]
    L += [""]
    return "\n".join(L)


def render_mixed(runs: list[dict], heavy: dict, args) -> str:
    alone = runs[0]["small_p99_ms"]
    deadline = args.deadline_s or ServeConfig.deadline_s
    L = ["# Fair service under mixed load", "",
         f"Generated by `python benchmarks/load.py --mixed-only --mixed-requests "
         f"{args.mixed_requests} --heavy-streams {args.heavy_streams} --heavy-side {heavy['side']}"
         f"{f' --heavy-encodes {args.heavy_encodes}' if args.heavy_encodes else ''}` "
         f"on {cpu_name()}, {available_cores()} cores; server and "
         f"client share them (loopback), server torch threads {args.threads}. Small requests: "
         f"{runs[0]['small_requests']} one-image {heavy['model']} streams of CIFAR-10 test images "
         f"(32x32, about 1.2 kB) to /v1/classify at concurrency {args.mixed_concurrency}. Heavy "
         f"requests: {args.heavy_streams} at once, sent 1 s before the small ones, each one "
         f"{heavy['side']}x{heavy['side']} image for the same model ({heavy['bytes']:,} bytes, "
         f"about {heavy['gflop']:,.0f} GFLOP to classify, inside the budget of "
         f"{args.max_gflop:,.0f})"
         + (f"; and {heavy['encodes']} PNG(s) of the same image ({heavy['encode_bytes']:,} bytes) "
            f"to /v1/encode, which picks {heavy['encode_model']} (about "
            f"{heavy['encode_gflop']:,.0f} GFLOP to encode)" if heavy["encodes"] else "")
         + f". Server deadline {deadline:g} s.", "",
         "| scheduling | heavy requests | small ok | small p50 ms | small p99 ms | small max ms "
         "| p99 vs alone | heavy answers: status in s | deadline answers (504) | other 5xx |",
         "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in runs:
        answers = ", ".join(f"{s} in {t:.1f}" for s, t in zip(r["heavy_status"], r["heavy_s"]))
        L.append(f"| {r['scheduling']} | {r['heavy_requests']} | {r['small_ok']}/{r['small_requests']} "
                 f"| {r['small_p50_ms']:.0f} | {r['small_p99_ms']:.0f} | {r['small_max_ms']:.0f} "
                 f"| {r['small_p99_ms'] / alone:.1f}x | {answers or '-'} | {r['deadline_answers']} "
                 f"| {r['other_5xx']} |")
    if len(runs) > 1:
        f = runs[1]
        met = f["small_within_5s"] == f["small_requests"] and f["other_5xx"] == 0
        L += ["", f"Target (issue 11: with heavy requests present, every small request answers "
              f"within 5 s; no 5xx other than deadline answers): **{'met' if met else 'not met'}**: "
              f"{f['small_within_5s']}/{f['small_requests']} within 5 s (the slowest in "
              f"{f['small_max_ms'] / 1e3:.2f} s), {f['other_5xx']} other 5xx; a heavy request was "
              f"{'still' if f['heavy_in_flight_throughout'] else 'no longer'} in flight when the "
              f"last small one answered. {f['expired']} request(s) dropped at their deadline "
              f"without running, {f['heavy_pieces']} heavy piece(s) run."]
    return "\n".join(L + [""])


if __name__ == "__main__":
    sys.exit(main())
