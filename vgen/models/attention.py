"""Joint attention (SD3 family) with a per-context-token logit bias.

Why: diffusers' SD3 pipeline without a T5 encoder feeds ``max_sequence_length`` (256 by
default) zero T5 tokens. Text tokens carry no position, and every op but attention is
per token, so k identical tokens act exactly as one token whose attention logit is raised
by log(k) for every query. Training and sampling with one such token plus that bias is
therefore the same model as the stock pipeline's default call, at a fraction of the cost.
The bias is passed as ``joint_attention_kwargs={"context_bias": tensor}``: one float per
context token, added to the logits of every query towards that key.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class ContextBiasJointAttnProcessor:
    """SD3 joint attention, plus an optional additive logit bias on the context keys."""

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, context_bias: torch.Tensor | None = None,
                 **kwargs) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        b, n_img = hidden_states.shape[0], hidden_states.shape[1]

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

        q, k, v = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        mask = None
        if encoder_hidden_states is not None:
            cq = heads(attn.add_q_proj(encoder_hidden_states))
            ck = heads(attn.add_k_proj(encoder_hidden_states))
            cv = heads(attn.add_v_proj(encoder_hidden_states))
            if attn.norm_added_q is not None:
                cq = attn.norm_added_q(cq)
            if attn.norm_added_k is not None:
                ck = attn.norm_added_k(ck)
            q, k, v = torch.cat([q, cq], 2), torch.cat([k, ck], 2), torch.cat([v, cv], 2)
            if context_bias is not None:
                mask = torch.cat([context_bias.new_zeros(n_img), context_bias]).to(q.dtype).view(1, 1, 1, -1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.transpose(1, 2).reshape(b, -1, attn.heads * v.shape[-1]).to(q.dtype)
        img = attn.to_out[1](attn.to_out[0](out[:, :n_img]))
        if encoder_hidden_states is None:
            return img
        ctx = out[:, n_img:]
        if not attn.context_pre_only:
            ctx = attn.to_add_out(ctx)
        return img, ctx


def use_context_bias(transformer) -> None:
    """Install the processor on every joint-attention layer of an SD3-family transformer."""
    transformer.set_attn_processor(ContextBiasJointAttnProcessor())


def zero_token_bias(n_clip: int, n_zero: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Bias for a context of ``n_clip`` real tokens followed by ONE token standing for ``n_zero`` zeros."""
    bias = torch.zeros(n_clip + 1, device=device, dtype=dtype)
    bias[-1] = torch.log(torch.tensor(float(n_zero)))
    return bias


def use_stock_attention(transformer) -> None:
    """Put diffusers' own joint-attention processor back (what a saved model loads with)."""
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    transformer.set_attn_processor(JointAttnProcessor2_0())
