"""Handler of the timestep explorer's inpainting tool (``/inpaint``): mask intake and display.

The math is pipelines/inpaint.py on the pipeline's one loop (latent blending for any model, the
9-channel UNet for an inpainting model); this module checks the inputs (each error names its
field), turns the mask (an uploaded image, or strokes painted in ``gr.ImageEditor``) into a
(1, 1, N, N) tensor at the model's size, and shows the mask and what each step did inside and
outside it.
"""
from __future__ import annotations

import time

import gradio as gr
import numpy as np
import torch
from PIL import Image

from . import engine as eng
from . import trace_store
from . import validation as check
from .generate import build_request
from .images import pil_to_tensor, tensor_to_pil, upscale
from .img2img import RESULT_SIZE, check_image, check_strength
from .uploads import read_image

METHOD_CHOICES = ["auto", "blend", "unet"]  # auto: the model's own (blend; unet for a 9-channel UNet)
FRAMES = 6  # recorded steps shown with the mask outline
FRAME_SIZE = 128
ASPECT_TOLERANCE = 0.01
MASK_MARGIN = 0.1  # the default mask: the shape's box grown by this share of the side on every edge
BRUSH = "#ff00ff"
BRUSH_RGBA = (255, 0, 255, 255)


def _editor_layers(payload: dict) -> Image.Image | None:
    """The union of the strokes painted in ``gr.ImageEditor`` (every layer's alpha > 0) as an "L"
    image, or None when nothing was painted."""
    layers = payload.get("layers") or []
    if not isinstance(layers, list) or len(layers) > 8:
        raise check.fail("mask_drawing", f"<{type(layers).__name__}>", "an ImageEditor value with at most 8 layers")
    union = None
    for layer in layers:
        rgba = np.asarray(read_image("mask_drawing", layer).convert("RGBA"))[..., 3] > 0
        if union is not None and union.shape != rgba.shape:
            raise check.fail("mask_drawing", "layers of different sizes", "layers of the background's size")
        union = rgba if union is None else union | rgba
    if union is None or not union.any():
        return None
    return Image.fromarray(union.astype(np.uint8) * 255)


def _painted(payload: dict) -> bool:
    """Whether an ImageEditor value holds strokes (an unreadable one counts as none: it is not used)."""
    try:
        return _editor_layers(payload) is not None
    except gr.Error:
        return False


def read_mask(mask, mask_drawing) -> tuple[Image.Image, str, str]:
    """(mask as an "L" image, the field it came from, a note). ``mask`` (an image: white = regenerate)
    wins over ``mask_drawing`` (an ImageEditor value: painted strokes = regenerate)."""
    if mask is not None:
        return read_image("mask", mask).convert("L"), "mask", ""
    if isinstance(mask_drawing, dict):
        drawn = _editor_layers(mask_drawing)
        if drawn is not None:
            return drawn, "mask_drawing", ""
        raise check.fail("mask_drawing", "<nothing painted>", "strokes over the region to regenerate (or upload a "
                                                              "mask: white = regenerate, black = keep)")
    if mask_drawing is not None:
        raise check.fail("mask_drawing", f"<{type(mask_drawing).__name__}>", "an ImageEditor value (background, layers)")
    raise check.fail("mask", None, "a mask image (white = regenerate, black = keep) or strokes painted in mask_drawing")


def fit_mask(field: str, mask: Image.Image, image: Image.Image) -> tuple[Image.Image, str]:
    """The mask at the image's size: the same size as is; the same aspect ratio resized (said in the
    note); another aspect ratio refused, naming the field (the crop would cut different parts)."""
    if mask.size == image.size:
        return mask, ""
    ratio_m, ratio_i = mask.width / mask.height, image.width / image.height
    if abs(ratio_m / ratio_i - 1) > ASPECT_TOLERANCE:
        raise check.fail(field, f"{mask.width}x{mask.height} px",
                         f"the image's size {image.width}x{image.height} px or its aspect ratio (then it is resized)")
    note = f"{field} {mask.width}x{mask.height} resized to the image's {image.width}x{image.height}. "
    return mask.resize(image.size, Image.BILINEAR), note


