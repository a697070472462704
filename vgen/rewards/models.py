"""Learned rewards from local weights: PickScore, CLIPScore, HPSv2, ImageReward and the LAION aesthetic predictor.

Each factory takes ``path`` (a local folder or file), ``device``, ``dtype`` (``None`` = float32) and ``batch_size``, and
returns a reward ``(uint8 images (B, H, W, 3), prompts) -> float32 (B,)`` that runs in chunks of ``batch_size`` under
``torch.no_grad()``, resizing images with the model's own preprocessing. Nothing is ever downloaded: every
``from_pretrained`` gets ``local_files_only=True`` and checkpoints are read with ``torch.load(weights_only=True)``; a
missing or incomplete path is a one-line ``UserError`` naming it. Heavy imports happen inside the factories.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from vgen.errors import UserError

IMAGEREWARD_MEAN = 0.16717362830052426  # ImageReward's raw-score statistics, used to standardise its output
IMAGEREWARD_STD = 1.0333394966054072
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP pixel statistics (ImageReward preprocesses with them)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "float": "float32", "half": "float16"}


def _dtype(dtype):
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    name = _DTYPES.get(str(dtype), str(dtype).removeprefix("torch."))
    if not isinstance(getattr(torch, name, None), torch.dtype) or not getattr(torch, name).is_floating_point:
        raise UserError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
    return getattr(torch, name)


def _existing(path, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{what}: path not found: {str(p)!r}")
    return p


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def _pretrained(cls, path: Path, what: str, **kwargs):
    """``cls.from_pretrained(path)`` from local files only; missing or mismatched weights are refused, not silently
    re-initialised."""
    try:
        out = cls.from_pretrained(str(path), local_files_only=True, **kwargs)
    except Exception as e:  # missing / truncated / foreign files: transformers raises OSError, ValueError, ...
        raise UserError(f"{what}: cannot load {cls.__name__} from {str(path)!r}: {type(e).__name__}: "
                        f"{_first_line(e)}") from None
    if isinstance(out, tuple):  # (model, loading info)
        model, info = out
        bad = sorted(info.get("missing_keys") or []) + sorted(str(k) for k in info.get("mismatched_keys") or [])
        if bad:
            raise UserError(f"{what}: {str(path)!r} is incomplete: {len(bad)} weight(s) missing or mismatched "
                            f"(e.g. {bad[0]})")
        return model
    return out


def _chunks(n: int, size: int):
    size = max(int(size), 1)
    return (slice(i, min(i + size, n)) for i in range(0, n, size))


def _pil(images: np.ndarray) -> list:
    from PIL import Image

    return [Image.fromarray(im) for im in images]


def _pooled(out):
    """Projected embedding from ``get_*_features``: a tensor in transformers 4, an output's pooler_output in 5."""
    return out if hasattr(out, "ndim") else out.pooler_output


def _load_clip(path, processor, device, dtype, what: str, need_text: bool = True):
    """(CLIPModel, image processor, tokenizer or None) from a local transformers CLIP folder; the processor may sit
    in another folder (``processor``), e.g. PickScore's weights with the CLIP-H processor."""
    from transformers import AutoImageProcessor, AutoProcessor, CLIPModel

    dt, path = _dtype(dtype), _existing(path, what)
    proc_path = _existing(processor, what) if processor is not None else path
    model = _pretrained(CLIPModel, path, what, output_loading_info=True).to(device=device, dtype=dt).eval()
    if need_text:
        proc = _pretrained(AutoProcessor, proc_path, what)
        image_processor, tokenizer = proc.image_processor, proc.tokenizer
    else:
        image_processor, tokenizer = _pretrained(AutoImageProcessor, proc_path, what), None
    return model, image_processor, tokenizer


