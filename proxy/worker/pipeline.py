"""Loading the FLUX.1 [dev] diffusers pipeline and running one job with progress and cancel.

torch/diffusers are imported lazily inside functions so that the rest of the package
(validation, CLI parsing, the model-dir check) works without the ``gpu`` extra.
All methods of :class:`FluxEngine` that touch the GPU must be called from one thread
(the app uses a single-thread executor), which also serialises jobs.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.worker.inputs import GenerationRequest, resolve_image_size
from proxy.worker.settings import WorkerSettings

log = logging.getLogger("proxy.worker")

#: Components a FLUX.1 [dev] diffusers directory must contain, with the file that proves it.
REQUIRED_COMPONENTS: dict[str, tuple[str, ...]] = {
    "scheduler": ("scheduler_config.json",),
    "text_encoder": ("config.json",),
    "text_encoder_2": ("config.json",),
    "tokenizer": (),
    "tokenizer_2": (),
    "transformer": ("config.json",),
    "vae": ("config.json",),
}
_WEIGHTED = ("text_encoder", "text_encoder_2", "transformer", "vae")
_WEIGHT_SUFFIXES = (".safetensors", ".bin")

ProgressFn = Callable[[int, int], None]


class ModelDirError(RuntimeError):
    """The model directory is missing or incomplete; the message names what is missing."""


class JobCancelled(Exception):
    """Raised from the step callback to abort a job before the VAE decode."""


class UnsupportedOption(RuntimeError):
    """A speed option (fp8, offload, compile) cannot be used on this machine."""


def check_model_dir(model_dir: Path) -> None:
    """Fail fast, without torch, when ``model_dir`` is not a loadable FLUX diffusers dir."""
    if not model_dir.exists():
        raise ModelDirError(f"model directory not found: {model_dir}")
    if not model_dir.is_dir():
        raise ModelDirError(f"model path is not a directory: {model_dir}")
    index = model_dir / "model_index.json"
    if not index.is_file():
        raise ModelDirError(
            f"{model_dir} is not a diffusers pipeline directory: model_index.json is missing "
            "(see docs/worker.md for how to prepare it)"
        )
    try:
        meta = json.loads(index.read_text())
    except (OSError, ValueError) as exc:
        raise ModelDirError(f"cannot read {index}: {exc}") from exc
    if not isinstance(meta, dict):
        raise ModelDirError(f"{index} is not a JSON object")
    missing: list[str] = []
    for comp, files in REQUIRED_COMPONENTS.items():
        entry = meta.get(comp)
        if not isinstance(entry, list) or entry[:1] == [None]:
            missing.append(f"model_index.json entry '{comp}'")
            continue
        sub = model_dir / comp
        if not sub.is_dir():
            missing.append(f"{comp}/")
            continue
        missing.extend(f"{comp}/{f}" for f in files if not (sub / f).is_file())
        if comp.startswith("tokenizer") and not any(sub.iterdir()):
            missing.append(f"{comp}/ (empty)")
        if comp in _WEIGHTED and not any(
            p.name.endswith(_WEIGHT_SUFFIXES) for p in sub.iterdir() if p.is_file()
        ):
            missing.append(f"{comp}/*.safetensors (weights)")
    if missing:
        raise ModelDirError(
            f"model directory {model_dir} is incomplete; missing: " + ", ".join(missing)
        )


@dataclass
class GeneratedImage:
    """One encoded output image in fal's ``images[]`` shape."""

    url: str
    width: int
    height: int
    content_type: str

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "width": self.width,
            "height": self.height,
            "content_type": self.content_type,
        }


def encode_image(image: Any, fmt: str) -> GeneratedImage:
    """Encode a PIL image as a data URI (the worker always returns inline data)."""
    buf = io.BytesIO()
    if fmt == "png":
        image.save(buf, format="PNG")
        ctype = "image/png"
    else:
        image.convert("RGB").save(buf, format="JPEG", quality=95)
        ctype = "image/jpeg"
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return GeneratedImage(f"data:{ctype};base64,{data}", image.width, image.height, ctype)


