"""The GPU check (scripts/gpu_check.sh), run end to end on the CPU in its smoke mode: the
throughput benchmark's tables, and streams carried between two "machines" decoding alike."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.real_data("cifar10-jpeg.tar.gz", "imagenette-224.tar.gz")
def test_the_gpu_check_runs_here_and_finds_the_streams_alike(tmp_path):
    env = {**os.environ, "GPU_CHECK_DIR": str(tmp_path), "PYTHON": sys.executable,
           "TICA_CODER_THREADS": "2"}
    run = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "smoke"], env=env,
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads((tmp_path / "cross_device.json").read_text())
    for case, images in (("cifar", 64), ("photos", 4)):
        for way in ("cpu_streams_decoded_there", "gpu_streams_decoded_here"):
            a = result[case][way]
            assert (a["images"], a["top1_same"], a["max_pixel_diff"]) == (images, images, 0)
        assert result[case]["cpu_stream_bytes"] == result[case]["gpu_stream_bytes"]
    throughput = json.loads((tmp_path / "out" / "throughput.json").read_text())
    for case in ("32x32", "224x224"):
        coder = throughput["cases"][case]["coder"]
        assert coder["threads_1"]["decode_msym_s_per_core"] > 0
        breakdown = throughput["cases"][case]["breakdown"]
        assert set(breakdown["share"]) == {"entropy_decode", "integer_h_s", "vit", "decompress"}
        assert 0 < breakdown["share"]["decompress"] < 1
        assert breakdown["decompress_msym_s_per_core"] > 0
        assert breakdown["latent_symbols"] == {"32x32": 96 * 8 * 8, "224x224": 192 * 14 * 14}[case]
    table = (tmp_path / "out" / "throughput.md").read_text()
    assert "| 32x32 | tica-cifar q4 | 64 image(s) |" in table
