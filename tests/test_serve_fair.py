"""Fair service under mixed load: a per-request deadline (504, work dropped, the server goes
on), micro-batches bounded by estimated cost, and small requests that keep answering while
a heavy one runs. Heavy work is stood in for by a sleep in the model call, so the tests are
about scheduling, take seconds, and do not depend on how loaded the machine is."""

from __future__ import annotations

import asyncio
import io
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from PIL import Image

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

import tica  # noqa: E402
from tica import api  # noqa: E402
from tica.bitstream import Stream  # noqa: E402
from tica.cli import build_parser  # noqa: E402
from tica.errors import ConfigError, DeadlineError  # noqa: E402
from tica.serve import ServeConfig, create_app  # noqa: E402
from tica.serve.batcher import MicroBatcher  # noqa: E402

OCTET = {"Content-Type": "application/octet-stream"}
HOLD_S = 5.0            # how long the stand-in heavy work holds its pass


@pytest.fixture(scope="module")
def model():
    return tica.load("tica-cifar")


def _stream(model, side: int, seed: int = 0) -> bytes:
    torch.manual_seed(seed)
    return tica.compress(model, torch.rand(3, side, side))


@pytest.fixture(scope="module")
def small(model):
    return _stream(model, 32)


class Passes:
    """Stands in for an app's batcher.execute: records the image sizes of every pass, and a
    pass with an image over `side` px first sleeps `hold_s` (heavy work, without the CPU);
    with `fake`, it then answers zeros instead of running the model."""

    def __init__(self, app, side: int, hold_s: float, fake: bool = False) -> None:
        self.execute, self.side, self.hold_s, self.fake = app.state.batcher.execute, side, hold_s, fake
        self.sizes: list[tuple] = []
        self.held, self.released = threading.Event(), threading.Event()
        app.state.batcher.execute = self

    def __call__(self, key, stream):
        self.sizes.append(stream.sizes)
        if any(max(size) > self.side for size in stream.sizes):
            self.held.set()
            time.sleep(self.hold_s)
            self.released.set()
            if self.fake:
                return [torch.zeros(10) for _ in stream.sizes]
        return self.execute(key, stream)


def post(client, body: bytes, path: str = "/v1/classify") -> tuple[int, dict, float, float]:
    """(status, JSON, seconds taken, time it ended)."""
    start = time.perf_counter()
    r = client.post(path, content=body, headers=OCTET)
    end = time.perf_counter()
    return r.status_code, r.json(), end - start, end


def top1(answer: dict) -> int:
    return answer["images"][0]["top"][0]["index"]


# ---- the deadline ----------------------------------------------------------------------------
def test_a_request_past_its_deadline_gets_504_and_the_server_goes_on(model, small):
    app = create_app(ServeConfig(model="tica-cifar", deadline_s=1.0, batch_window_ms=0))
    slow = _stream(model, 64)
    with TestClient(app, raise_server_exceptions=False) as c:
        passes = Passes(app, side=32, hold_s=2.5)                 # the 64x64 stream is slow
        with ThreadPoolExecutor(2) as pool:
            slow_answer = pool.submit(post, c, slow)
            assert passes.held.wait(10)
            queued = pool.submit(post, c, small)                   # behind it, in the same lane
            status, body, seconds, _ = slow_answer.result()
            q_status, q_body, _, _ = queued.result()
        assert status == 504 and body["error"] == "DeadlineError"
        assert "deadline of 1 s" in body["detail"] and "retry later" in body["detail"]
        assert 0.9 < seconds < 2.2                # at its deadline, not when the work ended
        assert q_status == 504 and q_body["error"] == "DeadlineError"
        assert passes.released.wait(10)
        status, body, _, _ = post(c, small)       # the next request is answered normally
        assert status == 200 and top1(body) == tica.classify(model, small)[0][0].index
        assert passes.sizes == [((64, 64),), ((32, 32),)]      # the expired one never ran
        assert app.state.batcher.stats.expired == 1
        metrics = c.get("/metrics").text
        assert "tica_expired_requests_total 1" in metrics
        assert 'tica_requests_total{path="/v1/classify",status="504"} 2' in metrics


def test_an_encode_past_its_deadline_gets_504(monkeypatch):
    app = create_app(ServeConfig(model="tica-cifar", deadline_s=0.5))
    compress = api.compress

    def slow_compress(*args, **kwargs):
        time.sleep(1.5)
        return compress(*args, **kwargs)

    png = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(png, "PNG")
    with TestClient(app, raise_server_exceptions=False) as c:
        monkeypatch.setattr(api, "compress", slow_compress)
        start = time.perf_counter()
        r = c.post("/v1/encode", content=png.getvalue(), headers=OCTET)
        assert r.status_code == 504 and r.json()["error"] == "DeadlineError"
        assert time.perf_counter() - start < 1.4
        monkeypatch.setattr(api, "compress", compress)
        time.sleep(1.2)               # the call already running finishes, unseen; the lane frees
        assert c.post("/v1/encode", content=png.getvalue(), headers=OCTET).status_code == 200
        assert app.state.batcher.stats.requests == 2      # both ran in the lane, one at a time


