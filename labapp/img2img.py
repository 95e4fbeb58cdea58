"""Handlers of the timestep explorer's reverse-process tools: "Denoise from here" (img2img / SDEdit).

Validation and display only; the math is pipelines/img2img.py on the pipeline's one loop.
"""
from __future__ import annotations

import time

from . import engine as eng
from . import trace_store
from . import validation as check
from .generate import build_request
from .images import pil_to_tensor, upscale
from .uploads import read_image

RESULT_SIZE = 256  # the result shown upscaled (nearest neighbour), crisp at 32 px native


def check_image(field: str, image, min_side: int):
    """The image through the app's safe intake (labapp/uploads.py: the app's own upload folder,
    regular files, size and pixel limits before decoding), then at least ``min_side`` px a side."""
    image = read_image(field, image)
    if min(image.size) < min_side:
        size = "x".join(map(str, image.size)) if hasattr(image, "size") else type(image).__name__
        raise check.fail(field, size, f"an image at least {min_side}x{min_side} px")
    return image


def check_strength(strength, steps: int) -> float:
    value = check.number("strength", strength, 0.0, 1.0)
    if value <= 0.0:
        raise check.fail("strength", strength, "a number in (0, 1]: 0 would run no step (1 = from pure noise)")
    if int(steps * value) < 1:
        raise check.fail("strength", strength, f"at least 1/steps = {1 / steps:.3g} with steps={steps} "
                                               "(int(strength x steps) steps are run)")
    return value


@check.gradio_errors
def img2img(image, prompt="", negative_prompt="", strength=0.6, scheduler="DDIM", steps=20, guidance_scale=7.5,
            seed=0):
    """Noise ``image`` to t ~ strength x T and denoise it with ``prompt`` (SDEdit).

    Returns (image, status, trace for the explorer). The image is center-cropped and resized to
    the model's size, as in the forward-process tool.
    """
    engine = eng.current()
    native = engine.native_size
    image = check_image("image", image, engine.vae_scale_factor)
    settings = build_request(engine, prompt=prompt, negative_prompt=negative_prompt, scheduler=scheduler,
                             steps=steps, guidance_scale=guidance_scale, seed=seed)
    strength = check_strength(strength, settings.steps)
    started = time.perf_counter()
    output = eng.img2img_run(settings, pil_to_tensor(image, native), strength)
    records = output.trace or []
    calls = records[-1].model_calls if records else 0
    first = f"t = {records[0].timestep:.0f}" if records else "-"
    status = (f"img2img at strength {strength:g}: {len(records)} of {settings.steps} steps from {first}, "
              f"{calls} model calls, {time.perf_counter() - started:.1f} s on {engine.model_id}.")
    trace = trace_store.keep({**settings.to_dict(), "strength": strength}, [trace_store.compact(r) for r in records],
                             engine.model_id)
    return upscale(output.images[0], RESULT_SIZE), status, trace


# ------------------------------------------------------------------------------ the schedule flaw

MAX_SNR_SEEDS = 2048
SNR_SIZE = 64  # analysis resolution (pixels): blocks of 8 leave an 8 x 8 layout


