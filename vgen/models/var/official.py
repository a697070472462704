"""Load the released VAR checkpoints (FoundationVision/VAR: vae_ch160v4096z32.pth, var_d16..d30.pth).

Files are read safely: ``torch.load(weights_only=True)`` for .pth / .pt (tensors only, no
pickled code) and safetensors for .safetensors. A file may hold the bare state dict (as the
releases do) or the official trainer checkpoint ({"trainer": {"var_wo_ddp": ..., "vae_local": ...}}).

``load_official(vae_path, var_path)`` takes one path each (either may be None) because the
releases ship the tokenizer and each transformer as separate files. The architecture is read
from the tensor shapes (depth, width, heads, vocabulary, Cvae, classes, sequence length, VAE
width, number of Phi convs) and compared with the expected config; any difference is refused
with a one-line ``UserError`` naming it, e.g. "var_d16.pth: checkpoint has depth 16, config
expects 20". ``depth=None`` accepts the checkpoint's depth. Models are built on the meta
device and the checkpoint tensors are assigned, so a d30 model is not first built at random.

Our module names equal the official ones, so the renaming table ``OFFICIAL_TO_VGEN`` is empty;
it is the one place to add a rename (official prefix -> ours) should a name ever diverge.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vgen.errors import UserError
from vgen.models.var.var import VAR
from vgen.models.var.vqvae import OFFICIAL_PATCH_NUMS, VQVAE

OFFICIAL_TO_VGEN: dict[str, str] = {}


def read_state_dict(path, key: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, read without executing pickled code.

    ``key`` picks the model out of an official trainer checkpoint ("var_wo_ddp" / "vae_local")."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(path), device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any read failure is a bad file from the user's side
        raise UserError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None
    if isinstance(sd, dict) and "trainer" in sd and key:
        sd = sd["trainer"].get(key, sd)
    if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
        sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{path} does not hold a state dict of tensors")
    return rename(sd)


def rename(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Apply ``OFFICIAL_TO_VGEN`` (prefix renames); the identity while the table is empty."""
    out = {}
    for k, v in sd.items():
        for old, new in OFFICIAL_TO_VGEN.items():
            if k.startswith(old):
                k = new + k[len(old):]
                break
        out[k] = v
    return out


def _need(sd: dict, name: str, path) -> torch.Tensor:
    if name not in sd:
        raise UserError(f"{Path(path).name}: not a VAR-layout checkpoint (no '{name}')")
    return sd[name]


def infer_var_config(sd: dict[str, torch.Tensor], path="checkpoint") -> dict:
    """Architecture of a VAR state dict, from its tensor shapes."""
    C = _need(sd, "class_emb.weight", path).shape[1]
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    heads = sd["blocks.0.attn.scale_mul_1H11"].shape[1] if "blocks.0.attn.scale_mul_1H11" in sd else None
    pos = _need(sd, "pos_1LC", path)
    return dict(depth=depth, embed_dim=C, num_heads=heads,
                vocab_size=_need(sd, "head.weight", path).shape[0],
                Cvae=_need(sd, "word_embed.weight", path).shape[1],
                num_classes=sd["class_emb.weight"].shape[0] - 1,
                tokens=pos.shape[1] if pos.dim() == 3 else None,
                attn_l2_norm="blocks.0.attn.scale_mul_1H11" in sd,
                shared_aln="shared_ada_lin.1.weight" in sd)


def infer_vae_config(sd: dict[str, torch.Tensor], path="checkpoint") -> dict:
    """Architecture of a VQ-VAE state dict, from its tensor shapes."""
    emb = _need(sd, "quantize.embedding.weight", path)
    return dict(vocab_size=emb.shape[0], z_channels=emb.shape[1],
                ch=_need(sd, "encoder.conv_in.weight", path).shape[0],
                levels=len({k.split(".")[2] for k in sd if k.startswith("encoder.down.")}),
                share_quant_resi=len({k.split(".")[3] for k in sd if k.startswith("quantize.quant_resi.qresi_ls.")}))