def _clip_cosine_reward(path, processor, device, dtype, batch_size, what, finish):
    """A reward ``finish(cos, model)`` over the cosine between CLIP image and text embeddings, per pair."""
    import torch
    import torch.nn.functional as F

    model, image_processor, tokenizer = _load_clip(path, processor, device, dtype, what)
    device, max_len = model.device, model.config.text_config.max_position_embeddings

    @torch.no_grad()
    def reward(images: np.ndarray, prompts: list[str]) -> np.ndarray:
        out = []
        for s in _chunks(len(images), batch_size):
            pix = image_processor(images=_pil(images[s]), return_tensors="pt")["pixel_values"]
            tok = tokenizer(prompts[s], padding=True, truncation=True, max_length=max_len, return_tensors="pt")
            img = _pooled(model.get_image_features(pixel_values=pix.to(device, model.dtype)))
            txt = _pooled(model.get_text_features(**tok.to(device)))
            cos = (F.normalize(img.float(), dim=-1) * F.normalize(txt.float(), dim=-1)).sum(-1)
            out.append(finish(cos, model).cpu())
        return torch.cat(out).numpy()

    return reward


def pickscore(path, device="cpu", dtype=None, batch_size: int = 32, processor=None):
    """PickScore (Kirstain et al. 2023): exp(logit_scale) * cos(image embedding, text embedding), the CLIP logit of
    the pair (typically 18-23 with PickScore_v1). ``path``: a transformers CLIPModel folder
    (yuvalkirstain/PickScore_v1); ``processor``: the folder of its CLIPProcessor (laion/CLIP-ViT-H-14-laion2B-s32B-b79K)
    when not in ``path``."""
    return _clip_cosine_reward(path, processor, device, dtype, batch_size, "pickscore",
                               lambda cos, model: model.logit_scale.exp().float() * cos)


def clipscore(path, device="cpu", dtype=None, batch_size: int = 32, processor=None, w: float = 2.5):
    """CLIPScore (Hessel et al. 2021): w * max(cos(image embedding, caption embedding), 0) with w = 2.5, in [0, 2.5].
    (torchmetrics' CLIPScore is the same with w = 100.) The prompt is used as the caption as is; Hessel et al.
    prefix "A photo depicts", which a caller may add to its prompts. ``path``: a transformers CLIP folder, e.g.
    openai/clip-vit-base-patch32 or -large-patch14."""
    return _clip_cosine_reward(path, processor, device, dtype, batch_size, "clipscore",
                               lambda cos, model: w * cos.clamp(min=0))


