"""A noise-aware, time-conditioned classifier on the embedded model's latents, and its files.

Classifier guidance (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis",
Sec. 4) needs log p(y | x_t, t) for every noise level the sampler visits, so the classifier is
trained on noised latents x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps at uniform t, with
the model's own VAE latents (x scaling_factor) and the model's own noise schedule.

Input: the variance-preserving latent the UNet sees (for sigma-space samplers, the scheduler's
latent times 1 / sqrt(1 + sigma^2)) and the timestep t as the UNet gets it (a float for samplers
that interpolate). Output: one logit vector per attribute (HEADS), a dict name -> (B, n_classes).

Architecture: conv stem, residual blocks with GroupNorm and FiLM timestep conditioning (the
sinusoidal embedding of Vaswani et al. 2017 / DDPM, through an MLP), one stride-2 downsample,
then a linear head per attribute on the flattened feature map (no global pooling: position is
one of the attributes).

``parse_prompt`` is the shapes world's caption parser: which attributes a prompt names.
"""
from __future__ import annotations

import json
import math
import os
import re

import torch
import torch.nn.functional as F
from torch import nn

from shapesworld.world import COLOR_NAMES, HPOS, SHAPES, SIZES, VPOS

# attribute name -> class names, in the order of the logits
HEADS: dict[str, tuple[str, ...]] = {"shape": SHAPES, "color": COLOR_NAMES, "size": SIZES, "h": HPOS, "v": VPOS}
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