_WORDS = dict(depth="depth", embed_dim="width", num_heads="heads", vocab_size="vocabulary", Cvae="Cvae",
              z_channels="Cvae", num_classes="classes", tokens="sequence length", attn_l2_norm="attn_l2_norm",
              shared_aln="shared_aln", ch="VAE width", levels="VAE levels", share_quant_resi="Phi convs")


def check_config(found: dict, expected: dict, path) -> None:
    """Refuse the first difference between a checkpoint's architecture and the expected one."""
    for k, want in expected.items():
        have = found.get(k)
        if want is not None and have is not None and have != want:
            raise UserError(f"{Path(path).name}: checkpoint has {_WORDS.get(k, k)} {have}, config expects {want}")


def load_state(model: torch.nn.Module, sd: dict[str, torch.Tensor], path="checkpoint") -> torch.nn.Module:
    """Strict load that names missing / unexpected keys in one line."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    if missing or unexpected:
        raise UserError(f"{Path(path).name}: {len(missing)} missing keys (e.g. {missing[:3]}), "
                        f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    for k, v in own.items():
        if tuple(v.shape) != tuple(sd[k].shape):
            raise UserError(f"{Path(path).name}: '{k}' has shape {tuple(sd[k].shape)}, model expects {tuple(v.shape)}")
    model.load_state_dict(sd, strict=True, assign=True)
    return model


def load_official(vae_path=None, var_path=None, *, depth: int | None = None, vocab_size=4096, z_channels=32,
                  ch=160, ch_mult=(1, 1, 2, 2, 4), share_quant_resi=4, num_classes=1000,
                  patch_nums=OFFICIAL_PATCH_NUMS, attn_l2_norm=True, shared_aln=False, device="cpu",
                  vae_kwargs: dict | None = None, var_kwargs: dict | None = None) -> tuple[VQVAE | None, VAR | None]:
    """(VQ-VAE, VAR) from official-layout checkpoints; a model whose path is None is returned as None.

    The defaults are the released hyper-parameters; ``depth`` None takes the checkpoint's. Extra
    constructor arguments go through ``vae_kwargs`` / ``var_kwargs`` (e.g. tiny test models).
    Both models are returned in eval mode on ``device``.
    """
    patch_nums = tuple(patch_nums)
    vae = var = None
    if vae_path is not None:
        sd = read_state_dict(vae_path, "vae_local")
        check_config(infer_vae_config(sd, vae_path), dict(vocab_size=vocab_size, z_channels=z_channels, ch=ch,
                                                          levels=len(ch_mult), share_quant_resi=share_quant_resi),
                     vae_path)
        with torch.device("meta"):
            vae = VQVAE(vocab_size=vocab_size, z_channels=z_channels, ch=ch, ch_mult=ch_mult,
                        share_quant_resi=share_quant_resi, patch_nums=patch_nums, **(vae_kwargs or {}))
        hits = sd.get("quantize.ema_vocab_hit_SV")
        if hits is not None and hits.shape[0] != len(patch_nums):  # usage statistics of another scale list
            sd["quantize.ema_vocab_hit_SV"] = torch.zeros(len(patch_nums), vocab_size, dtype=hits.dtype)
        vae = load_state(vae, sd, vae_path).to(device).eval()
    if var_path is not None:
        sd = read_state_dict(var_path, "var_wo_ddp")
        found = infer_var_config(sd, var_path)
        depth = depth or found["depth"]
        kw = dict(embed_dim=64 * depth, num_heads=depth) | (var_kwargs or {})
        check_config(found, dict(depth=depth, vocab_size=vocab_size, Cvae=z_channels, num_classes=num_classes,
                                 embed_dim=kw["embed_dim"], num_heads=kw["num_heads"],
                                 tokens=sum(p * p for p in patch_nums), attn_l2_norm=attn_l2_norm,
                                 shared_aln=shared_aln), var_path)
        with torch.device("meta"):
            var = VAR(vocab_size=vocab_size, Cvae=z_channels, num_classes=num_classes, depth=depth,
                      attn_l2_norm=attn_l2_norm, shared_aln=shared_aln, patch_nums=patch_nums, **kw)
        var = load_state(var, sd, var_path).to(device).eval()
    return vae, var
