"""The Generate tab: the form (one mapping keyed by ``GenerationRequest.from_form``'s parameters),
Generate / Stop right under the prompt, and the results column (live x_t / x0 previews on top,
then the one status line, the image, a batch's gallery) that follows the scroll, so the run
controls and the denoising are on screen together."""
from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from pipelines.guidance import GUIDANCE_METHODS, SCALE_SCHEDULES
from pipelines.schedulers import SIGMA_KINDS

from .. import docs, lora_ui, models_ui, settings_file, share_link
from .. import engine as eng
from .. import generate as gen
from ..docs import example_rows
from .parts import pixel_gallery

HANDLER_ONLY = ("progress", "request")  # Generate's parameters Gradio fills itself


def _guidance_controls(form: dict) -> None:
    """The guidance method's knobs, keyed by from_form's names."""
    with gr.Accordion("Guidance method", open=False):
        form["guidance_method"] = gr.Radio(list(GUIDANCE_METHODS), value="cfg", label="Method")
        with gr.Row():
            form["guidance_rescale"] = gr.Slider(0, 1, value=0.0, step=0.05, label="CFG rescale (phi)",
                                                 info=docs.INFO["phi"], min_width=240)
            form["guidance_schedule"] = gr.Dropdown(list(SCALE_SCHEDULES), value="constant", label="Scale schedule",
                                                    min_width=240)
        with gr.Row():
            form["guidance_interval_start"] = gr.Slider(0, 1, value=0.0, step=0.05,
                                                        label="Guide from (fraction of steps)")
            form["guidance_interval_end"] = gr.Slider(0, 1, value=1.0, step=0.05, label="Guide until")
        with gr.Row():
            form["apg_momentum"] = gr.Slider(-1, 1, value=-0.5, step=0.05, label="APG momentum (beta)",
                                             info=docs.INFO["beta"], min_width=240)
            form["apg_norm_threshold"] = gr.Slider(0, 100, value=15, step=0.5, label="APG norm threshold (r)",
                                                   info=docs.INFO["r"], min_width=240)
            form["apg_eta"] = gr.Slider(0, 1, value=0.0, step=0.05, label="APG eta", info=docs.INFO["eta"],
                                        min_width=240)
        with gr.Row():
            form["cfg_zero_init_steps"] = gr.Slider(0, 10, value=1, step=1, label="CFG-Zero* zero-init steps")
            form["perp_neg_scale"] = gr.Slider(0, 10, value=1.0, step=0.1, label="Perp-Neg negative scale")
        form["classifier_scale"] = gr.Slider(*gen.CLASSIFIER_SCALE_RANGE, value=gen.DEFAULT_CLASSIFIER_SCALE, step=0.5,
                                             label="Classifier scale s (classifier, classifier+cfg)")


def _sampler_controls(engine: eng.Engine, form: dict, own: dict) -> None:
    """Spacing, sigmas, size, batch and previews (``own``: the handler's inputs that are not the request's)."""
    size_lo, size_hi, size_step = gen.size_range(engine)
    decoders, stream_decoder = gen.decoders(engine), gen.engine_decoder(engine)
    with gr.Accordion("Sampler, size and previews", open=False):
        with gr.Row():
            form["timestep_spacing"] = gr.Dropdown(list(gen.SPACINGS), value="model default", label="Timestep spacing",
                                                   info=docs.INFO["spacing"])
            form["sigmas"] = gr.Dropdown(list(SIGMA_KINDS), value="default", label="Sigmas", info=docs.INFO["sigmas"])
        with gr.Row():
            form["width"] = gr.Slider(size_lo, size_hi, value=engine.native_size, step=size_step, label="Width")
            form["height"] = gr.Slider(size_lo, size_hi, value=engine.native_size, step=size_step, label="Height")
            form["num_images"] = gr.Slider(1, gen.MAX_IMAGES, value=1, step=1, label="Images", elem_id="num-images")
        with gr.Row():
            own["preview_every"] = gr.Slider(0, 25, value=2, step=1, label="Preview every N steps (0: off)")
            why = engine.previews.reason if engine.previews else "not measured"
            own["preview_decoder"] = gr.Radio(list(decoders), value=stream_decoder, label="Preview decoder",
                                              info=f"Chosen for this model: {stream_decoder} ({why}).")


