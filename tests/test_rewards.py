"""Rewards: the registry's contract, the built-ins against the verifier and PIL, and each model adapter against a
direct computation of its formula on a tiny random-weight model of the same classes, saved and loaded from disk."""

import importlib.metadata
import io
import json
import math
import re
import time

import numpy as np
import pytest
import torch
from PIL import Image

from vgen.errors import UserError
from vgen.rewards import AsyncReward, WeightedSum, as_images, available, build, get_reward, register, registry
from vgen.world.scene import render_prompt
from vgen.world.verifier import scores

PROMPTS = ["a photo of a red circle", "a photo of a blue square", "a photo of three triangles"]
WORDS = ["a", "photo", "of", "red", "blue", "circle", "square", "three", "triangles"]


@pytest.fixture(scope="module")
def images():
    return np.stack([render_prompt(p, seed, 64) for seed, p in enumerate(PROMPTS)])


# --- built-ins --------------------------------------------------------------------------------------------------

def test_shapes_rewards_follow_the_verifier(images):
    strict, frac = get_reward("shapes_strict"), get_reward("shapes")
    assert strict(images, PROMPTS).tolist() == [1.0, 1.0, 1.0]
    wrong = PROMPTS[1:] + PROMPTS[:1]
    assert strict(images, wrong).tolist() == [0.0, 0.0, 0.0]
    out = frac(images, wrong)
    assert out.dtype == np.float32 and out.shape == (3,)
    np.testing.assert_array_equal(out, scores(images, wrong)[0])
    # every input format gives the same scores: float (B, 3, H, W) in [0, 1], and a list of PIL images
    as_float = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    np.testing.assert_array_equal(frac(as_float, wrong), out)
    np.testing.assert_array_equal(frac([Image.fromarray(x) for x in images], wrong), out)
    with pytest.raises(UserError, match="shapes grammar"):
        frac(images, ["a photo of a cat"] * 3)


def _jpeg_kb(im: np.ndarray) -> float:
    buf = io.BytesIO()
    Image.fromarray(im).save(buf, format="JPEG", quality=95)
    return len(buf.getvalue()) / 1000


def test_jpeg_rewards_match_pil_and_prefer_flat_images():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    flat = np.full((64, 64, 3), 120, np.uint8)
    batch = np.stack([noise, flat])
    comp = get_reward("jpeg_compressibility")(batch, ["", ""])
    np.testing.assert_allclose(comp, [-_jpeg_kb(noise), -_jpeg_kb(flat)], rtol=1e-6)
    assert comp[0] < comp[1]  # noise is the less compressible
    np.testing.assert_array_equal(get_reward("jpeg_incompressibility")(batch, ["", ""]), -comp)
    assert get_reward("jpeg_incompressibility", quality=50)(batch, ["", ""])[0] < -comp[0]


# --- registry ---------------------------------------------------------------------------------------------------

def test_unknown_names_and_options_are_one_line_user_errors():
    with pytest.raises(UserError) as e:
        get_reward("pikscore")
    msg = str(e.value)
    assert "\n" not in msg and "'pikscore'" in msg and "pickscore" in msg and "shapes" in msg
    with pytest.raises(UserError, match="unexpected keyword argument 'path'"):
        get_reward("shapes", path="/x")
    with pytest.raises(UserError, match="missing a required argument: 'path'"):
        get_reward("pickscore")
    with pytest.raises(UserError, match="unknown reward 'nope'"):
        build({"shapes": 1.0, "nope": 2.0})
    for bad in ({"shapes": "high"}, {"shapes": float("nan")}, [{"weight": 1.0}], 3, {}):
        with pytest.raises(UserError):
            build(bad)
    with pytest.raises(UserError, match="distinct 'label'"):
        build(["shapes", {"name": "shapes", "weight": 2.0}])


