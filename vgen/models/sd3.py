"""SD3-family policy: a diffusers StableDiffusion3Pipeline behind the rollout engine's interface.

The engine needs four things from a flow-matching policy, and nothing else:
``encode(prompts) -> cond`` (a dict of per-prompt tensors, batch first), ``velocity(x, t,
cond) -> v``, ``decode(latents) -> images in [0, 1]``, and ``latent_shape(h, w)``; plus the
``scheduler`` whose sigmas the engine steps through. Prompt encoding reuses the pipeline's
own ``encode_prompt``, so embeddings are exactly those of ``__call__``.

Without a T5 encoder the pipeline appends ``max_sequence_length`` zero tokens. diffusers
only loads an SD3 folder with a T5 slot filled, so vgen's tiny bases carry a *null T5*: a
genuine ``T5EncoderModel`` whose final RMS-norm weight is zero, so it outputs exact zeros,
the same input as no T5 at all. For both, ``fold_zero_tokens`` folds the zero tokens into
one token with a log(count) attention bias (vgen/models/attention.py): the same function,
several times cheaper.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from vgen.errors import UserError
from vgen.models.attention import use_context_bias, use_stock_attention, zero_token_bias
from vgen.models.policy import FlowPolicy, check_pipeline_folder


@contextmanager
def quiet_loading():
    """No per-file progress bars from diffusers / transformers while a pipeline loads."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        dlog.enable_progress_bar()
        tlog.enable_progress_bar()


def null_t5(words: list[str], dim: int, seed: int = 0):
    """(T5EncoderModel that outputs exact zeros of width ``dim``, its tokenizer over ``words``)."""
    from transformers import T5Config, T5EncoderModel

    from vgen.models.tokenizer import build_t5_tokenizer

    tok = build_t5_tokenizer(words)
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=len(tok), d_model=dim, d_kv=16, d_ff=64, num_layers=1, num_heads=2,
                   pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=0)
    model = T5EncoderModel(cfg).eval()
    with torch.no_grad():
        model.encoder.final_layer_norm.weight.zero_()
    return model, tok


def is_null_t5(encoder) -> bool:
    """True for no T5 at all, or a T5 whose output is identically zero (see null_t5)."""
    if encoder is None:
        return True
    norm = getattr(getattr(encoder, "encoder", None), "final_layer_norm", None)
    return norm is not None and not bool(norm.weight.detach().abs().max())


class SD3Policy(FlowPolicy):
    def __init__(self, pipe, max_sequence_length: int = 256, fold_zero_tokens: bool = True):
        self.pipe = pipe
        self.transformer, self.vae, self.scheduler = pipe.transformer, pipe.vae, pipe.scheduler
        encoders = (pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3)
        self.text_encoders = tuple(e for e in encoders if e is not None)
        self.max_sequence_length = max_sequence_length
        self.fold = fold_zero_tokens and is_null_t5(pipe.text_encoder_3)
        if self.fold:
            use_context_bias(self.transformer)
        else:
            use_stock_attention(self.transformer)
        self._bias = None

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu", **kw):
        """Load a local SD3 pipeline folder (never downloads); a bad folder is a one-line error."""
        from diffusers import StableDiffusion3Pipeline

        path = Path(path)
        check_pipeline_folder(path)
        try:
            with warnings.catch_warnings(), quiet_loading():
                # torch_dtype works on every supported diffusers; newer ones prefer dtype
                warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
                pipe = StableDiffusion3Pipeline.from_pretrained(path, torch_dtype=dtype, local_files_only=True)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise UserError(f"cannot load the SD3 pipeline in {str(path)!r}: {str(e).splitlines()[0]}") from None
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe.to(device), **kw)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        f = self.pipe.vae_scale_factor
        p = self.transformer.config.patch_size
        if height % (f * p) or width % (f * p):
            raise UserError(f"height and width must be multiples of {f * p}, got {height}x{width}")
        return (self.transformer.config.in_channels, height // f, width // f)

    def check_prompts(self, prompts: list[str]) -> None:
        """Refuse a prompt longer than the longest text window instead of truncating it silently:
        the CLIP window when T5 is absent or null, else T5's ``max_sequence_length``."""
        if is_null_t5(self.pipe.text_encoder_3):
            tok, window = self.pipe.tokenizer, self.pipe.tokenizer.model_max_length
        else:
            tok, window = self.pipe.tokenizer_3, self.max_sequence_length
        for p in dict.fromkeys(prompts):
            n = len(tok(p, truncation=False).input_ids)
            if n > window:
                raise UserError(f"prompt {p[:60]!r} is {n} tokens long; the text encoder reads at most {window}")

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Per-prompt conditioning: ``ctx`` (n, L, D) and ``pooled`` (n, D)."""
        self.check_prompts(prompts)
        from diffusers.utils import logging as diffusers_logging

        n_seq = 1 if self.fold else self.max_sequence_length
        level = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # folding truncates the (null) T5 input on purpose: no warning
        try:
            ctx, _, pooled, _ = self.pipe.encode_prompt(prompt=prompts, prompt_2=prompts, prompt_3=prompts,
                                                        do_classifier_free_guidance=False, max_sequence_length=n_seq,
                                                        device=self.device)
        finally:
            diffusers_logging.set_verbosity(level)
        return {"ctx": ctx, "pooled": pooled}

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        """Model output v for latents x at diffusers timesteps t (= 1000 sigma), shape (B,)."""
        kwargs = {}
        if self.fold:
            if self._bias is None or self._bias.shape[0] != cond["ctx"].shape[1]:
                self._bias = zero_token_bias(cond["ctx"].shape[1] - 1, self.max_sequence_length, device=self.device)
            kwargs["joint_attention_kwargs"] = {"context_bias": self._bias}
        return self.transformer(hidden_states=x.to(self.dtype), encoder_hidden_states=cond["ctx"],
                                pooled_projections=cond["pooled"], timestep=t, return_dict=False, **kwargs)[0]
