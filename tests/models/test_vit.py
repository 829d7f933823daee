"""ViT backbones: timm's key layout (a table here; timm itself where installed), the forward against a float64
restatement with attention written by hand, the sin-cos table, stochastic depth, frozen patch projection, config
checks, bf16 autocast."""
from __future__ import annotations

import math

import pytest
import torch

from fastpnr.config import build_config
from fastpnr.errors import ConfigError
from fastpnr.methods import build_method
from fastpnr.models import build_vit
from fastpnr.models.vit import TIMM_NAMES, drop_path, sincos_position_embedding

# (embed_dim, depth, heads) of timm's vit_{tiny,small,base}_patch16_224.
STANDARD = {"vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6), "vit_base": (768, 12, 12)}


def timm_table(dim: int, depth: int, patch: int, image: int) -> dict[str, tuple]:
    """timm VisionTransformer(class_token=True, global_pool="token", num_classes=0): every state-dict key, its shape."""
    table = {"cls_token": (1, 1, dim), "pos_embed": (1, 1 + (image // patch) ** 2, dim),
             "patch_embed.proj.weight": (dim, 3, patch, patch), "patch_embed.proj.bias": (dim,),
             "norm.weight": (dim,), "norm.bias": (dim,)}
    for i in range(depth):
        b = f"blocks.{i}."
        table.update({b + "norm1.weight": (dim,), b + "norm1.bias": (dim,),
                      b + "attn.qkv.weight": (3 * dim, dim), b + "attn.qkv.bias": (3 * dim,),
                      b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,),
                      b + "norm2.weight": (dim,), b + "norm2.bias": (dim,),
                      b + "mlp.fc1.weight": (4 * dim, dim), b + "mlp.fc1.bias": (4 * dim,),
                      b + "mlp.fc2.weight": (dim, 4 * dim), b + "mlp.fc2.bias": (dim,)})
    return table


@pytest.mark.parametrize("name,patch,image", [("vit_tiny", 4, 32), ("vit_small", 8, 64), ("vit_base", 16, 224)])
def test_state_dict_keys_and_shapes_are_timms(name, patch, image):
    dim, depth, heads = STANDARD[name]
    net = build_vit(name, patch, image)
    got = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert got == timm_table(dim, depth, patch, image)
    assert net.feat_dim == dim and net.blocks[0].attn.num_heads == heads


def test_loads_into_timm_and_gives_the_same_features():
    timm = pytest.importorskip("timm", reason="timm is not installed (pip install timm): the layout table test covers it")
    net = build_vit("vit_tiny", 4, 32, pos_embed="sincos").eval()
    ref = timm.create_model(TIMM_NAMES["vit_tiny"], pretrained=False, img_size=32, patch_size=4, num_classes=0).eval()
    ref.load_state_dict(net.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(net(x), ref(x), rtol=1e-5, atol=1e-5)


def _layer_norm(x, w, b, eps=1e-6):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def _gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def restated_vit(sd: dict, x: torch.Tensor, patch: int, heads: int) -> torch.Tensor:
    """The ViT forward from the state dict alone: patches cut by indexing, attention as softmax(Q K^T / sqrt(d)) V."""
    b, c, h, w = x.shape
    g = h // patch
    patches = x.reshape(b, c, g, patch, g, patch).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, c * patch * patch)
    wp = sd["patch_embed.proj.weight"].reshape(sd["patch_embed.proj.weight"].shape[0], -1)
    tokens = patches @ wp.T + sd["patch_embed.proj.bias"]
    t = torch.cat([sd["cls_token"].expand(b, 1, -1), tokens], dim=1) + sd["pos_embed"]
    dim = t.shape[-1]
    d = dim // heads
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(depth):
        p = lambda n: sd[f"blocks.{i}.{n}"]  # noqa: E731
        y = _layer_norm(t, p("norm1.weight"), p("norm1.bias"))
        qkv = y @ p("attn.qkv.weight").T + p("attn.qkv.bias")
        q, k, v = qkv[..., :dim], qkv[..., dim:2 * dim], qkv[..., 2 * dim:]
        out = []
        for j in range(heads):
            s = slice(j * d, (j + 1) * d)
            scores = q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(d)
            a = torch.exp(scores - scores.max(-1, keepdim=True).values)
            out.append((a / a.sum(-1, keepdim=True)) @ v[..., s])
        t = t + torch.cat(out, dim=-1) @ p("attn.proj.weight").T + p("attn.proj.bias")
        y = _layer_norm(t, p("norm2.weight"), p("norm2.bias"))
        t = t + _gelu(y @ p("mlp.fc1.weight").T + p("mlp.fc1.bias")) @ p("mlp.fc2.weight").T + p("mlp.fc2.bias")
    return _layer_norm(t, sd["norm.weight"], sd["norm.bias"])[:, 0]


@pytest.mark.parametrize("pos_embed", ["learned", "sincos"])
def test_forward_matches_a_float64_restatement(pos_embed):
    torch.manual_seed(0)
    net = build_vit("vit_tiny", 4, 16, pos_embed=pos_embed).double().eval()
    with torch.no_grad():  # random norms and biases, so every parameter's role is checked
        for name, prm in net.named_parameters():
            if "norm" in name or name.endswith("bias"):
                prm.normal_(0.5 if name.endswith("weight") else 0.0, 0.2)
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    sd = {k: v.detach() for k, v in net.state_dict().items()}
    with torch.no_grad():
        torch.testing.assert_close(net(x), restated_vit(sd, x, 4, 3), rtol=1e-10, atol=1e-10)


def test_sincos_table_is_moco_v3s_formula():
    grid, dim = 3, 8
    table = sincos_position_embedding(grid, dim)[0].double()
    assert table.shape == (1 + grid * grid, dim) and table[0].abs().max() == 0
    quarter = dim // 4
    for r in range(grid):
        for c in range(grid):
            row = table[1 + r * grid + c]
            for j in range(quarter):
                w = 10000.0 ** (-j / quarter)
                want = [math.sin(r * w), math.cos(r * w), math.sin(c * w), math.cos(c * w)]
                got = [row[j + m * quarter].item() for m in range(4)]
                assert got == pytest.approx(want, abs=1e-6)  # float32 table


def test_sincos_pos_embed_is_fixed_and_patch_projection_can_be_frozen():
    net = build_vit("vit_tiny", 4, 16, pos_embed="sincos", freeze_patch_embed=True)
    net(torch.randn(2, 3, 16, 16)).sum().backward()
    assert not net.pos_embed.requires_grad and net.pos_embed.grad is None
    assert all(p.grad is None for p in net.patch_embed.parameters())
    assert net.cls_token.grad is not None and net.blocks[0].attn.qkv.weight.grad is not None


def test_drop_path_zeroes_whole_samples_and_rescales_the_rest():
    torch.manual_seed(0)
    x = torch.ones(4000, 5, 3, dtype=torch.float64)
    y = drop_path(x, 0.25, training=True)
    per_sample = y[:, 0, 0]
    assert set(per_sample.unique().tolist()) == {0.0, 1 / 0.75}
    assert (y == y[:, :1, :1]).all()  # a sample is dropped whole
    kept = (per_sample > 0).double().mean().item()
    assert abs(kept - 0.75) < 4 * math.sqrt(0.75 * 0.25 / 4000)  # binomial 4-sigma
    assert drop_path(x, 0.25, training=False) is x


def test_stochastic_depth_is_off_in_eval_and_rises_with_depth():
    net = build_vit("vit_tiny", 4, 16, drop_path=0.1)
    assert [b.drop_path for b in net.blocks][0] == 0 and net.blocks[-1].drop_path == pytest.approx(0.1)
    x = torch.randn(2, 3, 16, 16)
    net.eval()
    torch.testing.assert_close(net(x), net(x), rtol=0, atol=0)


def test_bf16_autocast_runs_close_to_float32_and_backpropagates():
    torch.manual_seed(0)
    net = build_vit("vit_tiny", 4, 16)
    x = torch.randn(4, 3, 16, 16)
    ref = net(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    out.float().sum().backward()
    rel = (out.float() - ref).norm() / ref.norm()
    assert torch.isfinite(out).all() and rel < 0.05  # bf16 has 8 mantissa bits: ~1e-2 over 12 blocks
    assert net.blocks[0].attn.qkv.weight.grad is not None


def _cfg(**ov):
    # CIFAR-10 at its native 32 px (the smoke preset itself runs at 16 px)
    return build_config("smoke", {"model.backbone": "vit_tiny", "model.patch_size": 4, "data.image_size": 32, **ov})


def test_config_resolves_the_image_size_and_the_heads_get_the_width():
    cfg = _cfg(**{"method.proj_hidden": 16, "method.proj_out": 8})
    assert cfg.model.image_size == 32
    method = build_method(cfg.method, cfg.model, 10)
    assert method.feat_dim == 192 and method.projector[0].in_features == 192
    assert method.classifier.in_features == 192
    assert method.embed(torch.randn(2, 3, 32, 32))[1].shape == (2, 8)


@pytest.mark.parametrize("ov,message", [
    ({"model.patch_size": 5}, "model.image_size=32 is invalid; allowed: a multiple of model.patch_size (5)"),
    ({"model.patch_size": 0}, "model.patch_size=0 is invalid; allowed: an integer >= 1"),
    ({"model.pos_embed": "rope"}, "model.pos_embed='rope' is invalid; allowed: learned, sincos"),
    ({"model.drop_path": 1.0}, "model.drop_path=1.0 is invalid; allowed: 0 <= rate < 1"),
    ({"data.crop_size": 24}, "model.image_size=24 is invalid; allowed: the training crop (24 px) and the evaluated "
                             "image size (32 px)"),
    ({"model.backbone": "vit_huge"}, "model.backbone='vit_huge' is invalid; allowed: resnet18, resnet50, vit_base"),
])
def test_bad_vit_settings_are_one_line(ov, message):
    with pytest.raises(ConfigError) as e:
        _cfg(**ov)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_wrong_input_size_is_one_line():
    net = build_vit("vit_tiny", 4, 16)
    with pytest.raises(ConfigError, match="16 px"):
        net(torch.randn(1, 3, 32, 32))
