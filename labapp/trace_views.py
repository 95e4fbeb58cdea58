"""Views of a recorded run (the trace kept in the session's gr.State): the timestep explorer
and the CFG lab's per-step comparison. Decoding goes through the engine's GPU function.

Steps are 1-based here, as everywhere a person reads them ("step 1 / 25" is the first step);
the records themselves are 0-based (``record.step``).
"""
from __future__ import annotations

import gradio as gr
import torch

from . import engine as eng
from . import plots
from . import validation as check
from .generate import decoders, labeled, step_label
from .images import upscale
from .trace_store import Trace

VIEW_SIZE = 256
NO_TRACE = "Generate an image first (Generate tab): its steps are kept here for this browser session."


def _record(trace, step):
    """The record of 1-based ``step``."""
    if not isinstance(trace, Trace) or not trace.records:
        raise gr.Error(NO_TRACE, title="Nothing recorded yet")
    records = trace.records
    step = check.integer("step", step, 1, len(records))
    return records[step - 1]


def _decode(latents: torch.Tensor | None, decoder: str):
    if latents is None:
        return None
    return upscale(eng.decode_latents(latents[:1], decoder)[0], VIEW_SIZE)


def _decoder(decoder) -> str:
    return check.choice("decoder", decoder, decoders(eng.current()))


@check.gradio_errors
def explore_step(trace, step, decoder="vae"):
    """x_t (as the model sees it), predicted x0 and the noise prediction at one recorded step (1-based)."""
    decoder = _decoder(decoder)
    r = _record(trace, step)
    where = step_label(r)
    x_t = labeled(_decode(r.x_t * r.input_scale, decoder), f"x_t - {where}")
    x0 = labeled(_decode(r.x0_guided, decoder), f"pred x0 - {where}")
    eps = r.eps_guided if r.eps_guided is not None else r.eps_cond
    eps_fig = plots.channels(eps[0].numpy(), "predicted noise eps (guided), per latent channel") if eps is not None else None
    sigma = "- (DDIM-type schedulers have no sigma)" if r.sigma is None else f"{r.sigma:.3f}"
    info = (f"**step {r.step + 1} / {r.num_steps}** &nbsp; t = {r.timestep:.0f} &nbsp; alpha_bar = {r.alpha_bar:.4f} "
            f"&nbsp; sigma = {sigma} &nbsp; guidance w = {r.guidance_scale:.2f} &nbsp; model calls so far = {r.model_calls}")
    return x_t, x0, eps_fig, info


@check.gradio_errors
def cfg_step(trace, step, decoder="vae"):
    """Unconditional / conditional / guided x0 at one step (1-based), |eps_c - eps_u| heatmap, and
    the guidance norm and applied scale over all steps."""
    decoder = _decoder(decoder)
    r = _record(trace, step)
    records = trace.records
    where = step_label(r)
    over_steps = plots.guidance_over_steps(
        [x.step + 1 for x in records], [x.guidance_norm for x in records], [x.guidance_scale for x in records], r.step + 1
    )
    guided = labeled(_decode(r.x0_guided, decoder), f"x0 guided - {where}")
    if r.eps_uncond is None or r.eps_cond is None:
        note = "This run had no unconditional branch (guidance scale <= 1): nothing to compare."
        return (labeled(None, "x0 uncond - none at w <= 1"), labeled(_decode(r.x0_guided, decoder),
                f"x0 cond - {where}"), guided, None, over_steps, note)
    diff = (r.eps_cond[0] - r.eps_uncond[0]).abs().mean(dim=0).numpy()  # (h, w) mean over channels
    heat = plots.heatmap(diff, f"|eps_c - eps_u|, step {r.step + 1}", label="mean over channels", vmin=0.0)
    note = (f"{where}: guidance norm {r.guidance_norm:.3f}, applied scale {r.guidance_scale:.2f} "
            f"({r.guidance_method})")
    return (labeled(_decode(r.x0_uncond, decoder), f"x0 uncond - {where}"),
            labeled(_decode(r.x0_cond, decoder), f"x0 cond - {where}"), guided, heat, over_steps, note)


def strongest_guidance_step(records) -> int:
    """1-based step where guidance shows in both of the CFG lab's views: the largest product of
    the mean |x0_cond - x0_uncond| (the images side by side) and the guidance norm
    ||eps_c - eps_u|| (the heat map). Either alone misleads on a zero-SNR v-prediction model:
    at t = T eps_c = eps_u (flat heat map) while the two x0 differ most, and the eps norm peaks at
    the last step, where both x0 agree. Falls back to the norm when the records hold no x0 pair."""
    def score(r):
        if r.x0_cond is None or r.x0_uncond is None:
            return r.guidance_norm
        return float((r.x0_cond - r.x0_uncond).abs().mean()) * r.guidance_norm

    scores = [score(r) for r in records]
    return max(range(len(scores)), key=scores.__getitem__) + 1


def step_slider_updates(trace):
    """The explorer's slider (at the last step) and the CFG lab's (where guidance shows most), 1-based.

    Two separate dicts: Gradio's postprocess pops "value" from an update dict, so one dict
    returned for two outputs would leave the second slider without its value.
    """
    records = trace.records if isinstance(trace, Trace) else []
    n = max(1, len(records))
    explore = gr.update(minimum=1, maximum=n, value=n, interactive=n > 1)
    cfg = gr.update(minimum=1, maximum=n, value=strongest_guidance_step(records) if records else 1, interactive=n > 1)
    return explore, cfg
