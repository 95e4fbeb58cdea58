"""Static text of the app: header, "how it works" with the formulas."""

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


def header(model_id: str, device: str, reason: str) -> str:
    return (f"# Diffusion Lab\nWatch a Stable Diffusion denoising loop step by step. "
            f"**Model:** `{model_id}` on `{device}` ({reason}).")
