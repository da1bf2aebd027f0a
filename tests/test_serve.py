"""The HTTP service: answers match the library, bad input gets a typed 4xx, requests batch."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

import tica  # noqa: E402
from tica import bitstream  # noqa: E402
from tica.bitstream import Stream  # noqa: E402
from tica.serve import ServeConfig, create_app  # noqa: E402
from tica.serve.batcher import MicroBatcher  # noqa: E402

from conftest import refinement_moves  # noqa: E402
from corruption import MUTATIONS, mutate  # noqa: E402

OCTET = {"Content-Type": "application/octet-stream"}


@pytest.fixture(scope="module")
def client():
    app = create_app(ServeConfig(max_body_bytes=64 << 10, max_images=16, max_side=1024,
                                 batch_window_ms=2))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def model():
    return tica.load("tica-cifar")


@pytest.fixture(scope="module")
def stream(model, cifar_images):
    return tica.compress(model, cifar_images[:4])


def test_classify_matches_the_library(client, model, stream):
    r = client.post("/v1/classify?top_k=3", content=stream, headers=OCTET)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["bytes"] == len(stream) and len(answer["images"]) == 4
    assert answer["model_id"] == f"{model.model_id:04x}"
    local = tica.classify(model, stream, k=3)
    for entry, preds in zip(answer["images"], local):
        assert [t["index"] for t in entry["top"]] == [p.index for p in preds]
        assert [t["prob"] for t in entry["top"]] == pytest.approx([p.prob for p in preds], abs=1e-5)
        assert entry["size"] == {"width": 32, "height": 32}


def test_every_shipped_rate_point_is_served(client, cifar_images):
    from tica.registry import standard_qualities
    for q in standard_qualities("tica-cifar"):
        data = tica.compress(tica.load("tica-cifar"), cifar_images[:1], quality=q)
        assert client.post("/v1/classify", content=data, headers=OCTET).status_code == 200


def test_reconstruct_and_encode(client, model, stream, cifar_images):
    r = client.post("/v1/reconstruct?index=2", content=stream, headers=OCTET)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    served = torch.from_numpy(np.array(Image.open(io.BytesIO(r.content)))).permute(2, 0, 1)
    local = (tica.reconstruct(model, stream)[2] * 255).round().byte()
    assert torch.equal(served, local)
    buf = io.BytesIO()
    Image.fromarray((cifar_images[0] * 255).round().byte().permute(1, 2, 0).numpy()).save(buf, "PNG")
    r = client.post("/v1/encode?quality=1", content=buf.getvalue(), headers=OCTET)
    assert r.status_code == 200 and int(r.headers["X-Tica-Bytes"]) == len(r.content)
    assert r.headers["X-Tica-Model"] == "tica-cifar q1"
    assert tica.inspect(r.content)["model"] == "tica-cifar q1"
    assert float(r.headers["X-Tica-Bpp"]) == pytest.approx(8 * len(r.content) / 1024, abs=1e-3)
    assert int(r.headers["X-Tica-Png-Bytes"]) == tica.api.png_bytes(cifar_images[0])
    assert "X-Tica-Warning" not in r.headers            # q1: far smaller than the PNG
    flat = io.BytesIO()
    Image.new("RGB", (32, 32), (90, 90, 90)).save(flat, "PNG")    # a PNG of ~100 bytes
    r = client.post("/v1/encode?quality=8", content=flat.getvalue(), headers=OCTET)
    assert len(r.content) > int(r.headers["X-Tica-Png-Bytes"])
    assert "larger than a lossless PNG" in r.headers["X-Tica-Warning"]
    assert "X-Tica-Warning" in r.headers["Access-Control-Expose-Headers"]


def test_encode_with_refinement_within_the_servers_limit(client, model, cifar_images,
                                                        monkeypatch):
    """/v1/encode?refine=N writes the stream `tica.compress(refine=N)` writes, up to the
    server's --max-refine (default 0: refused) and inside its budget, both before any work."""
    from tica.models import refine as refine_module
    png = tica.image.encode_png(cifar_images[refinement_moves(model, cifar_images)[0]])
    image = tica.image.read_image(png)
    r = client.post("/v1/encode?quality=2&refine=1", content=png, headers=OCTET)
    assert r.status_code == 422 and r.json()["error"] == "RefineLimit"
    assert "at most 0 refinement steps" in r.json()["detail"]
    assert client.get("/v1/models").json()["limits"]["max_refine"] == 0
    with pytest.raises(tica.errors.ConfigError, match="max_refine"):
        ServeConfig(max_refine=-1)
    # tica-cifar's estimate for a 32x32 image: 0.31 GFLOP to encode, 1.29 more a step
    refined = tica.compress(model, image, quality=2, refine=5)
    assert refined != tica.compress(model, image, quality=2)
    for max_gflop, status in ((1.0, 413), (100.0, 200)):
        with TestClient(create_app(ServeConfig(model="tica-cifar", max_refine=5,
                                               max_gflop=max_gflop, batch_window_ms=1)),
                        raise_server_exceptions=False) as c:
            assert c.get("/v1/models").json()["limits"]["max_refine"] == 5
            assert c.post("/v1/encode?quality=2&refine=6", content=png,
                          headers=OCTET).json()["error"] == "RefineLimit"
            r = c.post("/v1/encode?quality=2&refine=5", content=png, headers=OCTET)
            assert r.status_code == status, r.text
            if status == 413:
                assert "5 refinement steps" in r.json()["detail"]
                assert c.post("/v1/encode?quality=2", content=png,
                              headers=OCTET).status_code == 200      # plain fits
                assert c.app.state.batcher.stats.requests == 1
                continue
            assert r.content == refined
            monkeypatch.setattr(refine_module, "MAX_PIXELS", 32 * 32 - 1)
            done = c.app.state.batcher.stats.requests
            r = c.post("/v1/encode?quality=2&refine=5", content=png, headers=OCTET)
            assert r.status_code == 413 and "without refinement" in r.json()["detail"]
            assert c.app.state.batcher.stats.requests == done       # refused before any work


