"""The Timestep explorer: the last run (Generate, img2img or inpaint) step by step; the forward
process on any image; img2img and inpainting from that image (their runs open here too); the
schedule flaw at t = T."""
from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from .. import docs, img2img, inpaint, labs, trace_views
from .. import engine as eng
from .. import generate as gen
from ..page import PLAY_JS
from .cfg import RUN_GENERATE_JS
from .parts import endpoint, run_button


def _last_run(decoders, view_decoder: str, trace: gr.State) -> SimpleNamespace:
    """The recorded steps of the last run: slider, Play, decoder, the frames, the numbers, the noise plot."""
    gr.Markdown("### The last run, step by step")
    gr.Markdown(docs.LAB_INTROS["explorer"], elem_classes="lab-note")
    v = {}
    with gr.Row(equal_height=True):
        v["run"] = gr.Button("Generate a run to explore", variant="primary", elem_id="explorer-generate", scale=0,
                             elem_classes="small-button",
                             min_width=200)
        v["slider"] = gr.Slider(1, 2, value=1, step=1, label="Recorded step", interactive=False,
                                elem_id="explore-step", scale=4, info=docs.INFO["explore_step"])
        v["play"] = gr.Button("Play", elem_id="explore-play", scale=0, min_width=80, size="sm",
                              elem_classes="small-button")
        v["decoder"] = gr.Radio(list(decoders), value=view_decoder, label="Decoder", scale=2)
    v["frames"] = gr.HTML(trace_views.NO_FRAMES, elem_id="explore-frames", js_on_load=None)
    info = gr.Markdown("", elem_id="explore-info")  # the hint is the frames' (NO_FRAMES): said once
    gr.Markdown(docs.INFO["explore_terms"], elem_classes="lab-note")
    eps = gr.Plot(label="Noise prediction", show_label=False)
    v["details"] = [eps, info]  # trace_views.explore_details' outputs
    ns = SimpleNamespace(**v)
    ns.run.click(None, js=RUN_GENERATE_JS, api_visibility="private", queue=False)
    # the images flip in the browser while the slider moves (page.EXPLORER_JS); the server adds the
    # noise plot and the numbers when it is released, and decodes all frames again for another decoder
    ns.slider.release(trace_views.explore_details, [trace, ns.slider], ns.details, api_visibility="private",
                      show_progress="hidden")
    (ns.play.click(None, js=PLAY_JS)
     .then(trace_views.explore_details, [trace, ns.slider], ns.details, api_visibility="private",
           show_progress="hidden"))
    return ns


def _forward(engine: eng.Engine) -> SimpleNamespace:
    gr.Markdown("### The forward process: noise any image with the model's own schedule")
    gr.Markdown(docs.LAB_INTROS["forward"], elem_classes="lab-note")
    f = {}
    with gr.Row():
        with gr.Column():
            f["image"] = gr.Image(labs.shapes_sample(3), label="Image (upload, or load a shapes-world sample)",
                                  type="pil", sources=["upload", "clipboard"], height=200,
                                  elem_classes="pixelated caption-outside")
            with gr.Accordion("What the model sees (center crop)", open=True):
                f["crop"] = gr.Image(label="The center square, outlined; the rest is not used", height=140,
                                     interactive=False, elem_id="noise-crop", show_label=False)
                f["crop_note"] = gr.Markdown("", elem_id="noise-crop-note")
            with gr.Row():
                f["sample_index"] = gr.Number(value=3, precision=0, minimum=0, maximum=1_000_000, label="Sample #")
                f["sample_btn"] = gr.Button("Load sample")
            f["t"] = gr.Slider(0, engine.num_train_timesteps - 1, value=400, step=1, label="Timestep t",
                               info=docs.INFO["noise_t"])
            f["seed"] = gr.Number(value=0, precision=0, minimum=0, maximum=gen.check.MAX_SEED, label="Noise seed")
            f["button"], f["status"] = run_button("Add noise", "noise-status")
        with gr.Column():
            with gr.Row():
                f["pixels"] = gr.Image(label="x_t in pixel space", height=200, interactive=False,
                                       elem_classes="pixelated caption-outside")
                f["latent"] = gr.Image(label="x_t in latent space (decoded)", height=200, interactive=False,
                                       elem_classes="pixelated caption-outside")
            f["info"] = gr.Markdown("")
            f["plot"] = gr.Plot(label="Signal and noise", show_label=False)
    return SimpleNamespace(**f)


