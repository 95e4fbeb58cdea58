"""Partner LoRA: train an adapter so that it also works combined with another, existing adapter.

Two LoRAs trained apart each learn a weight delta that is right for the base model alone; summed,
the deltas need not be right for the pair. On the embedded model, for example, an "outline" LoRA
trained alone learns "fill the shape's inside with the light background", and with "night" on
as well the shapes come out filled (measured in BENCHMARKS.md: 0% of samples both hollow and
dark). Training with a partner fixes the pair from one side: the partner adapter is loaded
frozen next to the trained one, and on a share of the steps it is switched on while the batch
comes from images of both styles together; on the other steps it is off and the batch is the
adapter's own data. The trained adapter then has to be right in both contexts.

The partner stays active in every LoRA layer and is switched by its scaling (0 when off), so no
parameter changes `requires_grad` during training and DDP's gradient buckets stay fixed. Which
steps have it on, and which partner examples they draw, are pure functions of the seed and the
micro-step, like the rest of the data stream: resumed and distributed runs see the same.
"""
from __future__ import annotations

import torch

from train.lora_data import collate, keyed_generator
from train.lora_init import read_unet_lora

PARTNER_ADAPTER = "partner"
# Keys of the partner's generators, apart from the data (epoch, index) and noise (rank, step) keys.
_ON_KEY, _PICK_KEY = -3, -4


class PartnerLoRA:
    """A frozen second LoRA in the UNet, next to the "default" adapter being trained."""

    def __init__(self, unet, path: str, weight: float = 1.0, name: str = PARTNER_ADAPTER):
        from peft.tuners.lora import LoraLayer

        state_dict, network_alphas, metadata = read_unet_lora(path, "--partner_lora")
        unet.load_lora_adapter(state_dict, prefix="unet", network_alphas=network_alphas, adapter_name=name,
                               metadata=metadata)
        self.name = name
        self.weight = float(weight)
        # diffusers' loader makes the partner the only active adapter (and trainable): undo both (every
        # adapter in the layer stays active: the trained one and each partner, switched by its scaling).
        layers = [m for m in unet.modules() if isinstance(m, LoraLayer)]
        for layer in layers:
            layer.set_adapter(list(layer.lora_A))
        # set_adapter also makes every active adapter trainable: only the "default" one is trained (an
        # earlier partner would otherwise learn again when a second one is loaded)
        for n, p in unet.named_parameters():
            if "lora_" in n and ".default." not in n:
                p.requires_grad_(False)
        partner_params = [p for n, p in unet.named_parameters() if f".{name}." in n]
        self.num_parameters = sum(p.numel() for p in partner_params)
        self._scaled = [(m, m.scaling[name]) for m in layers if name in m.scaling]
        if not self._scaled:
            raise ValueError(f"--partner_lora={path!r} matched no layer of the UNet")
        self.on = None
        self.current = None
        self.switch(False)

    def switch(self, on: bool) -> None:
        """Partner on (at its weight) or off (scaling 0: the partner adds exactly nothing)."""
        if on == self.on:
            return
        self.set_weight(self.weight if on else 0.0)

    def set_weight(self, weight: float) -> None:
        """The partner at ``weight`` (0: off); --dial draws the partner's weight per step."""
        if weight == self.current:
            return
        for layer, base in self._scaled:
            layer.scaling[self.name] = base * weight
        self.current, self.on = weight, weight != 0.0


def partner_step(seed: int, micro_step: int, prob: float) -> bool:
    """Whether this micro-step trains with the partner on: the same answer on every rank."""
    return float(torch.rand((), generator=keyed_generator(seed, _ON_KEY, micro_step))) < prob


def partner_batch(dataset, seed: int, rank: int, micro_step: int, batch_size: int) -> dict:
    """A batch of partner-data examples drawn for (rank, micro-step); each rank draws its own."""
    picks = torch.randint(len(dataset), (batch_size,), generator=keyed_generator(seed, _PICK_KEY, rank, micro_step))
    return collate([dataset[(micro_step, int(i))] for i in picks])
