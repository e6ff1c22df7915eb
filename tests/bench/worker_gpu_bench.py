"""GPU benchmark of the worker's generation path (not a test; needs a CUDA GPU).

Builds a *randomly initialised* pipeline with the real FLUX.1 [dev] architecture sizes
(12B transformer, T5-XXL encoder, CLIP-L, 16-channel VAE) directly on the GPU in bf16 —
no downloads, no weights — then times ``FluxEngine.generate`` (the exact code the worker
runs per job: text encoding + denoising + VAE decode) at 1024x1024, 28 steps, for:

* ``plain``   bf16 eager
* ``compile`` bf16 + torch.compile of the transformer
* ``fp8``     torchao float8 dynamic quantisation + torch.compile (skipped if torchao is
              not importable or the GPU is older than SM 8.9)
* ``fp8-eager`` float8 without compile (opt-in; usually slower than plain)

Usage (repo root, GPU machine with the ``gpu`` extra, plus ``torchao`` for fp8):

    python tests/bench/worker_gpu_bench.py                    # all default variants
    python tests/bench/worker_gpu_bench.py --variants plain,compile --runs 5
    python tests/bench/worker_gpu_bench.py --quick            # 512px, 4 steps smoke run

Random weights give garbage images, but the FLOPs, memory traffic and kernels are those
of the real model, which is all a latency benchmark needs. Reference anchors on one H100
(published figures, not measured here): 6.71 s plain, 4.30 s compiled, 3.03 s fp8+compile.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# FLUX.1 [dev] component configs (from the public diffusers-format model_index / configs).
FLUX_DEV_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 64,
    "out_channels": None,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}
FLUX_DEV_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 16,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}
CLIP_L: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
T5_XXL: dict[str, Any] = {
    "vocab_size": 32128,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "feed_forward_proj": "gated-gelu",
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "is_encoder_decoder": False,
}
SCHEDULER: dict[str, Any] = {
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}


def build_real_size_pipeline(device: str = "cuda") -> Any:
    """Random-weight FLUX.1 [dev]-sized pipeline, created on the GPU in bf16."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from tests.worker.tiny_flux import _train_tokenizer

    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # never materialise 17B params in fp32
    try:
        with torch.device(device):
            transformer = FluxTransformer2DModel(**FLUX_DEV_TRANSFORMER)
            vae = AutoencoderKL(**FLUX_DEV_VAE)
            text_encoder = CLIPTextModel(CLIPTextConfig(**CLIP_L))
            text_encoder_2 = T5EncoderModel(T5Config(**T5_XXL))
    finally:
        torch.set_default_dtype(prev)
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=_train_tokenizer("clip", 77),  # real vocab not needed for timing
        text_encoder_2=text_encoder_2,
        tokenizer_2=_train_tokenizer("t5", 512),
        transformer=transformer,
    )
    return pipe.to(device, torch.bfloat16)


def build_tiny_pipeline(tmp: Path) -> Any:
    """CPU smoke mode: the test suite's tiny pipeline, so the script's logic can be checked."""
    import torch
    from diffusers import FluxPipeline

    from tests.worker.tiny_flux import build_tiny_flux

    build_tiny_flux(tmp)
    return FluxPipeline.from_pretrained(str(tmp), dtype=torch.float32, local_files_only=True)


def _reset_transformer(pipe: Any) -> None:
    """Undo an in-place ``.compile()`` so the next variant starts from eager."""
    import torch

    pipe.transformer._compiled_call_impl = None
    torch._dynamo.reset()


