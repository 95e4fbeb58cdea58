"""Adapters that work as a dial (--dial): each step trains the adapter at a drawn weight on images
of the style drawn at that strength.

A LoRA trained at weight 1 only is right at 0 (the base model) and at 1, and nowhere in between: the
weight scales the *weight* delta, while a user expects it to scale the *effect*. On the embedded model
a half-weight night LoRA keeps neither the light background nor the dark one and loses the shape's
color on the way (BENCHMARKS.md, "LoRA weights and what the prompt keeps"). Mixing the predictions
instead (v_base + w (v_lora - v_base)) loses it as well, so the mix is no target to distil
(bench/lora_dial_diagnosis.py).

For the shapes world the right image at every weight can be drawn: ``shapesworld.world.render``
takes a strength per style (night: the background mixed from light to dark; pastel: part of the
white mixed in; outline: the inside faded towards the background). With --dial, each step draws a
weight w in [--dial_min_weight, 1] (w = 1 on a --dial_full_prob share of the steps, so the full
style keeps its strength), sets the adapter's peft scaling to alpha/r * w, and trains on a batch
rendered at strength w. Small weights train on images close to the plain ones, which holds the
adapter near the base model there.

With partners (--partner_lora, one or more), on a --partner_prob share of the steps one partner,
chosen by the step, is switched on at its own drawn weight w_p (equal to w on a
--dial_partner_equal_prob share, else uniform in [--dial_min_weight, 1]) and the batch shows both
styles at (w, w_p): the adapter learns to be right next to the partner at any pair of weights.

With --dial_anchor_lora, the steps at weight 1 (and, for the partner styles in --dial_anchor_pairs,
the steps with both at weight 1) add a second term: the SNR-weighted MSE between the adapter's
prediction and the prediction of a frozen anchor copy standing in its place (the adapter it started
from, whose weight 1 was already good; at a pair step the partner is replaced by its own anchor copy
from --dial_anchor_partner_loras, if given). Without it, dial training moves weight 1 with the rest: on
the embedded model the first dial rounds kept the prompt at half weight but lost color and hollowness
at weight 1 and at outline 1 + night 1. The anchor holds what weight 1 did while the middle is trained.

Every draw (weights, partner, examples) is a function of the seed and the micro-step, so resumed
and distributed runs see the same steps; the data loader still advances as without --dial (its
batch is set aside), so the checkpoint position keeps its meaning.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from train.lora_data import CaptionedImages, collate, keyed_generator
from train.lora_partner import PartnerLoRA

# Keys of the dial's generators, apart from the data (epoch, index), noise (rank, step) and the
# partner's (-3, -4) keys.
_WEIGHT_KEY, _PARTNER_WEIGHT_KEY, _PICK_KEY, _WHICH_KEY = -5, -6, -7, -8
RENDER_SEED_BASE = 700_000_000  # far from the rendered data sets (seed * 1_000_003 + i) and the eval seeds


class AdapterScales:
    """Set the weight of named peft adapters in every LoRA layer of a model (scaling = alpha/r * w)."""

    def __init__(self, model, names: list[str]):
        from peft.tuners.lora import LoraLayer

        layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
        self.base = {name: [(m, m.scaling[name]) for m in layers if name in m.scaling] for name in names}
        for name, pairs in self.base.items():
            if not pairs:
                raise ValueError(f"adapter {name!r} is in no LoRA layer of the model")
        self.weights = {name: 1.0 for name in names}

    def set(self, weights: dict[str, float]) -> None:
        """Weights of the adapters named (others keep theirs); 0 makes an adapter add exactly nothing."""
        for name, w in weights.items():
            if self.weights.get(name) == w:
                continue
            for layer, base in self.base[name]:
                layer.scaling[name] = base * w
            self.weights[name] = w


ANCHOR_ADAPTER = "anchor"


class DialAnchor:
    """Frozen anchor copies in the UNet: of the trained adapter and, optionally, of some partners.

    ``partner_anchors`` maps a partner's index (in --partner_lora order) to the file of its anchor copy.
    The copies sit in every LoRA layer at scaling 0 and are swapped in by ``in_place``.
    """

    def __init__(self, unet, path: str, partner_anchors: dict[int, str] | None = None):
        self.own = PartnerLoRA(unet, path, name=ANCHOR_ADAPTER)
        self.partners = {i: PartnerLoRA(unet, f, name=f"{ANCHOR_ADAPTER}_partner_{i}")
                         for i, f in (partner_anchors or {}).items()}

    @contextmanager
    def in_place(self, scales: AdapterScales, partners: list[PartnerLoRA]):
        """Inside: the anchor at the trained adapter's weight and the trained adapter off; each partner
        with an anchor copy likewise replaced by it. Everything is put back on leaving."""
        weight = scales.weights["default"]
        swapped = [(p, a, p.current) for i, p in enumerate(partners)
                   if (a := self.partners.get(i)) is not None and p.current]
        scales.set({"default": 0.0})
        self.own.set_weight(weight)
        for p, a, w in swapped:
            p.set_weight(0.0)
            a.set_weight(w)
        try:
            yield
        finally:
            self.own.set_weight(0.0)
            scales.set({"default": weight})
            for p, a, w in swapped:
                a.set_weight(0.0)
                p.set_weight(w)


def anchored_step(weight: float, partner_weights: list[float], partner_styles: list[str],
                  anchor_pairs: list[str]) -> bool:
    """Whether a dial step is held to the anchor: the adapter at weight 1, with every partner off, or
    with one partner at weight 1 whose style is in ``anchor_pairs``."""
    if weight != 1.0:
        return False
    on = [(w, st) for w, st in zip(partner_weights, partner_styles) if w]
    return not on or (len(on) == 1 and on[0][0] == 1.0 and on[0][1] in anchor_pairs)


def dial_weight(seed: int, micro_step: int, low: float, full_prob: float) -> float:
    """The adapter's weight on this micro-step: 1 with ``full_prob``, else uniform in [low, 1]."""
    u, v = (float(x) for x in torch.rand((2,), generator=keyed_generator(seed, _WEIGHT_KEY, micro_step)))
    return 1.0 if u < full_prob else low + (1.0 - low) * v


