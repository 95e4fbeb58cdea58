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

# How the tabs relate: one denoising loop, each tab a view of one part of it (as Diffusion Explainer's
# pipeline diagram); shown in an accordion under the header.
OVERVIEW = """
```
 prompt --> text encoder --> UNet x2 (cond, uncond) --> guidance --> scheduler step --> x_t-1 ... --> VAE --> image
  |                            ^  LoRA mixer:               ^  CFG lab:       ^  Scheduler lab:              |
  |                            |  adapters change           |  how w mixes    |  which t, how many calls     |
  Generate: runs the loop, records every step  ------------------------------------------------>  Timestep explorer:
                                                                                                  x_t, x0, eps per step
```
1. **Generate** runs the loop and keeps every step of the last run (x_t, the predicted x0, both noise predictions).
2. **CFG lab** looks at one step of that run: what the unconditional and conditional predictions are, and what the
   guidance scale w does with their difference; then sweeps w and compares guidance methods.
3. **Scheduler lab** compares which timesteps each scheduler visits and how many UNet calls it makes.
4. **Timestep explorer** plays the last run step by step, and shows the forward process (adding noise) on any image.
5. **LoRA mixer** edits the blend of adapters every tab's generations use (the chips under the prompt show it).
"""

def scheduler_notes_markdown() -> str:
    """The registry's per-sampler notes as a Markdown list (then a paragraph break)."""
    from pipelines.schedulers import SCHEDULERS, ZERO_SNR_NOTE

    lines = [f"- **{name}**: {spec.note}" for name, spec in SCHEDULERS.items() if spec.note]
    return ("A name builds what diffusers' `Class.from_config(pipe.scheduler.config)` builds (settings the "
            "model leaves unset take the sampler's own default). Samplers: " + ZERO_SNR_NOTE + ".\n\n"
            + "\n".join(lines) + "\n\n")


# One line at the top of each lab: what it shows and where its input comes from.
LAB_INTROS = {
    "cfg": ("Classifier-free guidance evaluates the UNet twice per step (batched in one call), with and without your "
            "prompt, and extrapolates: "
            "eps = eps_u + w (eps_c - eps_u). Top: one step of your last Generate run (the three x0 guesses and where "
            "they differ); below: sweeps on the Generate tab's prompt, seed and steps."),
    "scheduler": ("A scheduler picks which of the 1000 training timesteps t the loop visits and how it steps between "
                  "them. The plot marks each scheduler's picks on the training schedule; the comparison runs them all "
                  "on the Generate tab's prompt and seed; the notes under the buttons say which samplers need "
                  "more steps here."),
    "explorer": ("Your last run, one recorded step at a time: drag the slider (the frames are sent once, so the "
                 "images follow the drag) or press Play. x_t is what the UNet sees, predicted x0 its guess of the "
                 "final image from there."),
    "forward": ("The forward process, x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps, on any image (an upload "
                "is centre-cropped to a square and resized to the model's size before noising). Why the pixel-space "
                "x_t looks like pure noise by t ~ 250 while the latent one still shows the shape: the same noise is "
                "added in both, but the VAE decoder turns each latent value into a whole patch of pixels and was "
                "trained to draw clean shapes, so it filters much of the noise; the pixel view shows it as it is."),
    "lora": ("A LoRA adds a low-rank update to the UNet and text encoder: W' = W + s (alpha/r) B A, with weight s. "
             "The adapters picked here are the blend every generation uses (its chips show under the prompt on the "
             "Generate tab); the grid compares no adapter, each alone and the blend on one seed."),
}

# info= text for the jargon on the controls
INFO = {
    "w": "w: 1 = the prompt alone; higher follows it harder (CFG lab).",
    "phi": "phi: rescales the guided prediction's std back toward the conditional one's (Lin et al. 2024), "
                        "against over-saturation at high w.",
    "beta": "beta: APG's running average of the guidance direction (negative values push away from the "
                    "previous steps' direction; Sadat et al. 2024).",
    "r": "r: the guidance update's norm is clipped to r.",
    "eta": "eta: how much of the update parallel to the conditional prediction is kept (0: only the orthogonal "
               "part, which adds detail without over-saturating).",
    "explore_step": "1 = the first (noisiest) step.",
    "explore_terms": "x_t: the noisy latent the UNet gets at this step; eps: its noise prediction; alpha_bar: the "
                     "signal's share of x_t's variance; sigma = sqrt((1 - alpha_bar) / alpha_bar), shown as "
                     "\"sigma = -\" for DDIM-type schedulers, which step in alpha_bar and have no sigma.",
    "noise_t": "Training timestep: 0 is the clean image, 999 (almost) pure noise.",
    "sigmas": "How the noise levels are spaced: default, Karras (denser near t = 0), exponential or beta.",
    "spacing": "How the chosen timesteps sit in 0..999: leading, trailing (starts at t = 999) or linspace.",
    "log_snr": "log-SNR = log(alpha_bar / (1 - alpha_bar)): signal-to-noise ratio of x_t, on a log scale.",
}

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
    and the mixer's example blend (lora_ui.example_spec) when the model has two presets."""
    from .lora_ui import example_spec

    examples = list(EMBEDDED_EXAMPLES if is_embedded else SD_EXAMPLES)
    blend = example_spec(presets)
    if blend:
        names = " + ".join(part.split(":")[0] for part in blend.split(", "))
        examples.append((f"LoRA blend: {names}", examples[0][1], examples[0][2], blend))
    return [e[0] for e in examples], [list(e[1:]) for e in examples]


def header(model_id: str, device: str, reason: str, previews: str = "") -> str:
    """At most three sentences of what to do, then the model, device and preview decoder."""
    model = f"**Model:** `{model_id}` on `{device}` ({reason})."
    if previews:
        model += f" **Previews:** {previews}."
    return f"# Diffusion Lab\n{FIRST_STEPS}\n\n<span class='lab-note'>{model}</span>"
