"""A CLIP BPE tokenizer built locally for a closed vocabulary (no download).

CLIP's tokenizer is byte-level BPE with a ``</w>`` end-of-word suffix. The vocabulary
here holds every byte symbol (alone and word-final), so any text still tokenizes, plus
the merge chain of each vocabulary word, left to right, so each known word becomes one
token. The result is a genuine ``transformers.CLIPTokenizer`` that saves and loads with
``save_pretrained`` / ``from_pretrained`` like any other.
"""

from __future__ import annotations

from functools import cache

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


@cache
def _byte_symbols() -> tuple[str, ...]:
    """The 256 printable stand-ins byte-level BPE uses for raw bytes (GPT-2's table)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = 0
    table = {}
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return tuple(table[b] for b in range(256))


def build_clip_tokenizer(words: list[str], max_length: int):
    """A CLIPTokenizer whose vocabulary makes each of ``words`` a single token."""
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}

    def add(tok: str) -> None:
        vocab.setdefault(tok, len(vocab))

    for s in _byte_symbols():
        add(s)
    for s in _byte_symbols():
        add(s + "</w>")
    merges: list[tuple[str, str]] = []
    seen = set()
    for word in sorted(set(w.lower() for w in words), key=lambda w: (-len(w), w)):  # long chains rank first
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        left = symbols[0]
        for right in symbols[1:]:
            if (left, right) not in seen:
                seen.add((left, right))
                merges.append((left, right))
                add(left + right)
            left = left + right
    add(BOS)
    add(EOS)
    tok = CLIPTokenizer(vocab=vocab, merges=merges, unk_token=EOS, bos_token=BOS, eos_token=EOS, pad_token=EOS)
    tok.model_max_length = max_length
    return tok


def build_t5_tokenizer(words: list[str]):
    """A T5 (Unigram) tokenizer over ``words`` plus single characters, built locally."""
    from transformers import T5Tokenizer

    pieces = ["<pad>", "</s>", "<unk>"]
    pieces += ["▁" + w for w in sorted(set(w.lower() for w in words))]
    pieces += sorted({c for w in words for c in w.lower()} | set("▁abcdefghijklmnopqrstuvwxyz0123456789"))
    vocab = [(p, 0.0 if i < 3 else -float(i)) for i, p in enumerate(dict.fromkeys(pieces))]
    return T5Tokenizer(vocab=vocab, extra_ids=0)
