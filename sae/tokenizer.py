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
    """Vocabulary and merges so that each word in ``words`` is a single token.

    BPE applies the lowest-ranked merge present anywhere in a word first, so a word's merges cannot simply be
    listed left to right (``triangle`` then fell apart on merges made for ``and``...). Each word is run through
    BPE with the merges so far, and merges of its first two pieces are appended until it is one token; a merge
    appended later ranks after every merge an earlier word used, so it never changes an earlier word.
    """
    vocab: dict[str, int] = {}

    def add(token: str) -> None:
        vocab.setdefault(token, len(vocab))

    for token in (BOS, EOS):
        add(token)
    for char in CHARACTERS:
        add(char)
        add(char + "</w>")
    ranks: dict[tuple[str, str], int] = {}  # the merges, in rank order
    for word in sorted({w.lower() for w in words if w}):
        pieces = _bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks)
        while len(pieces) > 1:
            ranks[(pieces[0], pieces[1])] = len(ranks)
            add(pieces[0] + pieces[1])
            pieces = _bpe(pieces, ranks)
        add(pieces[0])
    return vocab, list(ranks)


def _bpe(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE on one word: merge the lowest-ranked adjacent pair (every occurrence) until none is known."""
    while len(pieces) > 1:
        _, pair = min((ranks.get(p, len(ranks) + 1), p) for p in zip(pieces, pieces[1:]))
        if pair not in ranks:
            break
        merged, i = [], 0
        while i < len(pieces):
            if i + 1 < len(pieces) and (pieces[i], pieces[i + 1]) == pair:
                merged.append(pieces[i] + pieces[i + 1])
                i += 2
            else:
                merged.append(pieces[i])
                i += 1
        pieces = merged
    return pieces


def make_word_tokenizer(words: Iterable[str], model_max_length: int = 77) -> CLIPTokenizer:
    vocab, merges = word_tokenizer_vocab(words)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length,
                         unk_token=EOS, bos_token=BOS, eos_token=EOS, pad_token=EOS)


def unknown_words(tokenizer: CLIPTokenizer, prompt: str) -> list[str]:
    """Words of ``prompt`` that the tokenizer does not hold as a single token."""
    known = tokenizer.get_vocab()
    words = [w.strip(string.punctuation) for w in prompt.lower().split()]
    return [w for w in words if w and (w + "</w>") not in known]