@check.gradio_errors
def terminal_snr(image, seeds=256, block=8):
    """x_T under SD 1.5's scaled-linear schedule and under zero terminal SNR (Lin et al. 2024), side by
    side, for ``image`` (pixel space, center-cropped to 64 px): the residual sqrt(alpha_bar_T) x0,
    the low-passed x_T, and over ``seeds`` noise draws its correlation with the low-passed image.

    Returns (gallery of (image, caption), markdown with the numbers)."""
    from pipelines.forward import terminal_snr_report

    from .images import tensor_to_pil

    image = check_image("image", image, 8)
    seeds = check.integer("seeds", seeds, 16, MAX_SNR_SEEDS)
    blocks = ["2", "4", "8", "16"]
    # a whole number or its text; never truncated (2.9 was 2), never a bool (true was '1'), never NaN
    if isinstance(block, bool) or (isinstance(block, float) and not (block == block and block.is_integer())):
        raise check.fail("block", block, f"one of {blocks} (pixels)")
    block = int(check.choice("block", str(int(block)) if isinstance(block, (int, float)) else block, blocks))
    r = terminal_snr_report(pil_to_tensor(image, SNR_SIZE), seeds=seeds, block=block)
    sd, zero = r["default"], r["zero_snr"]
    amp = 10

    def show(x, gain=1.0):
        return upscale(tensor_to_pil((x[0] * gain)), 192)

    x0 = pil_to_tensor(image, SNR_SIZE)
    gallery = [
        (show(x0), "x0"),
        (show(sd["residual"], amp), f"SD 1.5 residual sqrt(alpha_bar_T) x0, x{amp}"),
        (show(sd["x_T"]), "x_T, SD 1.5 schedule"),
        (show(zero["x_T"]), "x_T, zero terminal SNR"),
        (show(sd["x_T_low"], block / 2), f"x_T blurred {block}x{block}, SD 1.5 (x{block / 2:g})"),
        (show(zero["x_T_low"], block / 2), f"x_T blurred {block}x{block}, zero SNR (x{block / 2:g})"),
    ]

    def z(s):
        return max(abs(m) for m in s["mean_color_x_T"]) / s["mean_color_noise_std"]

    text = (
        f"**At t = T = 1000, SD 1.5's scaled-linear schedule (beta 0.00085..0.012) keeps "
        f"alpha_bar_T = {sd['alpha_bar_T']:.5f}: x_T = {sd['sqrt_alpha_bar_T']:.4f} x0 + "
        f"{(1 - sd['alpha_bar_T']) ** 0.5:.4f} eps, SNR_T = {sd['snr_T']:.4g}.** Zero terminal SNR "
        f"(Lin et al. 2024, Alg. 1) rescales sqrt(alpha_bar) to end at 0: x_T = eps.\n\n"
        f"| over {seeds} noise seeds | SD 1.5 | zero terminal SNR |\n|---|---|---|\n"
        f"| correlation of {block}x{block}-blurred x_T with blurred x0 | {sd['corr_low_mean']:.3f} "
        f"± {sd['corr_low_std']:.3f} | {zero['corr_low_mean']:.3f} ± {zero['corr_low_std']:.3f} |\n"
        f"| mean colour of x_T (R, G, B); x0's is ({', '.join(f'{m:.2f}' for m in sd['mean_color_x0'])}) | "
        f"({', '.join(f'{m:.3f}' for m in sd['mean_color_x_T'])}) | "
        f"({', '.join(f'{m:.3f}' for m in zero['mean_color_x_T'])}) |\n"
        f"| largest channel mean / the noise's own spread ({sd['mean_color_noise_std']:.4f}) | "
        f"{z(sd):.1f} | {z(zero):.1f} |\n\n"
        "The residual is faint per pixel but not at low frequency: blurring averages the noise away "
        f"(its std drops {block}x) while the image's layout and mean colour stay. A model trained on this "
        "schedule learns that x_T still carries the image's mean; at sampling it starts from pure noise, "
        "whose mean is ~0, so its samples follow the noise's mean (mid-grey brightness, no very dark or "
        "bright images). Trained with zero terminal SNR (and v-prediction, as the embedded model is), "
        "x_T carries nothing of x0 and the model has to make the mean itself.\n\n"
        "**Measured on the embedded model** (BENCHMARKS.md \"The schedule flaw: samples and the initial noise's "
        "mean\"; 32 seeds, DDIM 25 steps): shifting every element of the starting noise by delta moves step 1's "
        "predicted x0 by only 0.018 x delta (unconditional), where SD 1.5's schedule implies 0.132 x delta for "
        "shapes-world latents: at t = T the model takes the mean from what it learned, not from x_T. The final "
        "sample still follows the noise's mean (latent mean slope 0.67; brightness 0.51 at delta = -1 against "
        "0.88 at 0): DDIM's deterministic update carries the shift into the next steps, where the SNR is no "
        "longer zero."
    )
    return gallery, text