def mask_to_tensor(field: str, mask: Image.Image, size: int, given: tuple[int, int] | None = None):
    """"L" mask -> (1, 1, size, size) in {0, 1}: the image's crop and resize (``pil_to_tensor``), then
    binarized at 0.5 as diffusers' mask processor does. Empty or full masks are refused by name, with the
    size the client sent (``given``), not the resized one."""
    width, height = given or mask.size
    x = (pil_to_tensor(mask.convert("RGB"), size)[:, :1] + 1) / 2
    binary = (x >= 0.5).float()
    share = float(binary.mean())
    if share == 0.0:
        raise check.fail(field, f"<{width}x{height} px, nothing white at {size}x{size}>",
                         "a mask with a region to regenerate (white); at the model's size nothing is left")
    if share == 1.0:
        raise check.fail(field, f"<{width}x{height} px, all white>",
                         "a mask that keeps some of the image (black): an all-white mask is text-to-image (Generate)")
    return binary


def _outline(image: Image.Image, mask: np.ndarray, size: int) -> Image.Image:
    """``image`` upscaled to ``size`` with the mask's border drawn in magenta (display only)."""
    tile = upscale(image, size).resize((size, size), Image.NEAREST).convert("RGB")
    m = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)) > 0
    edge = np.zeros_like(m)
    edge[1:] |= m[1:] != m[:-1]
    edge[:, 1:] |= m[:, 1:] != m[:, :-1]
    pixels = np.array(tile)
    pixels[edge] = (255, 0, 255)
    return Image.fromarray(pixels)


def _frames(records: list) -> list:
    if len(records) <= FRAMES:
        return list(records)
    picks = np.linspace(0, len(records) - 1, FRAMES).round().astype(int)
    return [records[i] for i in dict.fromkeys(picks.tolist())]