def test_a_codec_only_stream_gets_422_from_classify(cifar_images):
    stream = tica.compress(tica.load("hyperprior-cifar"), cifar_images[:2])
    with TestClient(create_app(ServeConfig(model="hyperprior-cifar")),
                    raise_server_exceptions=False) as c:
        assert c.get("/v1/models").json()["models"][0]["classifies"] is False
        r = c.post("/v1/classify", content=stream, headers=OCTET)
        assert r.status_code == 422 and r.json()["error"] == "NoClassifier"
        assert "hyperprior-cifar" in r.json()["detail"]
        assert c.post("/v1/reconstruct", content=stream, headers=OCTET).status_code == 200


def test_models_health_metrics_openapi_demo(client, stream):
    models = client.get("/v1/models").json()
    cifar = {m["model"]: m for m in models["models"]}["tica-cifar"]
    assert cifar["quality_range"] == [1.0, 8.0] and cifar["qualities"] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert models["limits"]["max_images"] == 16
    assert client.get("/healthz").json()["status"] == "ok"
    before = client.get("/metrics").text
    client.post("/v1/classify", content=stream, headers=OCTET)
    after = client.get("/metrics").text

    def count(text):
        prefix = 'tica_requests_total{path="/v1/classify",status="200"}'
        return sum(int(l.split()[-1]) for l in text.splitlines() if l.startswith(prefix))
    assert count(after) == count(before) + 1
    assert "tica_max_rss_bytes" in after and "tica_request_seconds_bucket" in after
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/classify", "/v1/reconstruct", "/v1/encode", "/v1/models", "/healthz"} <= set(paths)
    assert "application/octet-stream" in paths["/v1/classify"]["post"]["requestBody"]["content"]
    page = client.get("/")
    assert page.status_code == 200 and "/v1/encode" in page.text


@pytest.mark.parametrize("body, status, error", [
    (b"", 400, "EmptyBody"),
    (b"not a bitstream at all", 400, "BitstreamError"),
    (b"\x74\xca" + b"\x00" * 64, 400, "BitstreamError"),
    (b"x" * (64 << 10 + 1), 413, "PayloadTooLarge"),
])
def test_malformed_bodies_get_a_4xx_with_a_reason(client, body, status, error):
    for path in ("/v1/classify", "/v1/reconstruct"):
        r = client.post(path, content=body, headers=OCTET)
        assert r.status_code == status and r.json()["error"] == error and r.json()["detail"]


