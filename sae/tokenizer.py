"""A word-level ``CLIPTokenizer`` generated in code, for the tiny and toy pipelines.

Every listed word becomes one token (its BPE merges are generated left to right); any other word still
tokenizes, into single characters, which are all in the vocabulary.
"""

from __future__ import annotations

import string
from collections.abc import Iterable

from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
CHARACTERS = string.ascii_lowercase + string.digits + ".,;:!?'\"-()&/"


def word_tokenizer_vocab(words: Iterable[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges so that each word in ``words`` is a single token."""
    vocab: dict[str, int] = {}

    def add(token: str) -> None:
        vocab.setdefault(token, len(vocab))

    for token in (BOS, EOS):
        add(token)
    for char in CHARACTERS:
        add(char)
        add(char + "</w>")
    merges: list[tuple[str, str]] = []
    seen_merges: set[tuple[str, str]] = set()
    for word in sorted({w.lower() for w in words if w}):
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            merge = (left, right)
            if merge not in seen_merges:
                seen_merges.add(merge)
                merges.append(merge)
            left = left + right
            add(left)
        add(pieces[0] if len(pieces) == 1 else left)
    return vocab, merges


def make_word_tokenizer(words: Iterable[str], model_max_length: int = 77) -> CLIPTokenizer:
    vocab, merges = word_tokenizer_vocab(words)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length,
                         unk_token=EOS, bos_token=BOS, eos_token=EOS, pad_token=EOS)


def unknown_words(tokenizer: CLIPTokenizer, prompt: str) -> list[str]:
    """Words of ``prompt`` that the tokenizer does not hold as a single token."""
    known = tokenizer.get_vocab()
    words = [w.strip(string.punctuation) for w in prompt.lower().split()]
    return [w for w in words if w and (w + "</w>") not in known]