def time_variant(pipe: Any, name: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from proxy.worker.inputs import GenerationRequest
    from proxy.worker.pipeline import FluxEngine, UnsupportedOption
    from proxy.worker.settings import WorkerSettings

    settings = WorkerSettings(
        model_dir=Path("."),
        device=args.device,
        dtype=args.dtype,
        compile=name in ("compile", "fp8"),
        compile_mode=args.compile_mode,
        fp8=name in ("fp8", "fp8-eager"),
    )
    engine = FluxEngine(settings)
    t0 = time.perf_counter()
    try:
        engine.prepare(pipe)
    except UnsupportedOption as exc:
        return {"variant": name, "skipped": str(exc)}
    prep_s = time.perf_counter() - t0
    req = GenerationRequest(
        prompt="a photo of an astronaut riding a horse on the moon",
        width=args.size,
        height=args.size,
        num_inference_steps=args.steps,
        seed=0,
        output_format="jpeg",
    )
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    engine.generate(req, None, None)  # warm-up: compiles / autotunes for compiled variants
    first_s = time.perf_counter() - t0
    times = []
    for _ in range(args.runs):
        out = engine.generate(req, None, None)
        times.append(float(out["timings"]["inference"]))
    return {
        "variant": name,
        "prepare_s": round(prep_s, 2),
        "first_call_s": round(first_s, 2),
        "median_s": round(statistics.median(times), 3),
        "min_s": round(min(times), 3),
        "runs": [round(t, 3) for t in times],
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1)
        if args.device == "cuda"
        else 0.0,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--variants", default="plain,compile,fp8")
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--compile-mode", default=None, help="torch.compile mode (default: torch's)")
    p.add_argument("--fuse-qkv", action="store_true", help="fuse q/k/v before all variants")
    p.add_argument("--quick", action="store_true", help="512px, 4 steps, 1 run (smoke test)")
    p.add_argument("--json", type=Path, default=None, help="also write results here")
    p.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="check this script's logic on CPU with the tiny test pipeline (numbers meaningless)",
    )
    args = p.parse_args()
    args.device, args.dtype = ("cpu", "fp32") if args.cpu_smoke else ("cuda", "bf16")
    if args.quick:
        args.size, args.steps, args.runs = 512, 4, 1
    if args.cpu_smoke:
        args.size, args.steps, args.runs = 64, 2, 1

    import diffusers
    import torch

    if not args.cpu_smoke and not torch.cuda.is_available():
        print("worker_gpu_bench: needs a CUDA GPU", file=sys.stderr)
        return 2
    try:
        import torchao

        tao = torchao.__version__
    except ImportError:
        tao = "not installed"
    env = {
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else "cpu (smoke)",
        "capability": ".".join(map(str, torch.cuda.get_device_capability()))
        if args.device == "cuda"
        else "-",
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "torchao": tao,
        "size": args.size,
        "steps": args.steps,
        "compile_mode": args.compile_mode,
        "fuse_qkv": args.fuse_qkv,
    }
    print(json.dumps(env), flush=True)
    t0 = time.perf_counter()
    if args.cpu_smoke:
        import tempfile

        pipe = build_tiny_pipeline(Path(tempfile.mkdtemp(prefix="bench-tiny-")))
    else:
        pipe = build_real_size_pipeline()
    n = sum(p.numel() for p in pipe.transformer.parameters())
    print(
        f"built pipeline in {time.perf_counter() - t0:.1f}s; transformer {n / 1e9:.2f}B params",
        flush=True,
    )
    if args.fuse_qkv:
        pipe.transformer.fuse_qkv_projections()
    results = []
    order = ["plain", "compile", "fp8-eager", "fp8"]  # fp8 quantises in place: keep it last
    wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(wanted) - set(order)
    if unknown:
        print(f"unknown variants: {sorted(unknown)}", file=sys.stderr)
        return 2
    quantised = False
    for name in [v for v in order if v in wanted]:
        if name.startswith("fp8") and quantised:
            # Already quantised by fp8-eager: only (re)compile.
            _reset_transformer(pipe)
            pipe.transformer.compile(
                fullgraph=True, **({"mode": args.compile_mode} if args.compile_mode else {})
            )
            res = time_variant_prepared(pipe, name, args)
        else:
            _reset_transformer(pipe)
            res = time_variant(pipe, name, args)
            quantised = quantised or (name.startswith("fp8") and "skipped" not in res)
        results.append(res)
        print(json.dumps(res), flush=True)

    print()
    print(
        f"FLUX.1 [dev]-size random weights, {args.size}x{args.size}, {args.steps} steps, "
        f"bf16, {env['gpu']}"
    )
    print(f"{'variant':<10} {'median s':>9} {'min s':>7} {'first s':>8} {'peak GiB':>9}")
    for r in results:
        if "skipped" in r:
            print(f"{r['variant']:<10} skipped: {r['skipped']}")
        else:
            print(
                f"{r['variant']:<10} {r['median_s']:>9.3f} {r['min_s']:>7.3f} "
                f"{r['first_call_s']:>8.1f} {r['peak_mem_gib']:>9.1f}"
            )
    out = args.json or (Path(os.environ["OUT"]) / "bench.json" if os.environ.get("OUT") else None)
    if out:
        out.write_text(json.dumps({"env": env, "results": results}, indent=2))
    return 0


def time_variant_prepared(pipe: Any, name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Time a variant whose transformer was already quantised (and compiled) by the caller."""
    import torch

    from proxy.worker.inputs import GenerationRequest
    from proxy.worker.pipeline import FluxEngine
    from proxy.worker.settings import WorkerSettings

    engine = FluxEngine(WorkerSettings(model_dir=Path("."), device=args.device, dtype=args.dtype))
    engine.prepare(pipe)
    engine.fp8 = True
    engine.compiled = name == "fp8"
    req = GenerationRequest(
        prompt="a photo of an astronaut riding a horse on the moon",
        width=args.size,
        height=args.size,
        num_inference_steps=args.steps,
        seed=0,
    )
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    engine.generate(req, None, None)
    first_s = time.perf_counter() - t0
    times = [
        float(engine.generate(req, None, None)["timings"]["inference"]) for _ in range(args.runs)
    ]
    return {
        "variant": name,
        "first_call_s": round(first_s, 2),
        "median_s": round(statistics.median(times), 3),
        "min_s": round(min(times), 3),
        "runs": [round(t, 3) for t in times],
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1)
        if args.device == "cuda"
        else 0.0,
    }


if __name__ == "__main__":
    raise SystemExit(main())
