"""Load the released VAR checkpoints (FoundationVision/VAR: vae_ch160v4096z32.pth, var_d16..d30.pth).

Files are read safely: ``torch.load(weights_only=True)`` for .pth / .pt (tensors only, no
pickled code) and safetensors for .safetensors. A file may hold the bare state dict (as the
releases do) or the official trainer checkpoint ({"trainer": {"var_wo_ddp": ..., "vae_local": ...}}).

``load_official(vae_path, var_path)`` takes one path each (either may be None) because the
releases ship the tokenizer and each transformer as separate files. The architecture is read
from the tensor shapes (depth, width, heads, vocabulary, Cvae, classes, sequence length, VAE
width, number of Phi convs) and compared with the expected config; any difference is refused
with a one-line ``UserError`` naming it, e.g. "var_d16.pth: checkpoint has depth 16, config
expects 20". ``depth=None`` accepts the checkpoint's depth. A file whose key set is not that of
any VAR (a renamed or dropped key) is named by its keys first, before the architecture read from
them could mislead, e.g. "var_d16.pth: missing key 'blocks.0.attn.scale_mul_1H11'; unexpected key
'blocks.0.attn.renamed'" (the first of each in model / file order, "(and N more)" for the rest).
Models are built uninitialised (``uninitialized``) and the checkpoint tensors are assigned, so a
d30 model is not first built at random.

Our module names equal the official ones, so the renaming table ``OFFICIAL_TO_VGEN`` is empty;
it is the one place to add a rename (official prefix -> ours) should a name ever diverge.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

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


def _need(sd: dict, names: tuple[str, ...], what: str, path) -> None:
    """Refuse a file that holds none of a layout's defining tensors (a wrong file, not a renamed key)."""
    if not any(n in sd for n in names):
        raise UserError(f"{Path(path).name}: not a {what}-layout checkpoint (no '{names[0]}')")


def _shape(sd: dict, name: str, dim: int):
    return sd[name].shape[dim] if name in sd and sd[name].dim() > dim else None


_VAR_KEYS = ("class_emb.weight", "pos_1LC", "head.weight", "word_embed.weight")
_VAE_KEYS = ("quantize.embedding.weight", "encoder.conv_in.weight")


def infer_var_config(sd: dict[str, torch.Tensor], path="checkpoint") -> dict:
    """Architecture of a VAR state dict, from its tensor shapes (None where the defining tensor is absent)."""
    _need(sd, _VAR_KEYS, "VAR", path)
    classes = _shape(sd, "class_emb.weight", 0)
    pos = sd.get("pos_1LC")
    return dict(depth=len({k.split(".")[1] for k in sd if k.startswith("blocks.")}),
                embed_dim=_shape(sd, "class_emb.weight", 1), num_heads=_shape(sd, "blocks.0.attn.scale_mul_1H11", 1),
                vocab_size=_shape(sd, "head.weight", 0), Cvae=_shape(sd, "word_embed.weight", 1),
                num_classes=None if classes is None else classes - 1,
                tokens=pos.shape[1] if pos is not None and pos.dim() == 3 else None,
                attn_l2_norm="blocks.0.attn.scale_mul_1H11" in sd,
                shared_aln="shared_ada_lin.1.weight" in sd)