def test_wrong_model_limits_and_parameters(client, stream, cifar_images):
    other = tica.create_model("hyperprior-cifar").eval()
    other.update()
    r = client.post("/v1/classify", content=tica.compress(other, cifar_images[:1]), headers=OCTET)
    assert r.status_code == 422 and r.json()["error"] == "ModelMismatchError"
    assert "does not serve" in r.json()["detail"]
    model = tica.load("tica-cifar")
    many = tica.compress(model, cifar_images[:1].repeat(17, 1, 1, 1))           # > max_images
    r = client.post("/v1/classify", content=many, headers=OCTET)
    assert r.status_code == 413 and "images" in r.json()["detail"]             # too large
    assert r.json()["error"] == "BitstreamLimitError"
    assert client.post("/v1/classify?top_k=0", content=stream, headers=OCTET).status_code == 422
    assert client.post("/v1/reconstruct?index=9", content=stream, headers=OCTET).json()["error"] == "BadIndex"
    assert client.post("/v1/encode", content=b"GIF89a garbage", headers=OCTET).json()["error"] == "ImageError"
    assert client.post("/v1/encode?quality=9", content=b"x", headers=OCTET).json()["error"] == "UnknownQuality"
    big = io.BytesIO()
    Image.new("RGB", (1100, 8)).save(big, "PNG")                                   # > max_side
    r = client.post("/v1/encode", content=big.getvalue(), headers=OCTET)
    assert r.status_code == 413 and "exceeds" in r.json()["detail"]
    r = client.post("/v1/classify", content=stream, headers={**OCTET, "Content-Length": "999999999"})
    assert r.status_code == 413


def test_a_stream_without_its_models_quality_codes_gets_400_and_spoils_no_batch(client, stream):
    """A checksummed stream of a variable-rate model that records no qualities is refused
    before it joins a batch (merged, it would have made every stream of the batch decode at
    the default quality); the batch's streams cannot be joined with it either."""
    whole = bitstream.unpack(stream)
    bare = bitstream.pack(whole.model_id, list(whole.sizes), list(whole.payloads))
    for path in ("/v1/classify", "/v1/reconstruct"):
        r = client.post(path, content=bare, headers=OCTET)
        assert r.status_code == 400 and r.json()["error"] == "BitstreamError"
        assert "records none" in r.json()["detail"]
    with pytest.raises(ValueError, match="quality codes"):
        Stream.concat([whole, bitstream.unpack(bare)])


def test_metrics_label_the_apps_paths_and_count_the_rest_as_other(client):
    for i in range(3):
        assert client.post(f"/v1/made-up-{i}", content=b"x", headers=OCTET).status_code == 404
    text = client.get("/metrics").text
    assert "made-up" not in text
    assert any(l.startswith('tica_requests_total{path="other",status="404"}')
               for l in text.splitlines())


def test_a_server_of_a_model_that_writes_no_streams_is_refused_at_startup():
    from tica.errors import ConfigError
    with pytest.raises(ConfigError, match="serves a codec"):
        create_app(ServeConfig(model="vit-pixel-cifar"))


def test_the_client_refuses_what_is_not_a_tica_server(tmp_path):
    """No scheme, a port that is no number, an answer that is not a tica server's: one
    TicaError each."""
    import http.server
    import threading

    from tica.errors import TicaError
    from tica.serve.client import classify_remote

    class Plain(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            body = b'{"hello": "world"}' if "json" in self.path else b"<html>hi</html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Plain)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        for where, reason in ((url, "did not answer as a tica server"),
                              (url + "/json", "did not answer as a tica server"),
                              ("127.0.0.1:8000", "http:// or https://"),
                              ("http://127.0.0.1:port", "cannot reach")):
            with pytest.raises(TicaError, match=reason):
                classify_remote(where, b"\x74\xca", timeout=10)
    finally:
        server.shutdown()


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=st.lists(MUTATIONS, min_size=1, max_size=4))
def test_fuzzed_streams_never_take_the_server_down(client, stream, ops):
    bad = mutate(stream, ops)
    r = client.post("/v1/classify", content=bad, headers=OCTET)
    assert r.status_code in (200, 400, 413, 422), r.text
    if bad != stream:
        assert r.status_code != 200 or bitstream.unpack(bad)        # only a still-valid stream passes
    assert "error" in r.json() or "images" in r.json()