def _form(engine: eng.Engine, switchable: bool, preset_list: list) -> SimpleNamespace:
    """The left column: prompt, the run buttons, the everyday knobs, then the rest folded away."""
    default_scheduler, default_steps, default_guidance = engine.defaults()
    form, own, ui = {}, {}, {}
    form["prompt"] = gr.Textbox(label="Prompt", value="a large red circle in the top left", lines=2,
                                max_length=gen.check.MAX_PROMPT_CHARS, elem_id="prompt",
                                info="Enter runs Generate; Shift+Enter starts a new line.")
    with gr.Row(elem_id="run-row"):
        ui["run"] = gr.Button("Generate", variant="primary", elem_id="generate-btn", scale=3)
        ui["stop"] = gr.Button("Stop", variant="stop", elem_id="stop-btn", scale=1)
        ui["api_generate"] = gr.Button("generate (API)", visible=False)
    form["negative_prompt"] = gr.Textbox(label="Negative prompt", value="", max_length=gen.check.MAX_PROMPT_CHARS)
    with gr.Row():
        ui["model"] = gr.Dropdown(models_ui.choices(engine.device == "cuda", engine.model_id), value=engine.model_id,
                                  label="Model", interactive=switchable, elem_id="model", min_width=150,
                                  info="Beside each name: why it may not load here. A failed switch keeps the "
                                       "current model.")
        form["scheduler"] = gr.Dropdown(eng.known_schedulers(), value=default_scheduler, label="Scheduler",
                                        min_width=150)
    with gr.Row():
        form["steps"] = gr.Slider(1, gen.MAX_STEPS, value=default_steps, step=1, label="Steps", elem_id="steps",
                                  min_width=150)
        form["guidance_scale"] = gr.Slider(*gen.GUIDANCE_RANGE, value=default_guidance, step=0.5,
                                           label="Guidance scale", min_width=150)
    gr.Markdown(docs.INFO["w"], elem_classes="lab-note field-note")
    with gr.Row(equal_height=True, elem_id="seed-row"):
        form["seed"] = gr.Number(value=0, precision=0, minimum=0, maximum=gen.check.MAX_SEED, label="Seed",
                                 elem_id="seed", scale=3, min_width=100)
        ui["random_seed"] = gr.Button("Random", elem_id="random-seed", scale=0, min_width=70, size="sm",
                                      elem_classes="small-button")
        ui["reuse_seed"] = gr.Button("Last", elem_id="reuse-seed", scale=0, min_width=60, size="sm",
                                     elem_classes="small-button")
        own["randomize_seed"] = gr.Checkbox(value=False, label="Randomize seed", scale=2, min_width=120)
    _guidance_controls(form)
    _sampler_controls(engine, form, own)
    with gr.Accordion("LoRA blend", open=False):
        form["lora"] = gr.Textbox(label="LoRA blend applied by Generate (JSON or 'name:weight, ...')", value="",
                                  elem_id="lora-blend")
    with gr.Row(equal_height=True, elem_id="lora-chip-row"):
        ui["lora_chip"] = gr.Dropdown([(p.id + f" (add at {p.default_weight:g})", p.id) for p in preset_list],
                                      value=[], multiselect=True, label="LoRA", info=lora_ui.CHIPS_NONE,
                                      interactive=bool(preset_list), elem_id="lora-chip", elem_classes="lora-chip",
                                      scale=4, min_width=200)
        ui["clear_lora"] = gr.Button("No LoRA", size="sm", scale=0, min_width=90, elem_classes="small-button")
    with gr.Accordion("Load settings from a PNG or a settings JSON", open=False, elem_id="load-settings"):
        ui["settings_upload"] = gr.File(label="A PNG made here or by AUTOMATIC1111, or a settings JSON",
                                        file_types=[".png", ".json"], file_count="single", elem_id="settings-file",
                                        height=120)
        ui["loaded_settings"] = gr.JSON(label="Read from the file", elem_id="loaded-settings")
    example_labels, examples = example_rows(engine.is_embedded, preset_list)
    gr.Examples(examples, [form["prompt"], form["guidance_scale"], form["lora"]],
                label="Examples (click one, then Generate)", example_labels=example_labels)
    return SimpleNamespace(form=form, own=own, **ui)