def infer_vae_config(sd: dict[str, torch.Tensor], path="checkpoint") -> dict:
    """Architecture of a VQ-VAE state dict, from its tensor shapes (None where the defining tensor is absent)."""
    _need(sd, _VAE_KEYS, "VQ-VAE", path)
    return dict(vocab_size=_shape(sd, "quantize.embedding.weight", 0),
                z_channels=_shape(sd, "quantize.embedding.weight", 1),
                ch=_shape(sd, "encoder.conv_in.weight", 0),
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


def key_difference(model: torch.nn.Module, sd: dict[str, torch.Tensor], path="checkpoint") -> str | None:
    """One line naming the first missing and the first unexpected key (model / file order), or None."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    parts = [f"{word} key '{keys[0]}'" + (f" (and {len(keys) - 1} more)" if len(keys) > 1 else "")
             for word, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
    return f"{Path(path).name}: " + "; ".join(parts) if parts else None


class _SkipInit(TorchFunctionMode):
    """Returns the tensor of every in-place initialiser of ``torch.nn.init`` (``normal_``, ``kaiming_uniform_``,
    ...: they all dispatch through the mode) untouched; its helpers such as ``calculate_gain`` still run."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init" and func.__name__.endswith("_"):
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


@contextlib.contextmanager
def uninitialized():
    """Build modules on the CPU with ``torch.nn.init``'s initialisers skipped, for a model whose
    every tensor ``load_state`` then replaces (strictly, so none is left uninitialised).

    A 1B-parameter VAR then builds in 0.05 s with its 3.9 GiB never written (the pages of ``torch.empty``
    are not committed until touched): initialised at random it took 5.7 s on one thread and 4.4 GiB, and
    on the meta device 2.0 s, whose kernels for ops such as ``log`` and ``cat`` are Python references:
    the first call imports ``torch._dynamo``, 1.3-1.7 s of every ``vgen sample``."""
    with torch.device("cpu"), _SkipInit():
        yield


def load_state(model: torch.nn.Module, sd: dict[str, torch.Tensor], path="checkpoint") -> torch.nn.Module:
    """Strict load that names missing / unexpected keys, then a wrong shape, in one line."""
    message = key_difference(model, sd, path)
    if message:
        raise UserError(message)
    for k, v in model.state_dict().items():
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
        vae_arch = dict(vocab_size=vocab_size, z_channels=z_channels, ch=ch, ch_mult=list(ch_mult),
                        share_quant_resi=share_quant_resi, patch_nums=list(patch_nums), **(vae_kwargs or {}))
        with uninitialized():
            vae = VQVAE(**vae_arch)
        hits = sd.get("quantize.ema_vocab_hit_SV")
        if hits is not None and hits.shape[0] != len(patch_nums):  # usage statistics of another scale list
            sd["quantize.ema_vocab_hit_SV"] = torch.zeros(len(patch_nums), vocab_size, dtype=hits.dtype)
        vae = load_state(vae, sd, vae_path).to(device).eval()
        vae.arch = vae_arch  # so a recipe can save it in a model folder (build_vqvae rebuilds it)
    if var_path is not None:
        sd = read_state_dict(var_path, "var_wo_ddp")
        found = infer_var_config(sd, var_path)
        depth = depth or found["depth"]
        kw = dict(embed_dim=64 * depth, num_heads=depth) | (var_kwargs or {})
        expected = dict(depth=depth, vocab_size=vocab_size, Cvae=z_channels, num_classes=num_classes,
                        embed_dim=kw["embed_dim"], num_heads=kw["num_heads"], tokens=sum(p * p for p in patch_nums),
                        attn_l2_norm=attn_l2_norm, shared_aln=shared_aln)
        arch = dict(vocab_size=vocab_size, Cvae=z_channels, num_classes=num_classes, patch_nums=patch_nums, **kw)
        with uninitialized():
            var = VAR(depth=depth, attn_l2_norm=attn_l2_norm, shared_aln=shared_aln, **arch)
        message = key_difference(var, sd, var_path)
        if message:
            # The keys decide depth, attn_l2_norm and shared_aln. If they are exactly those of a VAR with the
            # checkpoint's own values, the file is another architecture: name that. Otherwise keys were
            # renamed or dropped, and the inferred architecture would mislead: name the keys.
            if found["depth"]:
                with uninitialized():
                    other = VAR(depth=found["depth"], attn_l2_norm=found["attn_l2_norm"],
                                shared_aln=found["shared_aln"], **arch)
                if key_difference(other, sd) is None:
                    check_config(found, expected, var_path)
            raise UserError(message)
        check_config(found, expected, var_path)
        var = load_state(var, sd, var_path).to(device).eval()
    return vae, var
