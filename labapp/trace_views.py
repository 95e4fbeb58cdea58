"""Views of a recorded run (the trace kept in the session's gr.State): the timestep explorer
and the CFG lab's per-step comparison. Decoding goes through the engine's GPU function.

Steps are 1-based here, as everywhere a person reads them ("step 1 / 25" is the first step);
the records themselves are 0-based (``record.step``).
"""
from __future__ import annotations

import base64
import html
import io

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


def _step_info(r) -> str:
    sigma = "- (DDIM-type schedulers have no sigma)" if r.sigma is None else f"{r.sigma:.3f}"
    return (f"**step {r.step + 1} / {r.num_steps}** &nbsp; t = {r.timestep:.0f} &nbsp; alpha_bar = {r.alpha_bar:.4f} "
            f"&nbsp; sigma = {sigma} &nbsp; guidance w = {r.guidance_scale:.2f} &nbsp; model calls so far = {r.model_calls}")


@check.gradio_errors
def explore_details(trace, step):
    """The noise prediction's channels and the step's numbers at one recorded step (1-based): what the
    explorer computes on the server when the slider is released (the images flip in the browser)."""
    r = _record(trace, step)
    eps = r.eps_guided if r.eps_guided is not None else r.eps_cond
    eps_fig = plots.channels(eps[0].numpy(), "predicted noise eps (guided), per latent channel") if eps is not None else None
    return eps_fig, _step_info(r)


@check.gradio_errors
def explore_step(trace, step, decoder="vae"):
    """x_t (as the model sees it), predicted x0 and the noise prediction at one recorded step (1-based)."""
    decoder = _decoder(decoder)
    r = _record(trace, step)
    where = step_label(r)
    x_t = labeled(_decode(r.x_t * r.input_scale, decoder), f"x_t - {where}")
    x0 = labeled(_decode(r.x0_guided, decoder), f"pred x0 - {where}")
    return (x_t, x0, *explore_details(trace, step))


# ------------------------------------------------------------------ frames flipped in the browser

FRAME_MAX = 256  # px: frames of large models are sent at most this big (JPEG); small ones as PNG, as they are
NO_FRAMES = f"<div class='explore-frames empty'><p>{NO_TRACE}</p></div>"


def _data_url(image) -> str:
    buffer = io.BytesIO()
    if max(image.size) > FRAME_MAX:
        image = image.copy()
        image.thumbnail((FRAME_MAX, FRAME_MAX))
        image.convert("RGB").save(buffer, format="JPEG", quality=85)
        kind = "jpeg"
    else:
        image.save(buffer, format="PNG")
        kind = "png"
    return f"data:image/{kind};base64,{base64.b64encode(buffer.getvalue()).decode()}"


@check.gradio_errors
def explore_frames(trace, decoder="vae", shown: int | None = None) -> str:
    """Every recorded step's x_t and predicted x0, decoded once and sent together as one HTML block;
    the page's script (labapp/page.py, EXPLORER_JS) shows the frame of the step slider's value while
    it is dragged and while Play runs, with no request per step. ``shown``: the 1-based step visible
    first (default: the last)."""
    if not isinstance(trace, Trace) or not trace.records:
        return NO_FRAMES
    decoder = _decoder(decoder)
    records = list(trace.records)
    shown = len(records) if shown is None else check.integer("step", shown, 1, len(records))
    with torch.no_grad():
        x_t = eng.decode_latents(torch.cat([r.x_t[:1] * r.input_scale for r in records]), decoder)
        x0 = eng.decode_latents(torch.cat([r.x0_guided[:1] for r in records]), decoder)
    frames = []
    for i, (r, a, b) in enumerate(zip(records, x_t, x0), start=1):
        caption = html.escape(step_label(r))
        frames.append(
            f"<div class='frame' data-step='{i}'{'' if i == shown else ' hidden'}>"
            f"<figure><img src='{_data_url(a)}' alt='x_t - {caption}'><figcaption>x_t (what the UNet sees) - "
            f"{caption}</figcaption></figure>"
            f"<figure><img src='{_data_url(b)}' alt='pred x0 - {caption}'><figcaption>predicted x0 - {caption}"
            f"</figcaption></figure></div>")
    return f"<div class='explore-frames' data-steps='{len(records)}'>{''.join(frames)}</div>"


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
