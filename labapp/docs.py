"""Static text of the app: header (what to do first), example prompts, "how it works" with the formulas."""

HOW_IT_WORKS = r"""
### How it works

**Forward process.** Training noises an image (its VAE latent) $x_0$ to step $t$:
$$x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon,\qquad \epsilon\sim\mathcal N(0, I)$$
and the UNet learns to predict $\epsilon$ (or $v = \sqrt{\bar\alpha_t}\,\epsilon - \sqrt{1-\bar\alpha_t}\,x_0$).
Any prediction gives the denoised guess $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\hat\epsilon)/\sqrt{\bar\alpha_t}$: the **x0 preview**.

**Classifier-free guidance.** Each step runs the UNet with the empty (or negative) prompt and with your prompt, then extrapolates:
$$\hat\epsilon = \epsilon_u + w\,(\epsilon_c - \epsilon_u)$$
$w = 1$ is the conditional model alone; larger $w$ follows the prompt harder (the CFG lab plots $\lVert\epsilon_c-\epsilon_u\rVert$ per step).

**DDIM step** (deterministic, $\eta = 0$), from $t$ to the previous picked timestep $s$:
$$x_s = \sqrt{\bar\alpha_s}\,\hat x_0 + \sqrt{1-\bar\alpha_s}\,\hat\epsilon$$
**DDPM step** adds fresh noise: $x_s = \tilde\mu_t(x_t, \hat x_0) + \tilde\sigma_t z$. Schedulers differ in *which* $t$ they visit and how they
extrapolate between them (multistep, Karras sigmas, 2nd-order: 2 UNet calls per step).

**LoRA.** A low-rank update on a frozen weight: $W' = W + \frac{\alpha}{r} B A$ with $B\in\mathbb R^{d\times r}$, $A\in\mathbb R^{r\times k}$.
Blending adapters scales each update: $W' = W + \sum_i s_i \frac{\alpha_i}{r_i} B_i A_i$; per-block weights scale $s_i$ per UNet block
(down / mid / up), and a step range turns the adapter on only for part of the denoising.
"""

FIRST_STEPS = ("Type a prompt and press **Enter** (or **Generate**): the x_t and predicted-x0 previews show the image "
               "forming, step by step. Then open the **CFG lab**, **Scheduler lab**, **Timestep explorer** and "
               "**LoRA mixer** tabs: each explains one part of that loop on your last run, prompt and seed.")

# (label, prompt, guidance scale, LoRA blend) for gr.Examples: each row shows something on its own
EMBEDDED_EXAMPLES = [
    ("position words: red circle, top left", "a large red circle in the top left", 3.0, ""),
    ("position words: blue square, bottom right", "a small blue square in the bottom right", 3.0, ""),
    ("guidance 1: the conditional model alone", "a large green triangle in the center", 1.0, ""),
    ("guidance 15: extreme, over-saturated", "a large green triangle in the center", 15.0, ""),
]
SD_EXAMPLES = [
    ("position words", "a red apple on the left of a wooden table, a blue cup on the right", 7.5, ""),
    ("guidance 1.5: loose", "a lighthouse on a cliff at sunset, oil painting", 1.5, ""),
    ("guidance 20: extreme", "a lighthouse on a cliff at sunset, oil painting", 20.0, ""),
]


def example_rows(is_embedded: bool, presets: list) -> tuple[list[str], list[list]]:
    """(labels, rows of [prompt, guidance, lora]) for the model: position words, extreme guidance,
    and a two-preset LoRA blend when the model has presets."""
    examples = list(EMBEDDED_EXAMPLES if is_embedded else SD_EXAMPLES)
    if len(presets) >= 2:
        first, second = presets[0], presets[1]
        from .lora_ui import EXAMPLE_SECOND_WEIGHT

        blend = f"{first.id}:{first.default_weight:g}, {second.id}:{EXAMPLE_SECOND_WEIGHT:g}"
        examples.append((f"LoRA blend: {first.id} + {second.id}", examples[0][1], examples[0][2], blend))
    return [e[0] for e in examples], [list(e[1:]) for e in examples]


def header(model_id: str, device: str, reason: str, previews: str = "") -> str:
    """At most three sentences of what to do, then the model, device and preview decoder."""
    model = f"**Model:** `{model_id}` on `{device}` ({reason})."
    if previews:
        model += f" **Previews:** {previews}."
    return f"# Diffusion Lab\n{FIRST_STEPS}\n\n<span class='lab-note'>{model}</span>"