def test_a_heavy_request_past_its_deadline_stops_between_pieces():
    calls = []

    def execute(key, stream):
        calls.append(stream.sizes)
        time.sleep(0.4)
        return [p.decode() for p in stream.payloads]

    async def scenario():
        batcher = MicroBatcher(execute, window_ms=0, image_cost=lambda key, s: s[0] * s[1] / 1024,
                               max_gflop=10, deadline_s=0.6)
        heavy = Stream(1, ((64, 64),) * 6, tuple(b"h%d" % i for i in range(6)))   # 3 pieces of 2
        start = time.perf_counter()
        with pytest.raises(DeadlineError):
            await batcher.run(("classify", 1), heavy)
        waited = time.perf_counter() - start
        answer = await batcher.run(("classify", 1), Stream(1, ((32, 32),), (b"s",)))
        await asyncio.sleep(0.5)                  # the running piece ends; the rest is dropped
        await batcher.stop()
        return waited, answer, batcher.stats

    waited, answer, stats = asyncio.run(scenario())
    assert 0.55 < waited < 1.0 and answer == ["s"]
    heavy = [sizes for sizes in calls if sizes[0] == (64, 64)]
    assert all(len(sizes) == 2 for sizes in heavy)
    assert 1 <= len(heavy) == stats.heavy_pieces < 3     # the third piece never ran
    assert stats.expired == 1 and stats.requests == 1


def test_heavy_calls_take_turns_in_their_lane_while_small_requests_answer():
    """Encodes are calls (`MicroBatcher.call`): heavy ones run one at a time in the heavy lane,
    never on threads of their own beside the lanes, so three heavy encodes in flight do not
    hold up a small classify; a small call runs in the small lane."""
    running, most = [0], [0]

    def heavy_work(name: str):
        def work():
            running[0] += 1
            most[0] = max(most[0], running[0])
            time.sleep(0.5)
            running[0] -= 1
            return name
        return work

    async def scenario():
        batcher = MicroBatcher(lambda key, stream: [p.decode() for p in stream.payloads],
                               window_ms=0, image_cost=lambda key, s: 1.0, max_gflop=10)
        heavy = [asyncio.ensure_future(batcher.call(500.0, heavy_work(f"h{i}"))) for i in range(3)]
        await asyncio.sleep(0.1)
        start = time.perf_counter()
        small = await batcher.run(("classify", 1), Stream(1, ((32, 32),), (b"s",)))
        small_call = await batcher.call(1.0, lambda: "c")
        waited = time.perf_counter() - start
        answers = await asyncio.gather(*heavy)
        await batcher.stop()
        return small, small_call, waited, answers, batcher.stats

    small, small_call, waited, answers, stats = asyncio.run(scenario())
    assert small == ["s"] and small_call == "c" and waited < 0.3, waited
    assert answers == ["h0", "h1", "h2"] and most[0] == 1        # one heavy call at a time
    assert stats.heavy_pieces == 3 and stats.requests == 5


def test_deadline_and_batch_cost_are_serve_options_with_the_config_defaults():
    args = build_parser().parse_args(["serve"])
    assert (args.deadline_s, args.max_batch_gflop) == (ServeConfig.deadline_s, ServeConfig.max_batch_gflop)
    assert (args.deadline_s, args.max_batch_gflop, args.device) == (30.0, None, "auto")
    # unset batch limits follow the device: small on a CPU, large on a GPU; set ones stay
    cpu, gpu = ServeConfig().on_device("cpu"), ServeConfig().on_device("cuda")
    assert (cpu.max_batch_images, cpu.max_batch_gflop) == (64, 50.0)
    assert (gpu.max_batch_images, gpu.max_batch_gflop) == (1024, 5000.0)
    assert ServeConfig(max_batch_images=8).on_device("cuda").max_batch_images == 8
    args = build_parser().parse_args(["serve", "--deadline-s", "5", "--max-batch-gflop", "inf"])
    assert args.deadline_s == 5.0 and math.isinf(args.max_batch_gflop)
    for bad in ({"deadline_s": 0}, {"max_batch_gflop": -1}, {"deadline_s": math.nan}):
        with pytest.raises(ConfigError, match="positive"):
            ServeConfig(**bad)


