"""Prometheus text exposition of the server's counters (format 0.0.4), kept in memory."""

from __future__ import annotations

import resource
from collections import defaultdict

from .batcher import BatchStats

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Counters by path: the app's own paths (`paths`) each, every other one as "other", so
    that requests for random paths cannot grow the labels."""

    def __init__(self, paths: set[str] = frozenset()) -> None:
        self.paths = set(paths)
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency_buckets: dict[str, list[int]] = defaultdict(lambda: [0] * (len(BUCKETS) + 1))
        self.latency_sum: dict[str, float] = defaultdict(float)
        self.bytes_received = 0
        self.images_received = 0

    def observe(self, path: str, status: int, seconds: float) -> None:
        path = path if path in self.paths else "other"
        self.requests[(path, status)] += 1
        buckets = self.latency_buckets[path]
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                buckets[i] += 1
        buckets[-1] += 1
        self.latency_sum[path] += seconds

    def received(self, nbytes: int, images: int) -> None:
        self.bytes_received += nbytes
        self.images_received += images

    def render(self, batches: BatchStats) -> str:
        L = ["# HELP tica_requests_total HTTP requests by path and status.",
             "# TYPE tica_requests_total counter"]
        for (path, status), n in sorted(self.requests.items()):
            L.append(f'tica_requests_total{{path="{path}",status="{status}"}} {n}')
        L += ["# HELP tica_request_seconds Request latency.", "# TYPE tica_request_seconds histogram"]
        for path, buckets in sorted(self.latency_buckets.items()):
            for bound, n in zip(BUCKETS, buckets):
                L.append(f'tica_request_seconds_bucket{{path="{path}",le="{bound}"}} {n}')
            L.append(f'tica_request_seconds_bucket{{path="{path}",le="+Inf"}} {buckets[-1]}')
            L.append(f'tica_request_seconds_sum{{path="{path}"}} {self.latency_sum[path]:.6f}')
            L.append(f'tica_request_seconds_count{{path="{path}"}} {buckets[-1]}')
        L += ["# HELP tica_bitstream_bytes_total Bitstream bytes received.",
              "# TYPE tica_bitstream_bytes_total counter", f"tica_bitstream_bytes_total {self.bytes_received}",
              "# HELP tica_images_total Images received in bitstreams.",
              "# TYPE tica_images_total counter", f"tica_images_total {self.images_received}",
              "# HELP tica_batches_total Batched forward passes run.",
              "# TYPE tica_batches_total counter", f"tica_batches_total {batches.batches}",
              "# HELP tica_batched_requests_total Requests served by batched passes.",
              "# TYPE tica_batched_requests_total counter", f"tica_batched_requests_total {batches.requests}",
              "# HELP tica_heavy_pieces_total Passes that ran a piece of a request over the batch cost cap.",
              "# TYPE tica_heavy_pieces_total counter", f"tica_heavy_pieces_total {batches.heavy_pieces}",
              "# HELP tica_expired_requests_total Requests dropped at their deadline or when the caller left.",
              "# TYPE tica_expired_requests_total counter", f"tica_expired_requests_total {batches.expired}",
              "# HELP tica_max_rss_bytes Peak resident memory of the server process.",
              "# TYPE tica_max_rss_bytes gauge",
              f"tica_max_rss_bytes {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}"]
        return "\n".join(L) + "\n"