def _resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise UnsupportedOption("--device cuda requested but torch sees no CUDA device")
    return requested


def _resolve_dtype(requested: str | None, device: str) -> tuple[str, Any]:
    import torch

    name = requested or ("bf16" if device == "cuda" else "fp32")
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    return name, table[name]


def preflight(settings: WorkerSettings) -> None:
    """Check device/option combinations up front so the CLI can refuse to start cleanly."""
    device = _resolve_device(settings.device)
    if settings.offload != "none" and device != "cuda":
        raise UnsupportedOption("--offload needs a CUDA device")
    if settings.offload != "none" and settings.fp8:
        raise UnsupportedOption("--fp8 cannot be combined with --offload (untested)")
    if settings.fp8:
        _check_fp8_support()


def _check_fp8_support() -> None:
    import torch

    if not torch.cuda.is_available():
        raise UnsupportedOption("--fp8 needs a CUDA GPU")
    cap = torch.cuda.get_device_capability()
    if cap < (8, 9):
        raise UnsupportedOption(
            f"--fp8 needs compute capability >= 8.9 (Ada/Hopper); this GPU is {cap[0]}.{cap[1]}"
        )
    try:
        import torchao.quantization  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
    except ImportError as exc:
        raise UnsupportedOption(
            f"--fp8 needs torchao (pip install torchao matching your torch): {exc}"
        ) from exc


def apply_fp8(transformer: Any) -> None:
    """Quantise the transformer's linears to float8 (dynamic activations, per-row scales).

    Needs torchao and a GPU with compute capability >= 8.9 (Ada/Hopper/Blackwell).
    """
    _check_fp8_support()
    from torchao.quantization import (  # type: ignore[import-not-found,unused-ignore]
        Float8DynamicActivationFloat8WeightConfig,
        PerRow,
        quantize_,
    )

    quantize_(transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))


def compile_transformer(pipe: Any, mode: str | None = None) -> None:
    """``torch.compile`` the transformer in place (the VAE/text encoders run once per job).

    The first call at each image size compiles; the worker's start-up warm-up pays that.
    """
    kwargs: dict[str, Any] = {"fullgraph": True}
    if mode:
        kwargs["mode"] = mode
    # In-place nn.Module.compile keeps the pipeline's component registry untouched.
    pipe.transformer.compile(**kwargs)