# ---- micro-batches bounded by cost -----------------------------------------------------------
def test_batches_are_bounded_by_cost_and_heavy_requests_run_apart_taking_turns():
    calls = []

    def execute(key, stream):
        calls.append(stream.sizes)
        return [p.decode() for p in stream.payloads]

    def one(side: int, name: str, n: int = 1) -> Stream:
        return Stream(1, ((side, side),) * n, tuple(f"{name}.{i}".encode() for i in range(n)))

    async def scenario():
        # an image of side s costs (s/32)^2 GFLOP: 32 -> 1, 64 -> 4, 128 -> 16; the cap is 10
        batcher = MicroBatcher(execute, window_ms=50, max_images=64, max_gflop=10,
                               image_cost=lambda key, s: s[0] * s[1] / 1024)
        streams = ([one(32, f"s{i}") for i in range(6)] + [one(128, "H1", 3)]
                   + [one(32, f"s{i}") for i in range(6, 18)] + [one(64, "H2", 6), one(32, "M", 8)])
        answers = await asyncio.gather(*(batcher.run(("classify", 1), s) for s in streams))
        await batcher.stop()
        return streams, answers, batcher.stats

    streams, answers, stats = asyncio.run(scenario())
    assert answers == [[p.decode() for p in s.payloads] for s in streams]     # each its own share
    small = [sizes for sizes in calls if set(sizes) == {(32, 32)}]
    heavy = [sizes for sizes in calls if set(sizes) != {(32, 32)}]
    assert len(small) + len(heavy) == len(calls)          # no pass mixes heavy and small images
    assert [len(s) for s in small] == [10, 8, 8]          # merged up to 10 GFLOP, never over
    # one heavy image (16 GFLOP) a piece, two of 4 GFLOP a piece; the two requests alternate
    assert heavy == [((128, 128),), ((64, 64),) * 2] * 3
    assert stats.heavy_pieces == 6 and stats.largest_gflop == 16 and stats.batches == 9
    assert stats.requests == len(streams) and stats.expired == 0


# ---- mixed load ------------------------------------------------------------------------------
@pytest.mark.parametrize("fair", [True, False], ids=["fair", "one-lane-control"])
def test_small_requests_answer_quickly_while_a_heavy_one_runs(model, small, fair):
    """A 256x256 stream for the CIFAR model (~20 GFLOP to classify, over a 10 GFLOP batch
    cap that 20 small images, 6 GFLOP, stay under) holds its pass for HOLD_S; 20 concurrent 32x32 requests sent meanwhile answer within
    3 s each. The control, with no cost cap (one lane, as before), shows the bound is
    meaningful: there the small requests wait for the heavy one."""
    heavy = _stream(model, 256)
    config = ServeConfig(model="tica-cifar", max_batch_gflop=10.0 if fair else math.inf)
    app = create_app(config)
    with TestClient(app, raise_server_exceptions=False) as c:
        passes = Passes(app, side=64, hold_s=HOLD_S, fake=True)
        with ThreadPoolExecutor(21) as pool:
            heavy_answer = pool.submit(post, c, heavy)
            assert passes.held.wait(10)
            smalls = list(pool.map(lambda _: post(c, small), range(20)))
            h_status, _, h_seconds, h_end = heavy_answer.result()
    assert h_status == 200 and h_seconds >= HOLD_S
    assert [s for s, *_ in smalls] == [200] * 20
    latencies = [seconds for _, _, seconds, _ in smalls]
    if fair:
        assert max(latencies) < 3.0, latencies
        assert max(end for *_, end in smalls) < h_end             # all answered before it
        assert {top1(body) for _, body, _, _ in smalls} == {tica.classify(model, small)[0][0].index}
        assert all(set(sizes) == {(256, 256)} or set(sizes) == {(32, 32)} for sizes in passes.sizes)
        assert app.state.batcher.stats.heavy_pieces == 1
    else:
        assert min(latencies) > 3.0, latencies                    # stuck behind the heavy one


def test_serve_runs_where_device_says_and_refuses_a_gpu_it_cannot_see():
    import torch
    from tica.serve.app import create_app

    app = create_app(ServeConfig(model="tica-cifar", device="cpu", coder_threads=1))
    try:
        served = next(iter(app.state.models.by_id.values())).model
        assert next(served.parameters()).device.type == "cpu"
        assert (app.state.config.max_batch_images, app.state.config.max_batch_gflop) == (64, 50.0)
        from tica.entropy import parallel
        assert parallel.threads() == 1
    finally:
        from tica.entropy import parallel
        parallel.set_threads(None)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            create_app(ServeConfig(model="tica-cifar", device="cuda"))
