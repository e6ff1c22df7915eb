"""Build a tiny, randomly initialised FLUX.1 pipeline entirely offline.

Why: the worker must be tested through the exact loading path users take
(``FluxPipeline.from_pretrained(DIR, local_files_only=True)``) without any hub
access, so we fabricate a diffusers-format directory with tiny configs and
in-process trained tokenizers.
"""

from __future__ import annotations

from pathlib import Path

_CORPUS = (
    "a photo of an astronaut riding a horse on the moon cat dog red blue green "
    "mountain river city night day painting portrait landscape tiny worker test"
)


def _train_tokenizer(kind: str, max_length: int) -> object:
    """Train a small word-level tokenizer in-process and wrap it for transformers."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "clip":
        special = ["<|pad|>", "<|startoftext|>", "<|endoftext|>", "<|unk|>"]
        unk, pad, bos, eos = "<|unk|>", "<|pad|>", "<|startoftext|>", "<|endoftext|>"
    else:
        special = ["<pad>", "</s>", "<unk>"]
        unk, pad, bos, eos = "<unk>", "<pad>", None, "</s>"
    tok = Tokenizer(models.WordLevel(unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=special, vocab_size=200)
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A {eos}",
            special_tokens=[(bos, tok.token_to_id(bos)), (eos, tok.token_to_id(eos))],
        )
    else:
        tok.post_processor = processors.TemplateProcessing(
            single=f"$A {eos}", special_tokens=[(eos, tok.token_to_id(eos))]
        )
    kwargs: dict[str, object] = {"unk_token": unk, "pad_token": pad, "eos_token": eos}
    if bos is not None:
        kwargs["bos_token"] = bos
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_length, **kwargs)


def build_tiny_flux(out_dir: Path, seed: int = 0) -> Path:
    """Create and ``save_pretrained`` a tiny random FLUX pipeline into ``out_dir``."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    latent_channels = 4
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * latent_channels,  # 2x2 patch packing
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,  # = T5 d_model
        pooled_projection_dim=32,  # = CLIP hidden size
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),  # must sum to attention_head_dim
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 8),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=64,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    tokenizer = _train_tokenizer("clip", 77)
    tokenizer_2 = _train_tokenizer("t5", 64)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),  # type: ignore[arg-type]
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=32,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
    )
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer_2),  # type: ignore[arg-type]
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(out_dir))
    return out_dir
