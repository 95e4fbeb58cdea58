"""Build CLIP-format BPE tokenizer files (vocab.json + merges.txt) for a small word list.

CLIP's tokenizer works on byte-level characters (GPT-2's byte->unicode map), marks the last
character of a word with ``</w>`` and merges pairs by rank. We keep the full byte alphabet
(so any text still tokenizes, character by character) and learn merges with plain BPE over
the project's words until each word is a single token.
"""
from __future__ import annotations

import collections
import json
import os


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode character map."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Plain BPE: merge the most frequent adjacent pair until every word is one symbol."""
    byte_map = _bytes_to_unicode()
    segs = {}
    for word in sorted(set(words)):
        symbols = [byte_map[b] for b in word.lower().encode("utf-8")]
        symbols[-1] = symbols[-1] + "</w>"
        segs[word] = symbols
    merges: list[tuple[str, str]] = []
    while True:
        counts: collections.Counter = collections.Counter()
        for symbols in segs.values():
            for pair in zip(symbols, symbols[1:]):
                counts[pair] += 1
        if not counts:
            return merges
        # most frequent first; ties broken alphabetically so the result is deterministic
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        for word, symbols in segs.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            segs[word] = out


def build_clip_tokenizer_files(words: list[str], folder: str) -> tuple[str, str]:
    """Write vocab.json and merges.txt for ``words`` into ``folder``; return their paths."""
    os.makedirs(folder, exist_ok=True)
    alphabet = list(_bytes_to_unicode().values())
    vocab_list = alphabet + [c + "</w>" for c in alphabet]
    merges = learn_merges(words)
    vocab_list += ["".join(pair) for pair in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    vocab_path = os.path.join(folder, "vocab.json")
    merges_path = os.path.join(folder, "merges.txt")
    with open(vocab_path, "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(merges_path, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    return vocab_path, merges_path