def _results() -> SimpleNamespace:
    """The right column, sticky on wide screens (page.CSS #results): previews first, the status line
    (the run's one progress display), the image, a batch's gallery, the send-to buttons, settings."""
    r = {}
    with gr.Column(scale=3, elem_id="results"):
        with gr.Row(elem_id="preview-row"):
            r["x_t"] = gr.Image(label="x_t (noisy latent)", height=220, elem_classes="pixelated caption-outside",
                                elem_id="xt-preview", interactive=False, buttons=[])
            r["x0"] = gr.Image(label="predicted x0", height=220, elem_classes="pixelated caption-outside",
                               elem_id="x0-preview", interactive=False, buttons=[])
        r["status"] = gr.Markdown("Ready.", elem_id="status")
        r["image"] = gr.Image(label="Image (PNG with its settings)", format="png", height=300,
                              elem_id="final-image", elem_classes="caption-outside", interactive=False)
        r["gallery"] = pixel_gallery("All images (each has its own seed)", 4, 200, format="png", visible=False,
                                     elem_id="gallery")
        r["picked_seed"] = gr.State(None)
        r["image_seed_btn"] = gr.Button("Select an image above to make it again alone", size="sm", visible=False,
                                        interactive=False, elem_id="image-seed-btn")
        with gr.Row(visible=False) as r["send_row"]:  # shown once a run has finished
            r["to_cfg"] = gr.Button("This run in the CFG lab", size="sm", elem_id="to-cfg")
            r["to_explorer"] = gr.Button("This run in the Timestep explorer", size="sm", elem_id="to-explorer")
        r["settings"] = gr.Code(label="Settings (JSON)", language="json", interactive=False, max_lines=14,
                                wrap_lines=True, elem_id="settings-json")
        with gr.Row(equal_height=True):
            r["link_btn"] = gr.Button("Link to this setup", size="sm", scale=0, min_width=150, elem_id="link-btn",
                                      elem_classes="small-button")
            r["link"] = gr.Textbox(label="Link to this setup (opens the page with this form)",
                                   placeholder="press the button",
                                   interactive=False, buttons=["copy"], elem_id="share-link", scale=4)
    return SimpleNamespace(**r)


def build(engine: eng.Engine, demo: gr.Blocks, trace: gr.State, switchable: bool, preset_list: list,
          gpu: dict) -> SimpleNamespace:
    """Lay out the Generate tab and wire its own events; returns the form (``form``: from_form's names
    -> controls), the results and the run's event (``generated``) for the labs to follow."""
    with gr.Row(elem_id="generate-row"):
        with gr.Column(scale=2, min_width=320):
            left = _form(engine, switchable, preset_list)
        out = _results()
    controls = {**left.form, **left.own}
    inputs = [controls[name] for name in gen.GENERATE_SIGNATURE.parameters if name not in HANDLER_ONLY]
    outputs = [out.x_t, out.x0, out.image, out.gallery, out.settings, out.status, left.form["seed"], trace]
    # the page's run streams labeled images and its own status line (one counter, elapsed time; no
    # Gradio overlay over the previews); /generate (plain values for API clients) hangs on a hidden trigger
    generated = left.run.click(gen.generate_live, inputs, outputs, api_visibility="private", show_progress="hidden",
                               show_progress_on=out.status, **gpu)  # an error pill on the status line only
    left.api_generate.click(gen.generate, inputs, outputs, api_name="generate", show_progress_on=out.status, **gpu)
    form_controls = [left.form[name] for name in settings_file.FORM_FIELDS]
    (left.settings_upload.upload(settings_file.read_settings, left.settings_upload, left.loaded_settings,
                                 api_name="read_settings", show_progress_on=out.status)
     .success(settings_file.fill_form, left.loaded_settings, [*form_controls, out.status], api_visibility="private",
              show_progress="hidden"))
    out.link_btn.click(None, form_controls, out.link, js=share_link.link_js({name: left.form[name].value for name in
                                                                             settings_file.FORM_FIELDS}),
                       api_visibility="private", queue=False)
    demo.load(share_link.form_from_link, None, [*form_controls, out.status], api_visibility="private",
              show_progress="hidden")
    left.stop.click(gen.request_stop, None, None, queue=False, show_progress="hidden", api_visibility="private")
    left.random_seed.click(gen.random_seed, None, left.form["seed"], queue=False, api_visibility="private")
    left.reuse_seed.click(gen.last_seed, [trace, left.form["seed"]], left.form["seed"], queue=False,
                          api_visibility="private")
    generated.then(gen.after_run, trace, [out.image_seed_btn, out.send_row], queue=False, api_visibility="private")
    out.gallery.select(gen.pick_image, trace, [out.picked_seed, out.image_seed_btn], queue=False,
                       api_visibility="private")
    out.image_seed_btn.click(gen.use_picked_seed, out.picked_seed, [left.form["seed"], left.form["num_images"],
                                                                   out.status], queue=False, api_visibility="private")
    return SimpleNamespace(**vars(left), **vars(out), generated=generated)
