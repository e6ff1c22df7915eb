"""Cost units from the input: one 1024x1024 FLUX image at 28 steps is 1 unit."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.errors import ProxyError
from proxy.limits.cost import flux_cost, images_cost, request_cost, resolve_cost_function


@pytest.mark.parametrize(("data", "units"), [
    ({"prompt": "x", "image_size": "square_hd"}, 1.0),
    ({"prompt": "x", "image_size": "square_hd", "num_images": 4}, 4.0),
    ({"prompt": "x"}, 0.75),  # default landscape_4_3 = 1024x768
    ({"image_size": "square"}, 0.25),
    ({"image_size": "portrait_16_9"}, 576 / 1024),
    ({"image_size": {"width": 2048, "height": 2048}}, 4.0),
    ({"image_size": "square_hd", "num_inference_steps": 56}, 2.0),
    ({"image_size": None, "num_images": None}, 0.75),
    ("not an object", 1.0),
    (None, 1.0),
])
def test_flux_cost(data: Any, units: float) -> None:
    assert flux_cost(data) == pytest.approx(units)


@pytest.mark.parametrize(("data", "field"), [
    ({"num_images": "4"}, "num_images"),
    ({"num_images": 0}, "num_images"),
    ({"num_images": True}, "num_images"),
    ({"num_inference_steps": -1}, "num_inference_steps"),
    ({"image_size": "huge"}, "image_size"),
    ({"image_size": {"width": "1024", "height": 1}}, "width"),
    ({"image_size": [1024, 1024]}, "image_size"),
])
def test_malformed_cost_fields_are_a_422_in_fals_shape(data: Any, field: str) -> None:
    with pytest.raises(ProxyError) as info:
        flux_cost(data)
    assert info.value.status == 422
    assert info.value.detail[0]["loc"][-1] == field


def test_other_cost_functions() -> None:
    assert images_cost({"num_images": 3}) == 3 and request_cost({"num_images": 3}) == 1
    assert resolve_cost_function("images") is images_cost
    assert resolve_cost_function("proxy.limits.cost:request_cost") is request_cost


def test_usage_command_explains_memory_storage(tmp_path: Any, capsys: Any) -> None:
    from proxy.cli import main

    config = tmp_path / "proxy.toml"
    config.write_text('[limits]\nstorage = "memory://"\n')
    assert main(["usage", "--config", str(config)]) == 1
    assert "redis://" in capsys.readouterr().err