# --------------------------------------------------------------------------- the network


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding (DDPM / "Attention Is All You Need"): [cos(t w_k), sin(t w_k)],
    w_k = max_period^(-k / (dim/2)). ``t`` (B,) may be fractional. Returns (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimeResBlock(nn.Module):
    """GN -> SiLU -> conv -> FiLM(t) -> GN -> SiLU -> conv, plus the skip (1x1 when widths differ)."""

    def __init__(self, cin: int, cout: int, temb_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(temb_dim, 2 * cout)  # per-channel scale and shift from t
        self.norm2 = nn.GroupNorm(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(temb)[:, :, None, None].chunk(2, dim=1)  # (B, cout, 1, 1) each
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class NoiseAwareClassifier(nn.Module):
    """(x_t (B, C, h, w), t (B,)) -> {attribute: logits (B, n)}. See the module docstring."""

    def __init__(self, in_channels: int = 4, sample_size: int = 8, channels: tuple[int, int] = (64, 96),
                 temb_dim: int = 128, groups: int = 16, num_train_timesteps: int = 1000):
        super().__init__()
        self.config = dict(in_channels=in_channels, sample_size=sample_size, channels=list(channels),
                           temb_dim=temb_dim, groups=groups, num_train_timesteps=num_train_timesteps,
                           heads={k: list(v) for k, v in HEADS.items()})
        c1, c2 = channels
        self.temb_dim = temb_dim
        self.time_mlp = nn.Sequential(nn.Linear(temb_dim, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        self.stem = nn.Conv2d(in_channels, c1, 3, padding=1)
        self.block1 = TimeResBlock(c1, c1, temb_dim, groups)
        self.block2 = TimeResBlock(c1, c1, temb_dim, groups)
        self.down = nn.Conv2d(c1, c2, 3, stride=2, padding=1)  # (h, w) -> (h/2, w/2)
        self.block3 = TimeResBlock(c2, c2, temb_dim, groups)
        self.out_norm = nn.GroupNorm(groups, c2)
        flat = c2 * (sample_size // 2) ** 2
        self.heads = nn.ModuleDict({name: nn.Linear(flat, len(classes)) for name, classes in HEADS.items()})

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        temb = self.time_mlp(timestep_embedding(t.to(x.device), self.temb_dim))  # (B, temb_dim)
        h = self.stem(x)  # (B, c1, h, w)
        h = self.block2(self.block1(h, temb), temb)
        h = self.block3(self.down(h), temb)  # (B, c2, h/2, w/2)
        h = F.silu(self.out_norm(h)).flatten(1)
        return {name: head(h) for name, head in self.heads.items()}


def target_log_prob(logits: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """log p(y | x_t) = sum over the named attributes a of log softmax(logits_a)[y_a], per sample.

    ``targets`` (B, len(HEADS)) holds class indices in HEADS order, -1 where the prompt does not
    name the attribute (no term). Returns (B,)."""
    total = torch.zeros(targets.shape[0], device=targets.device)
    for i, name in enumerate(HEADS):
        named = targets[:, i] >= 0
        logp = F.log_softmax(logits[name].float(), dim=-1)  # (B, n)
        picked = logp.gather(1, targets[:, i].clamp(min=0)[:, None])[:, 0]
        total = total + torch.where(named, picked, torch.zeros_like(picked))
    return total


def target_probs(logits: dict[str, torch.Tensor], targets: torch.Tensor) -> dict[str, list[float]]:
    """Per named attribute, the classifier's probability of the target class, mean over the batch
    samples that name it (for plots: when does the sample "decide"?)."""
    out = {}
    for i, name in enumerate(HEADS):
        named = targets[:, i] >= 0
        if bool(named.any()):
            p = F.softmax(logits[name].float(), dim=-1).gather(1, targets[:, i].clamp(min=0)[:, None])[:, 0]
            out[name] = float(p[named].mean())
    return out


# --------------------------------------------------------------------------- files


def save_classifier(model: NoiseAwareClassifier, folder: str, dtype: torch.dtype = torch.float16) -> None:
    """Write config.json and model.safetensors (fp16 by default: the repository's weight budget)."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    tmp = os.path.join(folder, WEIGHTS_NAME + ".tmp")
    save_file(state, tmp, metadata={"format": "pt"})
    os.replace(tmp, os.path.join(folder, WEIGHTS_NAME))
    with open(os.path.join(folder, CONFIG_NAME), "w", encoding="utf-8") as f:
        json.dump({"_class_name": "NoiseAwareClassifier", **model.config}, f, indent=2)


def load_classifier(folder: str, device: str | torch.device = "cpu") -> NoiseAwareClassifier:
    """Load a classifier folder written by ``save_classifier`` (weights upcast to float32), in eval mode."""
    from safetensors.torch import load_file

    config_path = os.path.join(folder, CONFIG_NAME)
    if not os.path.isfile(config_path):
        raise ValueError(f"classifier folder {folder!r} has no {CONFIG_NAME}")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    heads = config.get("heads")
    if heads is not None and heads != {k: list(v) for k, v in HEADS.items()}:
        raise ValueError(f"classifier {folder!r} has heads {heads}; this code expects {dict(HEADS)}")
    kwargs = {k: config[k] for k in ("in_channels", "sample_size", "temb_dim", "groups", "num_train_timesteps")}
    model = NoiseAwareClassifier(channels=tuple(config["channels"]), **kwargs)
    state = load_file(os.path.join(folder, WEIGHTS_NAME))
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.to(device).eval().requires_grad_(False)


# --------------------------------------------------------------------------- prompts

_WORDS = {name: {c: i for i, c in enumerate(classes)} for name, classes in HEADS.items()}


def parse_prompt(prompt: str) -> dict[str, str]:
    """Which shapes-world attributes a caption names: {"shape": "circle", "color": "red", ...}.

    Words of the world's vocabulary are read wherever they appear ("a large red circle in the top
    left", "blue square"); "shape" alone names no shape. "center" with no vertical word means the
    middle of the image too ("in the center" is how the world captions (center, middle)); "middle"
    alone names only v. Two different words for one attribute are an error (naming both)."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt={prompt!r} must be a string to read attributes from")
    found: dict[str, str] = {}
    for word in re.findall(r"[a-z]+", prompt.lower()):
        for name, classes in _WORDS.items():
            if word in classes:
                if name in found and found[name] != word:
                    raise ValueError(f"prompt={prompt!r} names two {name}s ({found[name]!r} and {word!r}); name one")
                found[name] = word
    if found.get("h") == "center" and "v" not in found:
        found["v"] = "middle"
    return found


def target_indices(attributes: dict[str, str]) -> list[int]:
    """Class index per head in HEADS order, -1 for attributes not named."""
    return [_WORDS[name][attributes[name]] if name in attributes else -1 for name in HEADS]
