"""Worker configuration (pure Python; no torch import so the CLI can parse flags cheaply)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Device = Literal["auto", "cuda", "cpu"]
DType = Literal["bf16", "fp16", "fp32"]
Offload = Literal["none", "model", "sequential"]

#: Hook deciding per image whether it is NSFW. Receives PIL images, returns one bool each.
NsfwChecker = Callable[[Sequence[Any]], list[bool]]

DEFAULT_ENDPOINT = "fal-ai/flux/dev"


@dataclass
class WorkerSettings:
    """Everything the worker needs to load the pipeline and serve the contract.

    The CLI builds one from flags; tests and embedders construct it directly (e.g. to
    plug in ``nsfw_checker`` or a ``step_delay_s`` for deterministic cancel tests).
    """

    model_dir: Path
    host: str = "127.0.0.1"
    port: int = 8010
    endpoints: tuple[str, ...] = (DEFAULT_ENDPOINT,)
    device: Device = "auto"
    #: ``None`` = bf16 on CUDA, fp32 on CPU.
    dtype: DType | None = None
    compile: bool = False
    #: Passed to ``torch.compile(mode=...)``; ``None`` = torch's default mode.
    compile_mode: str | None = None
    fp8: bool = False
    #: Fuse the attention q/k/v projections into one matmul (fewer, bigger GEMMs).
    fuse_qkv: bool = False
    offload: Offload = "none"
    #: Run one generation at start-up so /readyz only says ready once kernels are hot.
    warmup: bool = True
    #: fal ``image_size`` value used for warm-up (a compiled graph is specialised per size).
    warmup_image_size: str | dict[str, int] = "landscape_4_3"
    warmup_steps: int = 2
    #: Largest accepted width/height in pixels (after rounding to multiples of 16).
    max_side: int = 2048
    #: T5 token budget; FLUX.1 [dev] uses 512.
    max_sequence_length: int = 512
    #: Optional NSFW classifier; when ``None``, ``has_nsfw_concepts`` is all false.
    nsfw_checker: NsfwChecker | None = None
    #: Test hook: sleep this long after every denoising step (makes cancel land mid-run).
    step_delay_s: float = 0.0
    log_level: str = "info"
    #: CLI mode: stop the server (exit status 1) when loading or warm-up fails.
    exit_on_load_failure: bool = False

    @property
    def endpoint_paths(self) -> list[str]:
        """URL paths served for generation, e.g. ``/fal-ai/flux/dev``."""
        return ["/" + e.strip("/") for e in self.endpoints]