def test_weighted_sum_equals_the_manual_sum(images):
    r = build({"shapes": 1.0, "jpeg_compressibility": 0.1, "shapes_strict": {"weight": -2.0}})
    assert isinstance(r, WeightedSum)
    wrong = [PROMPTS[0], PROMPTS[0], PROMPTS[2]]
    parts = r.components(images, wrong)
    s, st = scores(images, wrong)
    jp = -np.array([_jpeg_kb(x) for x in images], np.float32)
    np.testing.assert_array_equal(parts["shapes"], s)
    np.testing.assert_allclose(parts["jpeg_compressibility"], jp, rtol=1e-6)
    np.testing.assert_allclose(r(images, wrong), s + 0.1 * jp - 2.0 * st, rtol=1e-6)
    np.testing.assert_allclose(r.combine(parts), r(images, wrong), rtol=0)
    # a plain name, a list with labels and options
    np.testing.assert_array_equal(build("shapes")(images, wrong), s)
    r2 = build([{"name": "jpeg_compressibility", "weight": 1.0},
                {"name": "jpeg_compressibility", "label": "jpeg50", "weight": 0.5, "quality": 50}])
    assert r2.weights == {"jpeg_compressibility": 1.0, "jpeg50": 0.5}
    assert set(r2.components(images, wrong)) == {"jpeg_compressibility", "jpeg50"}


def test_nan_passes_through_and_bad_shapes_are_caught(monkeypatch, images):
    monkeypatch.setitem(registry._BUILTIN, "nan_half", lambda: lambda x, p: np.where(np.arange(len(x)) % 2, np.nan, 1))
    monkeypatch.setitem(registry._BUILTIN, "bad_shape", lambda: lambda x, p: np.zeros((len(x), 2)))
    out = build({"nan_half": 1.0, "shapes": 1.0})(images, PROMPTS)
    assert np.isnan(out[1]) and out[0] == 2.0 and out[2] == 2.0
    with pytest.raises(ValueError, match="'bad_shape' returned shape"):
        get_reward("bad_shape")(images, PROMPTS)
    with pytest.raises(ValueError, match="3 images but 2 prompts"):
        get_reward("shapes")(images, PROMPTS[:2])
    assert get_reward("shapes")(images[:0], []).shape == (0,)
    with pytest.raises(ValueError, match="already registered"):
        register("shapes", lambda: None)


def test_entry_point_plugins_are_found(monkeypatch, tmp_path, images):
    (tmp_path / "fake_vgen_plugin.py").write_text(
        "import numpy as np\n"
        "def make(offset=0.0):\n"
        "    return lambda images, prompts: images.mean(axis=(1, 2, 3)) + offset\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = [importlib.metadata.EntryPoint("brightness", "fake_vgen_plugin:make", "vgen.rewards"),
           importlib.metadata.EntryPoint("broken", "no_such_module_here:make", "vgen.rewards")]
    seen = []

    def entry_points(**kw):
        seen.append(kw)
        return [ep for ep in eps if ep.group == kw.get("group")]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    assert {"brightness", "broken", "shapes"} <= set(available())
    out = get_reward("brightness", offset=1.0)(images, PROMPTS)
    np.testing.assert_allclose(out, images.mean(axis=(1, 2, 3)) + 1.0, rtol=1e-6)
    assert {"group": "vgen.rewards"} in seen
    with pytest.raises(UserError, match="plugin 'broken'.*failed to load"):
        get_reward("broken")


def test_async_reward_matches_sync_and_overlaps(images):
    r = build({"shapes": 1.0, "jpeg_incompressibility": 0.01})
    with AsyncReward(r, workers=2) as ar:
        futs = [ar.submit(images, PROMPTS), ar.submit(images[::-1], PROMPTS[::-1])]
        np.testing.assert_array_equal(futs[0].result(), r(images, PROMPTS))
        np.testing.assert_array_equal(futs[1].result(), r(images[::-1], PROMPTS[::-1]))

    delay = 0.3

    def slow(x, p):
        time.sleep(delay)
        return x.mean(axis=(1, 2, 3))

    with AsyncReward(slow, workers=2) as ar:  # two batches at once
        t = time.perf_counter()
        a, b = ar.submit(images, PROMPTS), ar.submit(images, PROMPTS)
        a.result(), b.result()
        assert time.perf_counter() - t < 1.6 * delay
    with AsyncReward(slow, workers=1) as ar:  # one batch scored while the caller "generates" the next
        buf = images.copy()
        t = time.perf_counter()
        fut = ar.submit(buf, PROMPTS)
        buf[:] = 0  # the caller reuses its buffer: the submitted batch was snapshotted
        time.sleep(delay)
        np.testing.assert_allclose(fut.result(), images.mean(axis=(1, 2, 3)), rtol=1e-6)
        assert time.perf_counter() - t < 1.6 * delay