def dial_partner(seed: int, micro_step: int, own: float, num_partners: int, low: float,
                 equal_prob: float) -> tuple[int, float]:
    """(which partner, its weight) on a partner step: the weight is ``own`` with ``equal_prob``, else uniform."""
    g = keyed_generator(seed, _PARTNER_WEIGHT_KEY, micro_step)
    which = int(torch.randint(num_partners, (1,), generator=keyed_generator(seed, _WHICH_KEY, micro_step)))
    u, v = (float(x) for x in torch.rand((2,), generator=g))
    return which, (own if u < equal_prob else low + (1.0 - low) * v)


class DialRenderer:
    """Batches of shapes-world images drawn at given style strengths, with the training data's
    transforms, trigger word and caption dropout (a ``CaptionedImages`` whose examples are rendered)."""

    def __init__(self, tokenizer, resolution: int, seed: int, trigger: str | None, caption_dropout_prob: float,
                 pool: int = 1_000_000):
        self.style, self.strengths, self.trigger, self.pool = None, None, trigger, pool
        self.seed = seed
        self.images = CaptionedImages(self._load, pool, tokenizer, resolution, seed,
                                      caption_dropout_prob=caption_dropout_prob)

    def _load(self, index: int):
        from shapesworld.world import sample

        s = sample(RENDER_SEED_BASE + self.seed * 1_000_003 + index, style=self.style, empty_prob=0.0,
                   resolution=self.images.resolution, strengths=self.strengths)
        caption = s.caption
        if self.trigger:
            caption = f"{self.trigger}, {caption}" if caption else self.trigger
        return s.image, caption

    def batch(self, style: str, strengths: dict, rank: int, micro_step: int, batch_size: int) -> dict:
        """``batch_size`` examples of ``style`` at ``strengths``, drawn for (rank, micro-step)."""
        self.style, self.strengths = style, strengths
        picks = torch.randint(self.pool, (batch_size,), generator=keyed_generator(self.seed, _PICK_KEY, rank, micro_step))
        return collate([self.images[(micro_step, int(i))] for i in picks])