def _img2img(g, f, trace: gr.State, gpu: dict):
    """img2img / SDEdit (issue 16): the reverse process started from the forward process's image."""
    gr.Markdown("### Denoise from here: img2img (SDEdit) from the image above, with the Generate tab's "
                "scheduler, steps, guidance and negative prompt; the result's steps land in the explorer")
    with gr.Row():
        with gr.Column():
            prompt = gr.Textbox(label="img2img prompt", value="a blue circle", max_length=gen.check.MAX_PROMPT_CHARS)
            strength = gr.Slider(0, 1, value=0.6, step=0.05, label="Strength (start at t ~ strength x T)")
            button, status = run_button("Denoise from here", "i2i-status")
        with gr.Column():
            image = gr.Image(label="img2img result", height=200, elem_classes="pixelated caption-outside",
                             interactive=False)
            info = gr.Markdown("")
    form = g.form
    return endpoint(button, img2img.img2img, [f.image, prompt, form["negative_prompt"], strength, form["scheduler"],
                                              form["steps"], form["guidance_scale"], f.seed], [image, info, trace],
                    "img2img", show_progress_on=status, **gpu)


INPAINT_NOTE = ("The mask opens over the image's shape: **Inpaint** regenerates what is under the magenta strokes "
                "from the prompt and keeps the rest, so the shape changes into what the prompt says. Masking empty "
                "background gives background back unless the prompt places a shape there. Paint or erase to change "
                "the mask.")


def _inpaint_box() -> dict:
    """The inpainting block (placed under img2img): the mask editor over the forward process's image,
    an optional mask upload, prompt, strength, method, and the outputs."""
    gr.Markdown("### Inpaint: regenerate the masked region of the image above, keep the rest")
    gr.Markdown(INPAINT_NOTE, elem_classes="lab-note", elem_id="inpaint-note")
    box = {}
    with gr.Row():
        with gr.Column():
            sample = labs.shapes_sample(3)
            box["drawing"] = gr.ImageEditor(
                value={"background": sample, "layers": [], "composite": sample},
                label="Mask: paint the region to regenerate",
                sources=[], type="pil", height=260, layers=False, transforms=(), elem_id="inpaint-editor",
                elem_classes="pixelated",
                brush=gr.Brush(colors=[inpaint.BRUSH], color_mode="fixed", default_size=4),
                eraser=gr.Eraser(default_size=4))
            box["mask"] = gr.Image(label="...or upload a mask (white = regenerate; used instead of the drawing)",
                                   type="pil", sources=["upload"], height=200, elem_id="inpaint-mask",
                                   elem_classes="pixelated caption-outside")
        with gr.Column():
            box["prompt"] = gr.Textbox(label="Inpaint prompt", value="a blue square", elem_id="inpaint-prompt",
                                       max_length=gen.check.MAX_PROMPT_CHARS)
            with gr.Row():
                box["strength"] = gr.Slider(0.05, 1, value=1.0, step=0.05,
                                            label="Strength (1 = the region from pure noise)")
                box["method"] = gr.Radio(inpaint.METHOD_CHOICES, value="auto", label="Method",
                                         info="blend: any model; unet: a 9-channel inpainting UNet (sd15-inpaint)")
            box["button"] = gr.Button("Inpaint", variant="primary", elem_id="inpaint-button")
            box["result"] = gr.Image(label="Inpainted", height=200, elem_classes="pixelated caption-outside",
                                     interactive=False, elem_id="inpaint-result")
            box["status"] = gr.Markdown("", elem_id="inpaint-status")
    box["gallery"] = gr.Gallery(label="The mask and the steps (magenta: the mask's border)", columns=5, height="auto",
                                object_fit="contain", elem_classes="pixelated", elem_id="inpaint-steps")
    with gr.Accordion("Known / unknown region, per step", open=False):
        box["table"] = gr.Markdown("")
    return box


