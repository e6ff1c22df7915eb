"""Pure-Python validation and size mapping; runs without torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from proxy.worker.inputs import IMAGE_SIZES, InputValidationError, parse_request, round_side


def test_named_sizes_match_fal() -> None:
    assert IMAGE_SIZES == {
        "square_hd": (1024, 1024),
        "square": (512, 512),
        "portrait_4_3": (768, 1024),
        "portrait_16_9": (576, 1024),
        "landscape_4_3": (1024, 768),
        "landscape_16_9": (1024, 576),
    }
    for name, (w, h) in IMAGE_SIZES.items():
        req = parse_request({"prompt": "p", "image_size": name})
        assert (req.width, req.height) == (w, h)


def test_defaults() -> None:
    req = parse_request({"prompt": "p"})
    assert (req.width, req.height) == (1024, 768)
    assert req.num_inference_steps == 28 and req.guidance_scale == 3.5
    assert req.num_images == 1 and req.output_format == "jpeg"
    assert 0 <= req.seed < 2**32


@pytest.mark.parametrize(
    ("raw", "out"),
    [(1000, 1008), (1023, 1024), (100, 96), (16, 16), (17, 16), (24, 32), (2048, 2048)],
)
def test_round_side(raw: int, out: int) -> None:
    assert round_side(raw, 2048) == out


def test_custom_size_rounded_and_defaults_512() -> None:
    req = parse_request({"prompt": "p", "image_size": {"width": 1000}})
    assert (req.width, req.height) == (1008, 512)


def test_collects_all_errors() -> None:
    with pytest.raises(InputValidationError) as ei:
        parse_request({"num_images": 9, "output_format": "webp"})
    locs = [e["loc"] for e in ei.value.body["detail"]]
    assert locs == [["body", "prompt"], ["body", "num_images"], ["body", "output_format"]]


def test_bools_are_not_ints() -> None:
    with pytest.raises(InputValidationError):
        parse_request({"prompt": "p", "num_images": True})


def test_pure_python_modules_do_not_import_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['diffusers'] = None\n"
        "import proxy.worker, proxy.worker.inputs, proxy.worker.settings, proxy.worker.cli\n"
        "import proxy.worker.pipeline, proxy.worker.app\n"
        "print('ok')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr
