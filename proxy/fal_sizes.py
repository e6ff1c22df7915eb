"""fal's named FLUX image sizes, in one place (policy, cost, the local queue and the worker).

No imports: the GPU worker and its tests use it without the proxy's dependencies.
"""

from __future__ import annotations

__all__ = ["DEFAULT_IMAGE_SIZE", "IMAGE_SIZES"]

#: fal's `image_size` names as (width, height) in pixels.
IMAGE_SIZES: dict[str, tuple[int, int]] = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
#: What fal's FLUX.1 [dev] uses when the input names no size.
DEFAULT_IMAGE_SIZE = "landscape_4_3"