def _load_state_dict(file: Path, what: str) -> dict:
    """Tensors of a ``.safetensors`` / ``.pt`` / ``.pth`` file, read safely; a ``{"state_dict": ...}`` wrapper and a
    DataParallel ``module.`` prefix are removed."""
    import torch

    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(file))
        else:
            sd = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, pickled code (refused by weights_only), not a checkpoint at all
        raise UserError(f"{what}: cannot read {str(file)!r}: {_first_line(e)}") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd:
        raise UserError(f"{what}: {str(file)!r} holds no state dict")
    return {k.removeprefix("module."): v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _find_file(path: Path, names: tuple[str, ...], what: str) -> Path:
    """``path`` itself if a file, else the first of ``names`` inside the folder."""
    if path.is_file():
        return path
    for name in names:
        if (path / name).is_file():
            return path / name
    raise UserError(f"{what}: no {' or '.join(names)} in {str(path)!r}")


def _load_into(module, sd: dict, what: str, file: Path) -> None:
    try:
        missing, unexpected = module.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shapes differ: another architecture's weights
        raise UserError(f"{what}: {str(file)!r} does not fit the model: {' '.join(str(e).split())[:300]}") from None
    if missing or unexpected:
        some = (missing or unexpected)[0]
        raise UserError(f"{what}: {str(file)!r} does not fit the model: {len(missing)} missing and {len(unexpected)} "
                        f"unexpected weights (e.g. {some!r})")


HPS_FILES = ("HPS_v2.1_compressed.pt", "HPS_v2_compressed.pt", "HPS_v2.1.pt", "HPS_v2.pt")


def hpsv2(path, device="cpu", dtype=None, batch_size: int = 16, arch: str = "ViT-H-14", scale: float = 100.0):
    """HPSv2 / v2.1 (Wu et al. 2023): scale * cos(image, text) from an open_clip model with the HPS fine-tuned
    weights, i.e. the diagonal of HPS's logits; scale = 100 gives the numbers papers report (about 25-30), while
    ``hpsv2.score`` returns the raw cosine (scale = 1). Images go through HPS's preprocessing: longest side resized to
    the model's size and padded to a square. ``path``: the checkpoint file (``HPS_v2.1_compressed.pt``) or a folder
    holding it; ``arch``: an open_clip model name or a JSON model config file (registered by its stem)."""
    import torch

    what, dt = "hpsv2", _dtype(dtype)
    file = _find_file(_existing(path, what), HPS_FILES, what)
    try:
        import open_clip
    except ImportError:
        raise UserError("hpsv2 needs open_clip: pip install 'vgen[rewards]' (or open-clip-torch)") from None
    if str(arch).endswith(".json"):
        open_clip.add_model_config(_existing(arch, what))
        arch = Path(arch).stem
    if arch not in open_clip.list_models():
        raise UserError(f"hpsv2: unknown open_clip architecture {arch!r}")
    if any(k.startswith("hf_") for k in open_clip.get_model_config(arch).get("text_cfg", {})):
        raise UserError(f"hpsv2: {arch!r} has a Hugging Face text tower or tokenizer, which open_clip would download")
    model, _, preprocess = open_clip.create_model_and_transforms(
        arch, pretrained=None, pretrained_text=False, device="cpu", image_resize_mode="longest")
    _load_into(model, _load_state_dict(file, what), what, file)
    model = model.to(device=device, dtype=dt).eval()
    tokenizer = open_clip.get_tokenizer(arch)

    @torch.no_grad()
    def reward(images: np.ndarray, prompts: list[str]) -> np.ndarray:
        out = []
        dev, dt = next(model.parameters()).device, next(model.parameters()).dtype
        for s in _chunks(len(images), batch_size):
            pix = torch.stack([preprocess(im) for im in _pil(images[s])]).to(dev, dt)
            img = model.encode_image(pix, normalize=True).float()
            txt = model.encode_text(tokenizer(prompts[s]).to(dev), normalize=True).float()
            out.append((scale * (img * txt).sum(-1)).cpu())
        return torch.cat(out).numpy()

    return reward


def mlp_head(d: int):
    """The LAION aesthetic predictor's MLP, which ImageReward reuses: d-1024-128-64-16-1, linear (no activations),
    dropout between the first layers. Its weights are ``{0,2,4,6,7}.weight/bias`` (``layers.`` in the originals)."""
    from torch import nn

    return nn.Sequential(nn.Linear(d, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                         nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))


AESTHETIC_FILES = ("sac+logos+ava1-l14-linearMSE.pth", "aesthetic.safetensors", "aesthetic.pth")


def aesthetic(path, device="cpu", dtype=None, batch_size: int = 32, head=None, processor=None):
    """LAION aesthetic predictor v2 (improved-aesthetic-predictor): the MLP head applied to the L2-normalised CLIP
    image embedding; about 1-10, higher is prettier; ignores the prompts. ``path``: a transformers CLIP folder
    (openai/clip-vit-large-patch14 for the released head); ``head``: the MLP weights (``.pth`` or ``.safetensors``,
    keys ``layers.0.weight`` ...), by default one of AESTHETIC_FILES inside ``path``."""
    import torch
    import torch.nn.functional as F

    what = "aesthetic"
    model, image_processor, _ = _load_clip(path, processor, device, dtype, what, need_text=False)
    head_file = _find_file(_existing(head, what) if head is not None else Path(path), AESTHETIC_FILES, what)
    mlp = mlp_head(model.config.projection_dim)
    _load_into(mlp, {k.removeprefix("layers."): v for k, v in _load_state_dict(head_file, what).items()},
               what, head_file)
    mlp = mlp.to(model.device).eval()  # kept in float32, as the original runs it

    @torch.no_grad()
    def reward(images: np.ndarray, prompts: list[str]) -> np.ndarray:
        out = []
        for s in _chunks(len(images), batch_size):
            pix = image_processor(images=_pil(images[s]), return_tensors="pt")["pixel_values"]
            emb = _pooled(model.get_image_features(pixel_values=pix.to(model.device, model.dtype)))
            out.append(mlp(F.normalize(emb.float(), dim=-1)).squeeze(-1).cpu())
        return torch.cat(out).numpy()

    return reward


# --- ImageReward ------------------------------------------------------------------------------------------------
# ImageReward.pt (THUDM) holds BLIP's ViT as ``blip.visual_encoder.*`` (timm names), BLIP's BERT with cross-attention
# as ``blip.text_encoder.*`` and the head as ``mlp.layers.*``. transformers' BlipVisionModel / BlipTextModel are the
# same networks; the one renaming needed is the ViT's (the BERT's names already agree, the head only drops
# ``layers.``); ``blip.vision_proj`` / ``blip.text_proj`` are unused for scoring and skipped.

_VIT_BLOCK_RENAMES = ((".norm1.", ".layer_norm1."), (".norm2.", ".layer_norm2."),
                      (".attn.qkv.", ".self_attn.qkv."), (".attn.proj.", ".self_attn.projection."))
_VIT_TOP_RENAMES = {"cls_token": "embeddings.class_embedding", "pos_embed": "embeddings.position_embedding",
                    "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
                    "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
                    "norm.weight": "post_layernorm.weight", "norm.bias": "post_layernorm.bias"}


def _vit_key(k: str) -> str:
    """BLIP's ViT key ``blocks.3.attn.qkv.weight`` -> BlipVisionModel's ``encoder.layers.3.self_attn.qkv.weight``."""
    if k.startswith("blocks."):
        k = "encoder.layers." + k.removeprefix("blocks.")
        for a, b in _VIT_BLOCK_RENAMES:
            k = k.replace(a, b)
        return k
    return _VIT_TOP_RENAMES.get(k, k)


def imagereward_state_dicts(sd: dict) -> tuple[dict, dict, dict]:
    """ImageReward.pt's state dict split into (BlipVisionModel, BlipTextModel, mlp_head) state dicts."""
    vision, text, head = {}, {}, {}
    for k, v in sd.items():
        if k.startswith("blip.visual_encoder."):
            vision[_vit_key(k.removeprefix("blip.visual_encoder."))] = v
        elif k.startswith("blip.text_encoder."):
            if not k.endswith("position_ids"):  # a buffer, rebuilt by the model
                text[k.removeprefix("blip.text_encoder.")] = v
        elif k.startswith("mlp.layers."):
            head[k.removeprefix("mlp.layers.")] = v
    return vision, text, head


def _resize_center_crop(im, n: int):
    """torchvision's Resize(n, bicubic) + CenterCrop(n) on a PIL image, which ImageReward's preprocessing uses."""
    from PIL import Image

    w, h = im.size
    short, long = min(w, h), max(w, h)
    size = (n, int(n * long / short)) if w <= h else (int(n * long / short), n)
    im = im.resize(size, Image.Resampling.BICUBIC) if (w, h) != size else im
    left, top = int(round((size[0] - n) / 2.0)), int(round((size[1] - n) / 2.0))
    return im.crop((left, top, left + n, top + n))


_MED_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                     max_position_embeddings=512, layer_norm_eps=1e-12, hidden_act="gelu", pad_token_id=0)


