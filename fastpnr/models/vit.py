"""Vision Transformers (ViT-Tiny/Small/Base), our own implementation in timm's state-dict key layout.

The parameter names and shapes are those of ``timm.models.vision_transformer.VisionTransformer`` with a class token,
``global_pool="token"`` and ``num_classes=0`` (no ``head``): ``cls_token``, ``pos_embed``, ``patch_embed.proj``,
``blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``. So an exported backbone loads with
``timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, num_classes=0).load_state_dict(sd)``.

Blocks are pre-norm: ``x = x + DropPath(Attn(LN(x)))``, ``x = x + DropPath(MLP(LN(x)))``, LayerNorm eps 1e-6, GELU
(erf), MLP ratio 4, qkv with bias. Attention goes through ``F.scaled_dot_product_attention`` (flash / memory-efficient
kernels on CUDA, bf16 autocast). The feature is the class token after the final norm (MoCo v3's, timm's "token" pool).

Initialization follows MoCo v3 (facebookresearch/moco-v3 vits.py): Xavier-uniform linears (qkv as three D x D
matrices), Xavier-uniform patch projection on its flattened (D, 3 p^2) view, class token N(0, 1e-6), learned position
embeddings N(0, 0.02) truncated at 2 std; ``pos_embed="sincos"`` is MoCo v3's fixed 2-D sin-cos table (a parameter
that never requires grad, as theirs, so the key stays timm's). ``freeze_patch_embed``: MoCo v3's random patch
projection (§4.2 "stop-grad-conv1"): the patch projection keeps its random init.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import require

# (embed_dim, depth, num_heads) of timm's vit_{tiny,small,base}_patch16_224 (DeiT / ViT papers).
VITS = {
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
}
# timm's model names for a backbone (patch and image size are given to create_model as arguments).
TIMM_NAMES = {"vit_tiny": "vit_tiny_patch16_224", "vit_small": "vit_small_patch16_224", "vit_base": "vit_base_patch16_224"}
POS_EMBEDS = ("learned", "sincos")
MLP_RATIO = 4
LN_EPS = 1e-6


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> D: a stride-p convolution, then (B, N, D) in row-major patch order."""

    def __init__(self, patch_size: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, patch_size, patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        # rows of qkv.weight: [q; k; v], each head a contiguous slice (timm's layout)
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: each sample's residual branch is zeroed with probability ``p``, kept ones scaled 1/(1-p)."""
    if p == 0.0 or not training:
        return x
    keep = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(1 - p)
    return x * keep / (1 - p)


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, MLP_RATIO * dim)
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


def sincos_position_embedding(grid: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """MoCo v3's fixed 2-D table, (1, 1 + grid^2, dim): a zero row for the class token, then per patch (r, c)
    ``[sin(r w), cos(r w), sin(c w), cos(c w)]`` with ``w_j = temperature^(-j / (dim/4))``, j < dim/4."""
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing="ij")
    out_r, out_c = rows.flatten()[:, None] * omega, cols.flatten()[:, None] * omega
    table = torch.cat([out_r.sin(), out_r.cos(), out_c.sin(), out_c.cos()], dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), table]).unsqueeze(0).float()


class VisionTransformer(nn.Module):
    """ViT backbone returning the class token's features (B, feat_dim) of (B, 3, image_size, image_size) inputs."""

    def __init__(self, embed_dim: int, depth: int, num_heads: int, patch_size: int, image_size: int,
                 pos_embed: str = "learned", drop_path: float = 0.0, freeze_patch_embed: bool = False):
        super().__init__()
        self.image_size, self.patch_size = image_size, patch_size
        self.grid = image_size // patch_size
        self.feat_dim = embed_dim
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid ** 2, embed_dim))
        # stochastic depth rate rising linearly with depth to drop_path (DeiT / timm)
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.Sequential(*(Block(embed_dim, num_heads, r) for r in rates))
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        self._init_weights(pos_embed)
        if freeze_patch_embed:
            self.patch_embed.requires_grad_(False)

    def _init_weights(self, pos_embed: str) -> None:
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                if name.endswith("qkv"):  # q, k and v each as a D x D matrix
                    bound = math.sqrt(6.0 / (m.weight.shape[0] // 3 + m.weight.shape[1]))
                    nn.init.uniform_(m.weight, -bound, bound)
                else:
                    nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.proj.weight
        bound = math.sqrt(6.0 / (w.shape[0] + w[0].numel()))
        nn.init.uniform_(w, -bound, bound)
        nn.init.zeros_(self.patch_embed.proj.bias)
        nn.init.normal_(self.cls_token, std=1e-6)
        if pos_embed == "sincos":
            with torch.no_grad():
                self.pos_embed.copy_(sincos_position_embedding(self.grid, self.feat_dim))
            self.pos_embed.requires_grad_(False)
        else:
            nn.init.trunc_normal_(self.pos_embed, std=0.02, a=-0.04, b=0.04)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        require(x.shape[1] == self.grid ** 2, "input image size", tuple(x.shape[1:]),
                f"{self.image_size} px (the ViT's model.image_size; its position table has {self.grid}x{self.grid} patches)")
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1) + self.pos_embed.to(x.dtype)
        return self.norm(self.blocks(x))[:, 0]


def build_vit(name: str, patch_size: int, image_size: int, pos_embed: str = "learned", drop_path: float = 0.0,
              freeze_patch_embed: bool = False, depth: int | None = None) -> VisionTransformer:
    """``depth``: blocks (None: the standard 12; fewer make scaled-down CPU studies and tests cheap)."""
    require(name in VITS, "model.backbone", name, sorted(VITS))
    dim, standard_depth, heads = VITS[name]
    check_vit(name, patch_size, image_size, pos_embed, drop_path, depth)
    depth = standard_depth if depth is None else depth
    return VisionTransformer(dim, depth, heads, patch_size, image_size, pos_embed=pos_embed, drop_path=drop_path,
                             freeze_patch_embed=freeze_patch_embed)


def check_vit(name: str, patch_size: int, image_size: int, pos_embed: str, drop_path: float,
              depth: int | None = None) -> None:
    """One-line errors for ViT settings that cannot build (also run when the configuration is built)."""
    require(depth is None or (isinstance(depth, int) and depth >= 1), "model.depth", depth,
            "None (the standard 12 blocks) or an integer >= 1")
    require(isinstance(patch_size, int) and patch_size >= 1, "model.patch_size", patch_size, "an integer >= 1")
    require(isinstance(image_size, int) and image_size >= 1 and image_size % patch_size == 0, "model.image_size",
            image_size, f"a multiple of model.patch_size ({patch_size}): the patches tile the image")
    require(pos_embed in POS_EMBEDS, "model.pos_embed", pos_embed, POS_EMBEDS)
    require(pos_embed != "sincos" or VITS[name][0] % 4 == 0, "model.pos_embed", pos_embed,
            f"learned for {name} (the 2-D sin-cos table needs a width divisible by 4)")
    require(0.0 <= drop_path < 1.0, "model.drop_path", drop_path, "0 <= rate < 1")