# --- model adapters ---------------------------------------------------------------------------------------------

def _pils(x):
    return [Image.fromarray(im) for im in as_images(x)]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny transformers CLIP model and its processor saved as a local folder, plus the objects themselves."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from vgen.models.tokenizer import build_clip_tokenizer

    torch.manual_seed(0)
    tok = build_clip_tokenizer(WORDS, 16)
    model = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8), projection_dim=16)).eval()
    model.logit_scale.data.fill_(math.log(30.0))
    proc = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                            crop_size={"height": 32, "width": 32}), tokenizer=tok)
    path = tmp_path_factory.mktemp("clip")
    model.save_pretrained(path)
    proc.save_pretrained(path)
    return path, model, proc


def _clip_cos(model, proc, images, prompts):
    with torch.no_grad():
        inputs = proc(text=prompts, images=_pils(images), padding=True, return_tensors="pt")
        img = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
        txt = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        txt = txt.pooler_output
        img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
        return (img * txt).sum(-1), img


def test_pickscore_and_clipscore(clip_dir, images):
    path, model, proc = clip_dir
    cos, _ = _clip_cos(model, proc, images, PROMPTS)
    pick = get_reward("pickscore", path=str(path), batch_size=2)(images, PROMPTS)  # chunks of 2 and 1
    np.testing.assert_allclose(pick, (30.0 * cos).numpy(), rtol=1e-4, atol=1e-5)
    clip = get_reward("clipscore", path=path)(images, PROMPTS)
    np.testing.assert_allclose(clip, (2.5 * cos.clamp(min=0)).numpy(), rtol=1e-4, atol=1e-6)


def test_aesthetic(clip_dir, images, tmp_path):
    from torch import nn

    path, model, proc = clip_dir
    torch.manual_seed(1)
    head = nn.Sequential(nn.Linear(16, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                         nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1)).eval()
    torch.save({f"layers.{k}": v for k, v in head.state_dict().items()}, tmp_path / "head.pth")
    _, emb = _clip_cos(model, proc, images, PROMPTS)
    with torch.no_grad():
        want = head(emb).squeeze(-1).numpy()
    got = get_reward("aesthetic", path=path, head=tmp_path / "head.pth", batch_size=2)(images, PROMPTS)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    with pytest.raises(UserError, match="no sac\\+logos"):
        get_reward("aesthetic", path=path)
    torch.save({"layers.0.weight": torch.zeros(1024, 8)}, tmp_path / "other.pth")  # a head for another CLIP
    with pytest.raises(UserError, match="does not fit the model"):
        get_reward("aesthetic", path=path, head=tmp_path / "other.pth")


def test_hpsv2(tmp_path):
    open_clip = pytest.importorskip("open_clip")

    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16,
                                           "patch_size": 8},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
    (tmp_path / "tiny-hps.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "tiny-hps.json")
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-hps", pretrained=None, output_dict=True).eval()
    torch.save({"state_dict": model.state_dict(), "epoch": 1}, tmp_path / "HPS_v2.1_compressed.pt")
    rng = np.random.default_rng(0)
    ims = rng.integers(0, 256, (3, 40, 64, 3), dtype=np.uint8)  # not square: HPS pads the resized image
    pre = open_clip.image_transform(32, is_train=False, resize_mode="longest")
    with torch.no_grad():
        out = model(torch.stack([pre(im) for im in _pils(ims)]), open_clip.get_tokenizer("tiny-hps")(PROMPTS))
        want = 100 * (out["image_features"] * out["text_features"]).sum(-1)
    got = get_reward("hpsv2", path=tmp_path, arch=str(tmp_path / "tiny-hps.json"), batch_size=2)(ims, PROMPTS)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)


