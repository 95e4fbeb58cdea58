"""Views of a recorded run (the trace kept in the session's gr.State): the timestep explorer
and the CFG lab's per-step comparison. Decoding goes through the engine's GPU function."""
from __future__ import annotations

import gradio as gr
import torch

from pipelines.previews import PREVIEW_DECODERS

from . import engine as eng
from . import plots
from . import validation as check
from .images import upscale

VIEW_SIZE = 256
NO_TRACE = "Generate an image first (Generate tab): its steps are kept here for this browser session."


def _record(trace, step):
    if not trace or not trace.get("records"):
        raise gr.Error(NO_TRACE, title="Nothing recorded yet")
    records = trace["records"]
    step = check.integer("step", step, 0, len(records) - 1)
    return records[step]


def _decode(latents: torch.Tensor | None, decoder: str):
    if latents is None:
        return None
    return upscale(eng.decode_latents(latents[:1], decoder)[0], VIEW_SIZE)


def explore_step(trace, step, decoder="vae"):
    """x_t (as the model sees it), predicted x0 and the noise prediction at one recorded step."""
    decoder = check.choice("decoder", decoder, PREVIEW_DECODERS)
    r = _record(trace, step)
    x_t = _decode(r.x_t * r.input_scale, decoder)
    x0 = _decode(r.x0_guided, decoder)
    eps = r.eps_guided if r.eps_guided is not None else r.eps_cond
    eps_fig = plots.channels(eps[0].numpy(), "predicted noise eps (guided), per latent channel") if eps is not None else None
    sigma = "-" if r.sigma is None else f"{r.sigma:.3f}"
    info = (f"**step {r.step + 1} / {r.num_steps}** &nbsp; t = {r.timestep:.0f} &nbsp; alpha_bar = {r.alpha_bar:.4f} "
            f"&nbsp; sigma = {sigma} &nbsp; guidance w = {r.guidance_scale:.2f} &nbsp; model calls so far = {r.model_calls}")
    return x_t, x0, eps_fig, info


def cfg_step(trace, step, decoder="vae"):
    """Unconditional / conditional / guided x0 at one step, |eps_c - eps_u| heatmap, and the
    guidance norm and applied scale over all steps."""
    decoder = check.choice("decoder", decoder, PREVIEW_DECODERS)
    r = _record(trace, step)
    records = trace["records"]
    over_steps = plots.guidance_over_steps(
        [x.step for x in records], [x.guidance_norm for x in records], [x.guidance_scale for x in records], r.step
    )
    if r.eps_uncond is None or r.eps_cond is None:
        note = "This run had no unconditional branch (guidance scale <= 1): nothing to compare."
        return None, _decode(r.x0_guided, decoder), _decode(r.x0_guided, decoder), None, over_steps, note
    diff = (r.eps_cond[0] - r.eps_uncond[0]).abs().mean(dim=0).numpy()  # (h, w) mean over channels
    heat = plots.heatmap(diff, "|eps_cond - eps_uncond| (mean over channels)", label="|difference|")
    note = (f"step {r.step + 1}: guidance norm {r.guidance_norm:.3f}, applied scale {r.guidance_scale:.2f} "
            f"({r.guidance_method})")
    return (_decode(r.x0_uncond, decoder), _decode(r.x0_cond, decoder), _decode(r.x0_guided, decoder), heat,
            over_steps, note)


def step_slider_updates(trace):
    """Both step sliders (explorer, CFG lab) spanning the new trace, set to its last step."""
    n = len(trace["records"]) if trace and trace.get("records") else 1
    update = gr.update(maximum=max(1, n - 1), value=max(0, n - 1), interactive=n > 1)
    return update, update