@check.gradio_errors
def inpaint(image, mask=None, prompt="a blue square", negative_prompt="", strength=1.0, method="auto",
            scheduler="DDIM", steps=20, guidance_scale=3.0, seed=0, mask_drawing=None):
    """Regenerate the white part of ``mask`` (or the strokes of ``mask_drawing``) in ``image`` with
    ``prompt``; the rest of the image is kept.

    ``method``: "blend" (any model: the known region replaced by the noised original after every
    step), "unet" (a 9-channel inpainting UNet, e.g. --model sd15-inpaint) or "auto" (the model's
    own). Returns (result, gallery of the mask and the steps with its outline, markdown with the
    per-step errors, trace for the explorer)."""
    from pipelines.inpaint import unet_method

    engine = eng.current()
    native = engine.native_size
    image = check_image("image", image, engine.vae_scale_factor)
    mask_image, field, note = read_mask(mask, mask_drawing)
    if field == "mask" and isinstance(mask_drawing, dict) and _painted(mask_drawing):
        note += "The uploaded mask was used (it wins over the drawing). "
    given = mask_image.size
    mask_image, resized = fit_mask(field, mask_image, image)
    note += resized
    own = unet_method(engine.pipe.unet)
    method = check.choice("method", method, METHOD_CHOICES)
    if method != "auto" and method != own:
        allowed = (f"'{own}' or 'auto' with {engine.model_id}: " +
                   ("its UNet takes 9 input channels and inpaints with its own mask channels" if own == "unet" else
                    "'unet' needs a 9-channel inpainting UNet (--model sd15-inpaint)"))
        raise check.fail("method", method, allowed)
    settings = build_request(engine, prompt=prompt, negative_prompt=negative_prompt, scheduler=scheduler,
                             steps=steps, guidance_scale=guidance_scale, seed=seed)
    strength = check_strength(strength, settings.steps)
    x0 = pil_to_tensor(image, native)
    m = mask_to_tensor(field, mask_image, native, given)
    started = time.perf_counter()
    run = eng.inpaint_run(settings, x0, m, strength, own)  # a ValueError becomes gr.Error (@gradio_errors)
    output, regions = run["output"], run["regions"]
    records = output.trace or []
    calls = records[-1].model_calls if records else 0
    share = float(m.mean())
    how = ("latent blending (known region = the original noised to each next t)" if run["method"] == "blend"
           else "the 9-channel inpainting UNet (latents, mask, masked-image latents)")
    status = (f"{note}Inpainted {share:.0%} of the image by {how}, strength {strength:g}: {len(records)} of "
              f"{settings.steps} steps, {calls} model calls, {time.perf_counter() - started:.1f} s on {engine.model_id}.")
    pixel_mask = m[0, 0].numpy() > 0
    latent_mask = run["mask_latent"][0, 0].numpy() > 0
    masked = (x0 * (1 - m))[0]  # the regenerated region shown grey (0 in [-1, 1])
    gallery = [(_outline(tensor_to_pil(x0[0]), pixel_mask, FRAME_SIZE), "image + mask outline"),
               (upscale(Image.fromarray(pixel_mask.astype(np.uint8) * 255), FRAME_SIZE), "mask (white = regenerate)"),
               (upscale(tensor_to_pil(masked), FRAME_SIZE), "known region (grey = regenerated)")]
    frames = _frames(records)
    decoded = eng.decode_latents(torch.cat([r.x_t[:1] * r.input_scale for r in frames]), "vae") if frames else []
    for r, tile in zip(frames, decoded):
        gallery.append((_outline(tile, latent_mask, FRAME_SIZE), f"x_t, step {r.step + 1}/{r.num_steps}, "
                                                                  f"t={r.timestep:.0f}"))
    gallery.append((_outline(output.images[0], pixel_mask, FRAME_SIZE), "result"))
    rows = "\n".join(f"| {e['step'] + 1} | {e['timestep']:.0f} | {e['known']:.3f} | {e['unknown']:.3f} |"
                     for e in regions)
    table = ("Per step, mean |predicted x0 - z0| in latent space, where the image is kept (known) and where it is "
             "regenerated (unknown). Blending writes the noised original back into the known region after every "
             "step; the 9-channel UNet has to keep it itself.\n\n| step | t | known | unknown |\n|---|---|---|---|\n"
             + rows)
    trace = trace_store.keep({**settings.to_dict(), "strength": strength, "inpaint": run["method"]},
                             [trace_store.compact(r) for r in records], engine.model_id)
    return upscale(output.images[0], RESULT_SIZE), status, gallery, table, trace


def shape_mask(image: Image.Image) -> Image.Image:
    """A mask over the image's object, for the editor to open with (inpainting then works on the first
    click): the pixels that differ from the border's median colour, as their bounding box grown by
    ``MASK_MARGIN`` of the side; the centre half when nothing (or nearly everything) differs."""
    rgb = np.asarray(image.convert("RGB")).astype(np.float32)
    h, w = rgb.shape[:2]
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    differs = np.abs(rgb - np.median(border, axis=0)).max(axis=2) > 40
    ys, xs = np.nonzero(differs)
    if not 0.001 < differs.mean() < 0.8:
        ys, xs = np.array([h // 4, 3 * h // 4 - 1]), np.array([w // 4, 3 * w // 4 - 1])
    pad = max(1, round(MASK_MARGIN * max(h, w)))
    mask = np.zeros((h, w), np.uint8)
    mask[max(0, ys.min() - pad):ys.max() + pad + 1, max(0, xs.min() - pad):xs.max() + pad + 1] = 255
    return Image.fromarray(mask)


def editor_value(image):
    """The explorer image (through the safe intake) as the mask editor's background, with a mask over its
    shape painted in (``shape_mask``: Inpaint works without painting; paint or erase to change it)."""
    if image is None:
        return None
    image = read_image("image", image).convert("RGB")
    mask = shape_mask(image)
    layer = Image.new("RGBA", image.size, BRUSH_RGBA)
    layer.putalpha(mask)
    composite = image.copy()
    composite.paste(layer, (0, 0), layer)
    return {"background": image, "layers": [layer], "composite": composite}