def _official_imagereward(vision_sd, text_sd, head_sd):
    """Name the tiny model's weights as THUDM's ImageReward.pt does (BLIP's timm-style ViT names)."""
    sd = {}
    for k, v in vision_sd.items():
        k = (k.replace("embeddings.class_embedding", "cls_token").replace("embeddings.position_embedding", "pos_embed")
             .replace("embeddings.patch_embedding", "patch_embed.proj").replace("post_layernorm", "norm")
             .replace("encoder.layers", "blocks").replace("layer_norm", "norm").replace("self_attn.projection",
                                                                                         "attn.proj")
             .replace("self_attn.qkv", "attn.qkv"))
        sd["blip.visual_encoder." + k] = v
    sd.update({"blip.text_encoder." + k: v for k, v in text_sd.items()})
    sd.update({"mlp.layers." + k: v for k, v in head_sd.items()})
    sd["blip.text_encoder.embeddings.position_ids"] = torch.arange(64)[None]
    sd["blip.vision_proj.weight"] = torch.zeros(8, 32)  # in the file, unused for scoring
    return sd


def test_imagereward(tmp_path, images):
    from torch import nn
    from torchvision import transforms
    from transformers import BertTokenizer, BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]))
    tok = BertTokenizer.from_pretrained(tmp_path / "tokenizer")
    torch.manual_seed(0)
    vision = BlipVisionModel(BlipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                              num_attention_heads=2, image_size=32, patch_size=8,
                                              layer_norm_eps=1e-6)).eval()
    med = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
               max_position_embeddings=64, layer_norm_eps=1e-12, hidden_act="gelu", pad_token_id=0)
    text = BlipTextModel(BlipTextConfig(encoder_hidden_size=32, is_decoder=True, bos_token_id=None, sep_token_id=None,
                                        **med), add_pooling_layer=False).eval()
    head = nn.Sequential(nn.Linear(32, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                         nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1)).eval()
    for p in [*vision.parameters(), *text.parameters(), *head.parameters()]:  # the default inits are near-degenerate
        p.data.normal_(0, 0.2 if p.shape[-1] < 64 else 0.05)
    torch.save(_official_imagereward(vision.state_dict(), text.state_dict(), head.state_dict()),
               tmp_path / "ImageReward.pt")
    (tmp_path / "med_config.json").write_text(json.dumps({**med, "encoder_width": 768, "add_cross_attention": True}))

    pre = transforms.Compose([transforms.Resize(32, interpolation=transforms.InterpolationMode.BICUBIC),
                              transforms.CenterCrop(32), transforms.ToTensor(),
                              transforms.Normalize((0.48145466, 0.4578275, 0.40821073),
                                                   (0.26862954, 0.26130258, 0.27577711))])
    with torch.no_grad():
        emb = vision(pixel_values=torch.stack([pre(im) for im in _pils(images)])).last_hidden_state
        t = tok(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
        h = text(input_ids=t.input_ids, attention_mask=t.attention_mask, encoder_hidden_states=emb,
                 encoder_attention_mask=torch.ones(emb.shape[:-1], dtype=torch.long)).last_hidden_state[:, 0]
        want = ((head(h).squeeze(-1) - 0.16717362830052426) / 1.0333394966054072).numpy()
    got = get_reward("imagereward", path=tmp_path, vision_heads=2, batch_size=2)(images, PROMPTS)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert np.ptp(got) > 1e-3  # the images and prompts do move the score

    by_file = get_reward("imagereward", path=tmp_path / "ImageReward.pt", vision_heads=2)  # tokenizer/ beside it
    np.testing.assert_allclose(by_file(images, PROMPTS), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(UserError, match="nowhere"):
        get_reward("imagereward", path=tmp_path, tokenizer=tmp_path / "nowhere")


@pytest.mark.parametrize("name", ["pickscore", "clipscore", "aesthetic", "hpsv2", "imagereward"])
def test_missing_or_incomplete_paths_are_user_errors(name, tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(UserError, match=re.escape(str(missing))) as e:
        get_reward(name, path=missing)
    assert "\n" not in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=re.escape(str(tmp_path / "empty"))):
        get_reward(name, path=tmp_path / "empty")