def test_micro_batching_merges_concurrent_requests_and_isolates_a_bad_one():
    calls = []

    def execute(key, stream):
        calls.append(len(stream.payloads))
        if any(p == b"bad" for p in stream.payloads):
            raise tica.BitstreamError("corrupt payload")
        return [p.decode() for p in stream.payloads]

    async def scenario(window_ms, batching=True):
        batcher = MicroBatcher(execute, window_ms=window_ms, max_images=64, batching=batching)
        await batcher.start()
        streams = [Stream(1, ((32, 32),) * 2, (f"{i}a".encode(), f"{i}b".encode())) for i in range(8)]
        streams[5] = Stream(1, ((32, 32),), (b"bad",))
        results = await asyncio.gather(*(batcher.run(("classify", 1), s) for s in streams),
                                       return_exceptions=True)
        await batcher.stop()
        return results, batcher.stats

    results, stats = asyncio.run(scenario(50))
    assert results[0] == ["0a", "0b"] and results[7] == ["7a", "7b"]        # each its own share
    assert isinstance(results[5], tica.BitstreamError)                      # only the bad one fails
    assert calls[0] == 15 and stats.requests == 7                           # merged, then retried alone
    calls.clear()
    results, stats = asyncio.run(scenario(50, batching=False))
    assert stats.batches == 7 and max(calls) == 2                           # every one alone


def test_batching_groups_real_concurrent_http_requests(stream):
    import concurrent.futures
    app = create_app(ServeConfig(batch_window_ms=100))
    with TestClient(app) as c:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: c.post("/v1/classify", content=stream, headers=OCTET), range(8)))
        assert all(a.status_code == 200 for a in answers)
        assert len({str(a.json()["images"]) for a in answers}) == 1
        stats = app.state.batcher.stats
        assert stats.requests == 8 and stats.batches < 8


