"""Cross-attention recorder: where each prompt token goes, per step (DAAM-style maps).

The text conditioning reaches the UNet only through its cross-attention layers: every query
position (a latent pixel at that layer's resolution) takes a softmax over the prompt's tokens,

    P = softmax(Q K^T * scale)      Q: (heads, N, d) from the image, K: (heads, L, d) from the text

so P[head, n, :] is a distribution over the L = 77 tokens. DAAM (Tang et al., ACL 2023, "What the
DAAM: Interpreting Stable Diffusion Using Cross Attention") reads a token's column P[:, :, k] as a
heat map: aggregate over heads and layers, upscale to one resolution, and you see where the word
acts. Here:

- per layer: mean over heads, (B, L, h_l, w_l), reshaped from the row-major N = h_l * w_l;
- ``maps``: the mean over every cross-attention layer of the per-layer maps, each upsampled
  (bilinear, align_corners=False) to the latent resolution (B, L, H, W). Both means and the
  bilinear weights are convex, so at every latent position the maps still sum to 1 over tokens;
- ``levels`` (on request): the same mean per resolution level, at that level's own size.

Only CFG's conditional branch is recorded (the rows of the UNet batch the pipeline names per call),
and only at the first model evaluation of each scheduler step (the one the step record describes).

How: ``AttentionRecorder`` wraps the processor of every cross-attention ``Attention`` module
(``module.set_processor``; the UNet's code is not touched) for the duration of one call. The
wrapper lets the original processor (AttnProcessor2_0's SDPA, xformers, a LoRA-wrapped projection:
whatever is installed) compute the layer's output unchanged -- so the images are bit-identical
with and without recording -- and then, when a step is being recorded, recomputes Q and K for the
conditional rows only and takes their probabilities with ``Attention.get_attention_scores``
(SDPA never materializes them). Without ``record_attention`` nothing is installed: free when off.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

RECORD_ATTENTION = (False, True, "levels")


@dataclass
class AttentionMaps:
    """One step's cross-attention maps of the conditional branch (CPU float32).

    ``maps``: (B, L, H, W) at latent resolution, mean over heads and layers; ``maps[b, :, y, x]``
    sums to 1 (a distribution over the L tokens at each latent position). ``levels``: {"hxw":
    (B, L, h, w)} per resolution level (``record_attention="levels"``), else empty. ``layers``:
    how many cross-attention layers each map averages.
    """

    maps: torch.Tensor
    levels: dict[str, torch.Tensor] = field(default_factory=dict)
    layers: int = 0

    def token_mass(self) -> torch.Tensor:
        """(B, L): each token's mean attention over latent positions (sums to 1 over tokens):
        how much of the image attends to it at this step."""
        return self.maps.mean(dim=(-2, -1))


def check_record_attention(value) -> None:
    if not any(value is v or (value == v and type(value) is type(v)) for v in RECORD_ATTENTION):
        raise ValueError(f"record_attention={value!r} is not allowed; valid: {list(RECORD_ATTENTION)} "
                         "(True: maps at latent resolution; 'levels': also per resolution level)")


def grid_size(positions: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of a layer with ``positions`` = h * w query positions inside a latent of ``latent_hw``:
    the UNet halves both sides per level (rounding up, as a stride-2 conv with padding 1 does)."""
    height, width = latent_hw
    h, w = height, width
    while h * w > positions and (h > 1 or w > 1):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    if h * w != positions:
        raise ValueError(f"a cross-attention layer has {positions} positions, which is no level of a "
                         f"{height}x{width} latent")
    return h, w


class _RecordingProcessor:
    """Wraps one cross-attention layer's processor: output from the original, probabilities on the side."""

    def __init__(self, inner, recorder: AttentionRecorder):
        self.inner = inner
        self.recorder = recorder
        # Attention.forward drops the cross_attention_kwargs that its processor's __call__ does not name;
        # it reads them from `processor.__call__`, so expose the inner processor's signature there
        self.__dict__["__call__"] = inner.__call__

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        out = self.inner(attn, hidden_states, *args, encoder_hidden_states=encoder_hidden_states,
                         attention_mask=attention_mask, **kwargs)
        rows = self.recorder._rows
        if rows is not None and encoder_hidden_states is not None:
            if isinstance(encoder_hidden_states, tuple):  # IP-Adapter: (text, image features); the text's map
                encoder_hidden_states = encoder_hidden_states[0]
            self.recorder._add(attention_probs(attn, hidden_states[rows], encoder_hidden_states[rows],
                                               None if attention_mask is None else attention_mask[rows]))
        return out


