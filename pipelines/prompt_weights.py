"""Word weights: AUTOMATIC1111's emphasis syntax, encoded with compel.

What SD users type (A1111's ``modules/prompt_parser.py``, ``parse_prompt_attention``):

    (red:1.4)   "red" at weight 1.4          (red)   x 1.1          [red]   / 1.1
    nested brackets multiply: ((red)) = 1.21;  \\( \\) \\[ \\] \\\\ are literal characters

compel (the maintained prompt-weighting library for diffusers) has the weighting but its own syntax
(``(red)1.4``, ``red++``; its parser reads ``(red:1.4)`` as the text "red:1 . 4"), so the A1111 text
is parsed here into (text, weight) fragments and handed to compel as its own ``FlattenedPrompt`` of
``Fragment``s. compel then weights each token's text-encoder output: weight w > 1 moves it away
from the empty prompt's, z_w = z_empty + w (z - z_empty); w < 1 blends the whole conditioning
towards the prompt with the fragment masked out (so 0 removes the word's influence).

Stricter than A1111, which silently closes an unbalanced bracket: an unbalanced or malformed
bracket is refused with a ValueError naming the field. A prompt whose weights are all 1 (no
brackets, or ``(red:1.0)``) is encoded exactly as the plain text it spells (no compel involved),
so ``(word:1.0)`` gives the plain prompt's tensors bit for bit. A1111's ``BREAK`` is plain text here.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

PROMPT_WEIGHTINGS = (None, "a1111")
WEIGHT_RANGE = (0.0, 10.0)  # every fragment's final weight (nested brackets multiply)
ROUND, SQUARE = 1.1, 1 / 1.1  # A1111's multipliers for (x) and [x]

# A1111's tokens: escapes, brackets, ":weight)" closing a round bracket, text runs, lone colons
_TOKENS = re.compile(r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:")
_MALFORMED_WEIGHT = re.compile(r":\s*([^()\[\]:]*?)\s*\)")


@dataclass(frozen=True)
class WeightedPrompt:
    """A prompt as (text, weight) fragments; ``text`` is what it spells without the syntax."""

    fragments: tuple[tuple[str, float], ...]

    @property
    def text(self) -> str:
        return "".join(t for t, _ in self.fragments)

    @property
    def weighted(self) -> bool:
        return any(w != 1.0 for _, w in self.fragments)

    def word_weights(self) -> list[tuple[str, float]]:
        """(word, weight) for every whitespace-separated word, in order (for the UI and the maps)."""
        out = []
        for text, weight in self.fragments:
            out.extend((word, weight) for word in text.split())
        return out


def parse_emphasis(text: str, field: str = "prompt") -> WeightedPrompt:
    """A1111 emphasis syntax -> ``WeightedPrompt``; ValueError naming ``field`` when malformed."""
    if not isinstance(text, str):
        raise ValueError(f"{field}={text!r} must be text")
    parts: list[list] = []  # [text, weight]
    round_open: list[tuple[int, int]] = []  # (index into parts, character position)
    square_open: list[tuple[int, int]] = []

    def multiply(start: int, factor: float) -> None:
        for part in parts[start:]:
            part[1] *= factor

    for m in _TOKENS.finditer(text):
        token, weight = m.group(0), m.group(1)
        if token.startswith("\\") and len(token) == 2:
            parts.append([token[1:], 1.0])
        elif token == "(":
            round_open.append((len(parts), m.start()))
        elif token == "[":
            square_open.append((len(parts), m.start()))
        elif weight is not None:
            if not round_open:
                raise ValueError(f"{field}: '{token.strip()}' at character {m.start()} closes no '(' "
                                 f"(emphasis syntax: (word:1.4), (word), [word]; \\( for a literal bracket)")
            try:
                value = float(weight)
            except ValueError:
                raise ValueError(f"{field}: the weight {weight!r} at character {m.start()} is not a number "
                                 "(emphasis syntax: (word:1.4))") from None
            if not (WEIGHT_RANGE[0] <= value <= WEIGHT_RANGE[1]):
                raise ValueError(f"{field}: the weight {weight} at character {m.start()} is outside "
                                 f"{WEIGHT_RANGE[0]:g} to {WEIGHT_RANGE[1]:g}")
            multiply(round_open.pop()[0], value)
        elif token == ")":
            if not round_open:
                raise ValueError(f"{field}: ')' at character {m.start()} has no matching '(' "
                                 "(write \\) for a literal bracket)")
            multiply(round_open.pop()[0], ROUND)
        elif token == "]":
            if not square_open:
                raise ValueError(f"{field}: ']' at character {m.start()} has no matching '[' "
                                 "(write \\] for a literal bracket)")
            multiply(square_open.pop()[0], SQUARE)
        else:
            if token == ":" and round_open:
                bad = _MALFORMED_WEIGHT.match(text, m.start())
                if bad is not None:
                    raise ValueError(f"{field}: the weight {bad.group(1)!r} at character {m.start()} is not a "
                                     "number (emphasis syntax: (word:1.4))")
            parts.append([token, 1.0])
    for opened, kind in ((round_open, "("), (square_open, "[")):
        if opened:
            raise ValueError(f"{field}: '{kind}' at character {opened[-1][1]} is never closed "
                             f"(write \\{kind} for a literal bracket)")
    for part_text, weight in parts:
        if not (math.isfinite(weight) and WEIGHT_RANGE[0] <= weight <= WEIGHT_RANGE[1]):
            raise ValueError(f"{field}: {part_text.strip()!r} comes to weight {weight:.3g} (nested brackets "
                             f"multiply); allowed {WEIGHT_RANGE[0]:g} to {WEIGHT_RANGE[1]:g}")
    merged: list[list] = []  # neighbours with the same weight become one fragment, as in A1111
    for part in parts:
        if merged and merged[-1][1] == part[1]:
            merged[-1][0] += part[0]
        else:
            merged.append(list(part))
    return WeightedPrompt(tuple((t, float(w)) for t, w in merged if t))


def check_prompt_weighting(value) -> None:
    if value not in PROMPT_WEIGHTINGS:
        raise ValueError(f"prompt_weighting={value!r} is not allowed; valid: {list(PROMPT_WEIGHTINGS)}")


def plain_text(prompt, weighting: str | None, field: str = "prompt"):
    """The prompt(s) without the emphasis syntax (what the words say), or unchanged when not weighted."""
    if weighting is None or prompt is None:
        return prompt
    if isinstance(prompt, str):
        return parse_emphasis(prompt, field).text
    return [parse_emphasis(p, f"{field}[{i}]").text for i, p in enumerate(prompt)]


def encode_weighted(pipe, texts: list[str], device, clip_skip: int | None, encode_plain, field: str = "prompt"
                    ) -> torch.Tensor:
    """(len(texts), 77, D): each text's emphasis parsed; unweighted texts go through ``encode_plain``
    (the pipeline's own encoding, so they equal the plain prompt exactly), weighted ones through compel."""
    from compel import Compel, ReturnedEmbeddingsType
    from compel.prompt_parser import Conjunction, FlattenedPrompt, Fragment

    parsed = [parse_emphasis(t, field if len(texts) == 1 else f"{field}[{i}]") for i, t in enumerate(texts)]
    if clip_skip not in (None, 1) and any(p.weighted for p in parsed):
        raise ValueError(f"clip_skip={clip_skip!r} with emphasis weights: compel offers the last layer or the "
                         "penultimate one (clip_skip None or 1)")
    compel = None
    rows = []
    for p in parsed:
        if not p.weighted:
            rows.append(encode_plain([p.text]))
            continue
        if compel is None:
            kind = (ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED if clip_skip is None
                    else ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NORMALIZED)
            compel = Compel(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, returned_embeddings_type=kind,
                            truncate_long_prompts=True, device=device)
        prompt = FlattenedPrompt([Fragment(t, w) for t, w in p.fragments])
        rows.append(compel.build_conditioning_tensor_for_conjunction(Conjunction([prompt]))[0].to(device))
    return torch.cat(rows)