def test_schemathesis_finds_no_server_error():
    """Property-based requests generated from the OpenAPI schema: whatever arrives, the
    answer is a documented status, never a 5xx."""
    schemathesis = pytest.importorskip("schemathesis")
    app = create_app(ServeConfig(max_body_bytes=16 << 10, batch_window_ms=1))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    checked = 0
    for operation in schema.get_all_operations():
        op = operation.ok()

        @settings(max_examples=25, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def check(case):
            response = case.call()
            assert response.status_code < 500, (case.path, response.status_code, response.text)
            if response.status_code >= 400:
                assert response.json()["error"]

        check()
        checked += 1
    assert checked >= 6


def test_remote_classify_sends_only_the_bitstream(live_server, tmp_path, cifar_samples, capsys):
    import json as _json

    from tica.cli import main
    from tica.image import read_image
    data, _ = cifar_samples[0]
    image = tmp_path / "plane.jpg"
    image.write_bytes(data)
    assert main(["classify", "--server", live_server, str(image), "--json", "--top-k", "2"]) == 0
    answer = _json.loads(capsys.readouterr().out)
    model = tica.load("tica-cifar")
    stream = tica.compress(model, read_image(data))
    assert answer["sent_bytes"] == len(stream) and answer["replaced_bytes"] == len(data)
    assert answer["images"][0]["top"][0]["index"] == tica.classify(model, stream)[0][0].index
    (tmp_path / "s.tica").write_bytes(stream)                       # a .tica goes as it is
    assert main(["classify", "--server", live_server, str(tmp_path / "s.tica")]) == 0
    assert f"sent {len(stream)} bytes" in capsys.readouterr().out
    (tmp_path / "bad.tica").write_bytes(stream[:-3] + b"abc")
    assert main(["classify", "--server", live_server, str(tmp_path / "bad.tica")]) == 1
    assert "server answered 400" in capsys.readouterr().err
    assert main(["classify", "--server", "http://127.0.0.1:9", str(tmp_path / "s.tica")]) == 1
    assert "cannot reach" in capsys.readouterr().err
    # a photograph gets the model `tica encode` picks for it, by the same rule
    from conftest import made_up_photo
    photo = tmp_path / "photo.png"
    made_up_photo(160, 120, 1).save(photo)
    assert main(["classify", "--server", live_server, str(photo), "--json"]) == 0
    answer = _json.loads(capsys.readouterr().out)
    assert tica.api.choose_model([(120, 160)]) == "tica-photo"
    assert answer["model"].startswith("tica-photo")
    assert answer["sent_bytes"] == len(tica.compress(tica.load("tica-photo"), read_image(photo)))


def test_a_variable_rate_model_serves_every_quality_with_one_id(tmp_path, cifar_images):
    """One variable-rate checkpoint: /v1/encode takes any quality in range, the stream says
    which, classify and reconstruct need no parameter, and a batch mixing qualities decodes."""
    from tica.checkpoint import save_checkpoint
    vr = tica.create_model("tica-cifar", seed=6, rate_levels=3, N=16, M=16, embed_dim=32,
                           depth=2, num_heads=2, fam_blocks=(1,)).eval()
    with torch.no_grad():
        vr.g_a[-1].weight.mul_(40)
    vr.update()
    save_checkpoint(vr, tmp_path / "vr.safetensors")
    vr = tica.load(weights=tmp_path / "vr.safetensors")
    app = create_app(ServeConfig(weights=str(tmp_path / "vr.safetensors")))
    png = io.BytesIO()
    Image.fromarray((cifar_images[0].permute(1, 2, 0) * 255).byte().numpy()).save(png, "PNG")
    with TestClient(app, raise_server_exceptions=False) as c:
        models = c.get("/v1/models").json()["models"]
        assert len(models) == 1 and models[0]["quality_range"] == [1.0, 3.0]
        assert models[0]["qualities"] == [1, 2, 3]
        sizes = []
        for q in (1, 2.5, 3):
            r = c.post(f"/v1/encode?quality={q}", content=png.getvalue(), headers=OCTET)
            assert r.status_code == 200 and r.headers["X-Tica-Model"] == f"tica-cifar q{q:g}"
            assert r.content == tica.compress(vr, cifar_images[0], quality=q)
            sizes.append(len(r.content))
            answer = c.post("/v1/classify", content=r.content, headers=OCTET).json()
            assert answer["model"] == f"tica-cifar q{q:g}"
        assert sizes[0] < sizes[1] < sizes[2]
        assert c.post("/v1/encode?quality=3.5", content=png.getvalue(),
                      headers=OCTET).status_code == 422
        mixed = tica.compress(vr, cifar_images[:3], quality=[1, 3, 2])
        r = c.post("/v1/classify", content=mixed, headers=OCTET)
        local = tica.classify(vr, mixed, k=5)
        assert [e["top"][0]["index"] for e in r.json()["images"]] == [p[0].index for p in local]
        r = c.post("/v1/reconstruct?index=1", content=mixed, headers=OCTET)
        assert r.status_code == 200
        served = torch.from_numpy(np.array(Image.open(io.BytesIO(r.content)))).permute(2, 0, 1)
        expected = (tica.reconstruct(vr, mixed)[1] * 255).round().byte()
        assert torch.equal(served, expected)


def test_two_apps_in_one_process_each_answer_with_their_own_state():
    """The routes are module-level (tica.serve.routes) and read `request.app.state`: two apps
    built with different settings never see each other's."""
    from tica.serve import routes
    configs = [ServeConfig(model="tica-cifar", max_body_bytes=size) for size in (1000, 2000)]
    apps = [create_app(c) for c in configs]
    paths = {r.path for r in routes.router.routes}
    assert paths == {"/v1/classify", "/v1/reconstruct", "/v1/encode", "/v1/models", "/healthz",
                     "/metrics", "/"}
    for app, config in zip(apps, configs):
        assert app.state.config == config.on_device("cpu") and set(app.openapi()["paths"]) == paths - {"/"}
        with TestClient(app, raise_server_exceptions=False) as c:
            assert c.get("/v1/models").json()["limits"]["max_body_bytes"] == config.max_body_bytes
            status = 413 if config.max_body_bytes < 1500 else 400     # too big, or not a stream
            assert c.post("/v1/classify", content=b"x" * 1500, headers=OCTET).status_code == status
            counted = [l for l in c.get("/metrics").text.splitlines()
                       if l.startswith('tica_requests_total{path="/v1/classify"')]
            assert counted == [f'tica_requests_total{{path="/v1/classify",status="{status}"}} 1']


def test_the_schema_documents_every_error_body_and_nothing_loads_from_a_cdn(client):
    schema = client.get("/openapi.json").json()
    body = schema["components"]["schemas"]["ErrorBody"]
    assert set(body["required"]) == {"error", "detail"}
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    for path in ("/v1/classify", "/v1/reconstruct", "/v1/encode"):
        responses = schema["paths"][path]["post"]["responses"]
        for code in ("400", "413", "422", "504"):
            ref = responses[code]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/ErrorBody") and responses[code]["description"]
    for page in ("/docs", "/redoc"):
        r = client.get(page)
        assert r.status_code == 404 and r.json()["error"] == "HTTPError"
    assert "cdn" not in client.get("/").text.lower()