def _wire_inpaint(box, image, negative_prompt, scheduler, steps, guidance_scale, seed, trace, gpu):
    """``/inpaint`` (named parameters: image, mask, prompt, ..., mask_drawing). Returns the page's
    Inpaint event (app.py follows its trace into the labs)."""
    inputs = [image, box["mask"], box["prompt"], negative_prompt, box["strength"], box["method"], scheduler, steps,
              guidance_scale, seed, box["drawing"]]
    return endpoint(box["button"], inpaint.inpaint, inputs, [box["result"], box["status"], box["gallery"], box["table"],
                                                              trace], "inpaint", show_progress_on=box["status"], **gpu)


def _image_views(image):
    """What follows the explorer's image: the model's crop and its note, and the mask editor on the image with a
    mask over its shape (Inpaint works without painting). One response for all three: the editor's opening mask
    replaces whatever is painted before it arrives, and the crop note showing is the sign that it has."""
    crop, note = labs.forward_crop(image)
    return crop, note, inpaint.editor_value(image)


def _schedule_flaw(f) -> None:
    gr.Markdown("### The schedule flaw: what is left of the image above at t = T")
    with gr.Row():
        seeds = gr.Number(value=256, precision=0, minimum=16, maximum=2048, label="Noise seeds")
        block = gr.Radio(["2", "4", "8", "16"], value="8", label="Blur block (px)")
        button, status = run_button("Compare x_T: SD 1.5 vs zero terminal SNR", "snr-status", variant="secondary")
    gallery = gr.Gallery(label="x_T side by side", columns=6, height=240, elem_classes="pixelated")
    info = gr.Markdown("")
    endpoint(button, img2img.terminal_snr, [f.image, seeds, block], [gallery, info], "terminal_snr",
             show_progress_on=status)


def build(engine: eng.Engine, g, trace: gr.State, demo: gr.Blocks, decoders, view_decoder: str,
          gpu: dict) -> SimpleNamespace:
    """Lay out the explorer and wire its own events; returns the last-run view (slider, decoder,
    frames, details) and the img2img / inpaint events whose traces app.py follows into the labs."""
    view = _last_run(decoders, view_decoder, trace)
    view.decoder.input(trace_views.explore_frames, [trace, view.decoder, view.slider], view.frames,
                       api_visibility="private", **gpu)
    f = _forward(engine)
    endpoint(f.sample_btn, labs.shapes_sample, [f.sample_index], [f.image], "shapes_sample")
    endpoint(f.button, labs.forward_noise, [f.image, f.t, f.seed], [f.pixels, f.latent, f.info, f.plot],
             "forward_noise", show_progress_on=f.status, **gpu)
    view.img2img_run = _img2img(g, f, trace, gpu)
    box = _inpaint_box()  # issue 16: mask drawn or uploaded, two methods
    form = g.form
    view.inpaint_run = _wire_inpaint(box, f.image, form["negative_prompt"], form["scheduler"], form["steps"],
                                    form["guidance_scale"], f.seed, trace, gpu)
    # cheap, so outside the queue: in place before a first Inpaint click
    gr.on([f.image.change, demo.load], _image_views, f.image, [f.crop, f.crop_note, box["drawing"]],
          api_visibility="private", show_progress="hidden", queue=False)
    _schedule_flaw(f)
    view.noise_t = f.t
    return view
