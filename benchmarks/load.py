"""Load test of `tica serve` on loopback, bounded in count and time.

    python benchmarks/load.py                       # the full run (a few minutes on 2 cores)
    python benchmarks/load.py --requests 200 --quick

1. Throughput at concurrency 1, 8 and 32, with micro-batching (the default 2 ms window) and
   without (--no-batching), each against its own fresh server process.
2. The soak: N requests at concurrency 32 with 5% corrupt streams: every answer is checked
   against the library's own classification of the same stream (0 lost or mismatched
   answers), every corrupt stream must get a 4xx, no 5xx at all; p50/p99 latency,
   throughput, and the server's resident memory before and after.
Writes docs/benchmarks/load.{md,json}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import httpx

import tica
from tica.data import load_split
from tica.serve.run import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def start_server(batching: bool, threads: int) -> ServerProcess:
    return ServerProcess("--threads", str(threads), *([] if batching else ["--no-batching"]))


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
                start = time.perf_counter()
                try:
                    r = await client.post(url + "/v1/classify?top_k=1", content=bodies[i],
                                          headers={"Content-Type": "application/octet-stream"})
                    results[i] = (r.status_code, r.json(), time.perf_counter() - start)
                except (httpx.HTTPError, ValueError) as exc:
                    results[i] = (-1, {"error": repr(exc)}, time.perf_counter() - start)
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return results, time.perf_counter() - start


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="soak requests")
    parser.add_argument("--throughput-requests", type=int, default=300)
    parser.add_argument("--corrupt", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=2, help="server torch threads")
    parser.add_argument("--timeout", type=float, default=60.0, help="per request, seconds")
    parser.add_argument("--quick", action="store_true", help="concurrency 1 and 8 only")
    parser.add_argument("--rss-samples", type=int, default=10,
                        help="soak chunks, the server's memory read after each")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args(argv)
    rng = random.Random(0)

    model = tica.load("tica-cifar")
    split = load_split(DATA / "cifar10-jpeg.tar.gz", "test", limit=500)
    streams = [tica.compress(model, split.images[i].float() / 255) for i in range(len(split))]
    expected = [int(tica.classify_logits(model, s).argmax()) for s in streams]

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
        metrics = httpx.get(server.url + "/metrics").text
    finally:
        server.stop()
    server_errors = sum(1 for s, _, _ in results if s >= 500 or s < 0)
    lost = sum(1 for r in results if r is None)
    mismatched = sum(1 for (s, body, _), t in zip(results, truth)
                     if t is not None and (s != 200 or body["images"][0]["top"][0]["index"] != t))
    corrupt_ok = sum(1 for (s, _, _), t in zip(results, truth) if t is None and s in (400, 413, 422))
    n_corrupt = sum(1 for t in truth if t is None)
    batches = next((int(float(l.split()[-1])) for l in metrics.splitlines()
                    if l.startswith("tica_batches_total")), 0)
    soak = {"requests": args.requests, "concurrency": 32, "corrupt": n_corrupt,
            "corrupt_refused_4xx": corrupt_ok, "server_errors": server_errors, "lost": lost,
            "mismatched": mismatched, "req_s": args.requests / wall,
            "p50_ms": 1e3 * pct([t for *_, t in results], 0.5),
            "p99_ms": 1e3 * pct([t for *_, t in results], 0.99),
            "rss_before_mb": rss_before, "rss_after_mb": rss_after, "rss_mb_after_requests": rss_series,
            "batches": batches, "wall_s": wall, "model": tica.describe(model)}
    print(soak)
    report = render(rows, soak, args)
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "load.md").write_text(report)
    (args.out / "load.json").write_text(json.dumps({"throughput": rows, "soak": soak}, indent=1))
    return 0 if server_errors == lost == mismatched == 0 and corrupt_ok == n_corrupt else 1


def render(rows: list[dict], soak: dict, args) -> str:
    base = {(r["concurrency"]): r["req_s"] for r in rows if not r["batching"]}
    L = ["# Service under load", "",
         f"Generated by `python benchmarks/load.py` on {platform.processor() or platform.machine()}, "
         f"{os.cpu_count()} cores; server and client share them (loopback), server torch threads "
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


if __name__ == "__main__":
    sys.exit(main())