def attention_probs(attn: Attention, hidden_states: torch.Tensor, context: torch.Tensor,
                    attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-attention probabilities (B, heads, N, L) of one layer, with the layer's own projections
    (LoRA layers included), norms and scale, as its processor computes them before the values."""
    if hidden_states.ndim == 4:  # (B, C, h, w) -> (B, N, C)
        hidden_states = hidden_states.flatten(2).transpose(1, 2)
    batch = hidden_states.shape[0]
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    if attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    query, key = attn.to_q(hidden_states), attn.to_k(context)  # (B, N, inner), (B, L, inner)
    head_dim = key.shape[-1] // attn.heads
    query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # (B, heads, N, d)
    key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # (B, heads, L, d)
    if getattr(attn, "norm_q", None) is not None:
        query = attn.norm_q(query)
    if getattr(attn, "norm_k", None) is not None:
        key = attn.norm_k(key)
    if attention_mask is not None:
        attention_mask = attn.prepare_attention_mask(attention_mask, key.shape[2], batch)
    probs = attn.get_attention_scores(query.flatten(0, 1), key.flatten(0, 1), attention_mask)  # (B*heads, N, L)
    return probs.view(batch, attn.heads, *probs.shape[1:])


class AttentionRecorder:
    """Records the conditional branch's cross-attention of a UNet while installed (a context manager).

    Per UNet call the pipeline says which batch rows to record (``expect(rows, latent_hw)``) or
    none (``expect(None)``); after the call ``take()`` returns that call's ``AttentionMaps``.
    ``on_layer`` (tests) sees each layer's raw probabilities (B, heads, N, L) before aggregation.
    """

    def __init__(self, unet, levels: bool = False, on_layer=None):
        self.unet = unet
        self.levels = levels
        self.on_layer = on_layer
        self._saved: list[tuple[Attention, object]] = []
        self._rows: slice | None = None
        self._latent_hw: tuple[int, int] = (0, 0)
        self._level_sums: dict[tuple[int, int], list] = {}  # (h, w) -> [layers, sum of their (B, L, h, w) maps]

    def __enter__(self) -> AttentionRecorder:
        for module in self.unet.modules():
            if isinstance(module, Attention) and module.is_cross_attention:
                self._saved.append((module, module.processor))
                module.set_processor(_RecordingProcessor(module.processor, self))
        if not self._saved:
            raise ValueError("record_attention: this UNet has no cross-attention layers to record")
        return self

    def __exit__(self, *exc) -> None:
        for module, processor in self._saved:
            module.set_processor(processor)
        self._saved.clear()
        self._rows = None

    def expect(self, rows: slice | None, latent_hw: tuple[int, int] = (0, 0)) -> None:
        self._rows, self._latent_hw = rows, tuple(int(s) for s in latent_hw)
        self._level_sums = {}

    @torch.no_grad()
    def _add(self, probs: torch.Tensor) -> None:
        if self.on_layer is not None:
            self.on_layer(probs)
        batch, _, positions, tokens = probs.shape
        h, w = grid_size(positions, self._latent_hw)
        layer = probs.float().mean(dim=1).transpose(1, 2).reshape(batch, tokens, h, w)  # (B, L, h, w)
        entry = self._level_sums.setdefault((h, w), [0, None])
        entry[0] += 1
        entry[1] = layer if entry[1] is None else entry[1] + layer

    def take(self) -> AttentionMaps | None:
        """The maps of the call since ``expect`` (None when nothing was recorded); resets."""
        if not self._level_sums:
            return None

        def cpu(x):
            return x.detach().to(device="cpu", dtype=torch.float32)

        # bilinear upsampling is linear: upsampling each level's sum once equals summing the upsampled layers
        layers = sum(count for count, _ in self._level_sums.values())
        total = sum(level if hw == self._latent_hw else
                    F.interpolate(level, size=self._latent_hw, mode="bilinear", align_corners=False)
                    for hw, (_, level) in self._level_sums.items())
        result = AttentionMaps(
            maps=cpu(total / layers),
            levels={f"{h}x{w}": cpu(level / count) for (h, w), (count, level) in self._level_sums.items()}
            if self.levels else {},
            layers=layers,
        )
        self.expect(None)
        return result


# ----------------------------------------------------------------------------- words and maps


def word_tokens(tokenizer, text: str) -> list[tuple[str, list[int]]]:
    """The prompt's whitespace-separated words, each with its token positions in the encoded prompt
    (position 0 is the start token; CLIP's BPE never merges across whitespace, so tokenizing word by
    word gives the prompt's own tokens). Words past the tokenizer's length (truncated) are left out."""
    limit = tokenizer.model_max_length - 1  # the end token keeps the last position
    out, position = [], 1
    for word in text.split():
        ids = tokenizer(word, add_special_tokens=False).input_ids
        if position + len(ids) > limit:
            break
        out.append((word, list(range(position, position + len(ids)))))
        position += len(ids)
    return out


def word_map(maps: torch.Tensor, positions: list[int]) -> torch.Tensor:
    """A word's map: the sum of its tokens' maps (DAAM sums a word's sub-word tokens). (..., L, H, W) -> (..., H, W)."""
    if not positions:
        raise ValueError("word_map needs at least one token position")
    return maps[..., positions, :, :].sum(dim=-3)