def imagereward(path, device="cpu", dtype=None, batch_size: int = 16, tokenizer=None, vision_heads=None,
                max_length: int = 35):
    """ImageReward v1.0 (Xu et al. 2023): BLIP's ViT encodes the image, BLIP's BERT reads the prompt with
    cross-attention to it, the MLP head maps the [CLS] feature to a raw score, standardised as
    (raw - 0.16717362830052426) / 1.0333394966054072 (about -2..2). Built from transformers' BlipVisionModel and
    BlipTextModel (no ``image-reward`` package, whose pins clash with ours).

    ``path``: a folder with ``ImageReward.pt`` (or that file itself) and, beside it, ``med_config.json`` (BERT sizes;
    ImageReward's defaults when absent) and a BERT tokenizer (bert-base-uncased's ``vocab.txt``...) in the folder or
    its ``tokenizer/`` subfolder, or given as ``tokenizer``. The ViT's sizes are read off the checkpoint; its head
    count, which the weights do not fix, is width / 64 unless ``vision_heads`` says otherwise (16 for ViT-L)."""
    import torch
    from transformers import BertTokenizer, BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

    what, dt = "imagereward", _dtype(dtype)
    p = _existing(path, what)
    file = _find_file(p, ("ImageReward.pt",), what)
    folder = file.parent
    vision_sd, text_sd, head_sd = imagereward_state_dicts(_load_state_dict(file, what))
    if "embeddings.class_embedding" not in vision_sd or "embeddings.word_embeddings.weight" not in text_sd:
        raise UserError(f"{what}: {str(file)!r} is not an ImageReward checkpoint (no blip.visual_encoder / "
                        "blip.text_encoder weights)")

    width = vision_sd["embeddings.class_embedding"].shape[-1]
    patch = vision_sd["embeddings.patch_embedding.weight"].shape[-1]
    image_size = patch * math.isqrt(vision_sd["embeddings.position_embedding"].shape[1] - 1)
    depth = len({k.split(".")[2] for k in vision_sd if k.startswith("encoder.layers.")})
    vision = BlipVisionModel(BlipVisionConfig(
        hidden_size=width, intermediate_size=vision_sd["encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=depth, num_attention_heads=vision_heads or max(width // 64, 1), image_size=image_size,
        patch_size=patch, layer_norm_eps=1e-6, hidden_act="gelu"))  # BLIP's ViT: LayerNorm eps 1e-6, exact GELU
    _load_into(vision, vision_sd, what, file)

    med = dict(_MED_DEFAULTS)
    if (folder / "med_config.json").is_file():
        try:
            cfg = json.loads((folder / "med_config.json").read_text())
        except ValueError:
            raise UserError(f"{what}: {str(folder / 'med_config.json')!r} is not valid JSON") from None
        med.update({k: cfg[k] for k in _MED_DEFAULTS if k in cfg})
    text = BlipTextModel(BlipTextConfig(
        vocab_size=text_sd["embeddings.word_embeddings.weight"].shape[0], encoder_hidden_size=width,
        is_decoder=True, bos_token_id=None, eos_token_id=None, sep_token_id=None, **med),  # ids unused: encoder only
        add_pooling_layer=False)  # is_decoder=True builds the cross-attention layers; forward stays bidirectional
    _load_into(text, text_sd, what, file)
    mlp = mlp_head(med["hidden_size"])
    _load_into(mlp, head_sd, what, file)

    tok_dir = _existing(tokenizer, what) if tokenizer is not None else (
        folder if any((folder / f).is_file() for f in ("vocab.txt", "tokenizer.json")) else folder / "tokenizer")
    if not tok_dir.is_dir():
        raise UserError(f"{what}: no BERT tokenizer (vocab.txt) in {str(folder)!r} or {str(tok_dir)!r}")
    tok = _pretrained(BertTokenizer, tok_dir, what)

    vision, text = vision.to(device=device, dtype=dt).eval(), text.to(device=device, dtype=dt).eval()
    mlp = mlp.to(device).eval()  # float32 on the float32 [CLS] feature, as the original
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)

    def pixels(ims: np.ndarray):
        x = np.stack([np.asarray(_resize_center_crop(im, image_size)) for im in _pil(ims)])
        return (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0 - mean) / std

    @torch.no_grad()
    def reward(images: np.ndarray, prompts: list[str]) -> np.ndarray:
        out = []
        for s in _chunks(len(images), batch_size):
            emb = vision(pixel_values=pixels(images[s]).to(vision.device, dt)).last_hidden_state
            t = tok(prompts[s], padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
            h = text(input_ids=t.input_ids.to(emb.device), attention_mask=t.attention_mask.to(emb.device),
                     encoder_hidden_states=emb,
                     encoder_attention_mask=torch.ones(emb.shape[:-1], dtype=torch.long, device=emb.device))
            raw = mlp(h.last_hidden_state[:, 0].float()).squeeze(-1)
            out.append(((raw - IMAGEREWARD_MEAN) / IMAGEREWARD_STD).cpu())
        return torch.cat(out).numpy()

    return reward