class FluxEngine:
    """Owns the pipeline; ``load`` then ``warmup`` then any number of ``generate`` calls."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.pipe: Any = None
        self.device = "unknown"
        self.dtype_name: str = settings.dtype or "auto"
        self.compiled = False
        self.fp8 = False

    def load(self) -> None:
        """Load from the local directory only (``local_files_only``; no hub access)."""
        check_model_dir(self.settings.model_dir)
        from diffusers import FluxPipeline

        s = self.settings
        t0 = time.perf_counter()
        _, dtype = _resolve_dtype(s.dtype, _resolve_device(s.device))
        try:
            pipe = FluxPipeline.from_pretrained(  # type: ignore[no-untyped-call,unused-ignore]
                str(s.model_dir), dtype=dtype, local_files_only=True
            )
        except (OSError, ValueError) as exc:
            raise ModelDirError(f"cannot load FLUX pipeline from {s.model_dir}: {exc}") from exc
        self.prepare(pipe)
        log.info(
            "loaded %s on %s (%s) in %.1fs",
            s.model_dir,
            self.device,
            self.dtype_name,
            time.perf_counter() - t0,
        )

    def prepare(self, pipe: Any) -> None:
        """Apply the speed/memory options to an in-memory pipeline and adopt it.

        Separate from :meth:`load` so the GPU benchmark times exactly this code path
        on a randomly initialised, real-size pipeline.
        """
        import torch

        s = self.settings
        preflight(s)
        self.device = _resolve_device(s.device)
        self.dtype_name, dtype = _resolve_dtype(s.dtype, self.device)
        if pipe.transformer.dtype != dtype:  # from_pretrained already cast; avoid re-casting
            pipe.to(dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        if self.device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if s.offload == "model":
            pipe.enable_model_cpu_offload(device=self.device)
        elif s.offload == "sequential":
            pipe.enable_sequential_cpu_offload(device=self.device)
        else:
            pipe.to(self.device)
        if s.fuse_qkv:
            pipe.transformer.fuse_qkv_projections()
        if s.fp8:
            apply_fp8(pipe.transformer)  # after .to(cuda): quantise on the GPU, fast
            self.fp8 = True
        if s.compile:
            compile_transformer(pipe, s.compile_mode)
            self.compiled = True
        self.pipe = pipe

    def warmup(self) -> None:
        """One throw-away generation so compile/autotune costs are paid before /readyz."""
        s = self.settings
        w, h = resolve_image_size(s.warmup_image_size, max(s.max_side, 2048))
        req = GenerationRequest(
            prompt="warm-up", width=w, height=h, num_inference_steps=s.warmup_steps, seed=0
        )
        t0 = time.perf_counter()
        self.generate(req, on_step=None, cancel=None)
        log.info("warm-up at %dx%d done in %.1fs", w, h, time.perf_counter() - t0)

    def generate(
        self,
        req: GenerationRequest,
        on_step: ProgressFn | None,
        cancel: threading.Event | None,
    ) -> dict[str, Any]:
        """Run one job and return fal's output JSON.

        ``on_step(i, n)`` is called after each denoising step (i = 1..n). If ``cancel`` is
        set, :class:`JobCancelled` is raised at the next step boundary, before any decode.
        """
        import torch

        if self.pipe is None:
            raise RuntimeError("pipeline not loaded")
        pipe = self.pipe
        n = req.num_inference_steps
        delay = self.settings.step_delay_s

        def _on_step_end(_pipe: Any, i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            if delay:
                time.sleep(delay)
            if cancel is not None and cancel.is_set():
                raise JobCancelled()
            if on_step is not None:
                on_step(i + 1, n)
            return kwargs

        if cancel is not None and cancel.is_set():
            raise JobCancelled()
        # A CPU generator makes seeds reproduce across devices and runs.
        generator = torch.Generator(device="cpu").manual_seed(req.seed % 2**64)
        t0 = time.perf_counter()
        try:
            with torch.inference_mode():
                out = pipe(
                    prompt=req.prompt,
                    width=req.width,
                    height=req.height,
                    num_inference_steps=n,
                    guidance_scale=req.guidance_scale,
                    num_images_per_prompt=req.num_images,
                    generator=generator,
                    max_sequence_length=self.settings.max_sequence_length,
                    callback_on_step_end=_on_step_end,
                    output_type="pil",
                )
        except JobCancelled:
            # Offload hooks are normally reset at the end of __call__, which we skipped.
            pipe.maybe_free_model_hooks()
            if self.device == "cuda":
                torch.cuda.empty_cache()
            raise
        if self.device == "cuda":
            torch.cuda.synchronize()
        inference = time.perf_counter() - t0
        images = list(out.images)
        nsfw = [False] * len(images)
        checker = self.settings.nsfw_checker
        if checker is not None and req.enable_safety_checker:
            nsfw = [bool(x) for x in checker(images)]
            from PIL import Image

            images = [
                Image.new("RGB", im.size) if flagged else im
                for im, flagged in zip(images, nsfw, strict=True)
            ]
        encoded = [encode_image(im, req.output_format).to_json() for im in images]
        return {
            "images": encoded,
            "timings": {"inference": inference},
            "seed": req.seed,
            "has_nsfw_concepts": nsfw,
            "prompt": req.prompt,
        }
