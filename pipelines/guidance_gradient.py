"""Gradient guidance: a score term s * grad_{x_t} log p(y | x_t) added to the model's prediction.

Two guides give that gradient (the ``classifier`` and ``classifier+cfg`` methods of guidance.py):

* a trained **noise-aware classifier** (pipelines/classifier.py; Dhariwal & Nichol 2021, "Diffusion
  Models Beat GANs on Image Synthesis", Sec. 4): g = grad_{x_t} sum_a log p(y_a | x_t, t) over the
  attributes the prompt names;
* **CLIP** on the predicted x0, for models without a classifier (SD 1.5 on the Space): the
  CLIP-guided diffusion family -- Crowson's CLIP-guided diffusion (2021) and diffusers' community
  ``clip_guided_stable_diffusion``; Nichol et al. 2022, "GLIDE", Sec. 3.2 (CLIP guidance, there
  with a noised CLIP); and the semantic-guidance line of work that steers a pretrained model with
  an external image-text score. Here CLIP is the stock (noise-free) one, so it reads the denoised
  estimate:

      x0_hat(x_t) = the model's own prediction of x0 (one UNet call, with gradient)
      image       = VAE.decode(x0_hat / scaling_factor)
      score       = cos(E_img(preprocess(image)), E_txt(prompt))        (both CLIP projections)
      g           = grad_{x_t} score                                    (backward through CLIP, VAE, UNet)

  The cosine stands in for log p(y | x_t) (CLIP's logits are a scaled cosine), so the same
  score-to-epsilon conversion applies (``classifier_guided_eps``, ``output_shift_from_eps``).
  The preprocessing is CLIPImageProcessor's (resize the shortest side, centre crop, normalize
  with CLIP's mean/std) done in torch, so it is differentiable.

Which guide a pipeline uses: its trained classifier when it has one (``pipe.classifier``), else
its CLIP guide (``pipe.clip_guide``, a ``ClipGuide``); with neither the method is refused, naming
what is missing. ``GradientGuide`` holds one generation's choice and targets.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .prediction import predicted_x0
from .schedulers import EvalPoint

CLIP_GUIDANCE_ENV = "DIFFUSION_LAB_CLIP_GUIDANCE_MODEL"  # the app's --clip-guidance-model
DEFAULT_SPACE_CLIP_MODEL = "openai/clip-vit-base-patch32"  # CLIP guide for Hub models on CUDA
# CLIP's term is off at alpha_bar <= this (sigma >= ~31.6; SD 1.x's largest sigma is 14.6, alpha_bar 0.0047).
# There x_t carries almost nothing of the image, so the exact term grad log p(y | x_t) is ~0 (p(y | x_t) ~ p(y));
# a noise-aware classifier learns that, but CLIP on x0_hat does not (the UNet's Jacobian does not vanish), and
# the conversion to the model's output multiplies it by 1 / sqrt(alpha_bar) (4096 at the 2^-24 that diffusers'
# sigma samplers put at zero terminal SNR): measured on the tiny test model, Euler and DPM++ then saturate
# the image whatever the scale.
CLIP_MIN_ALPHA_BAR = 1e-3


# --------------------------------------------------------------------------- score -> prediction


def classifier_guided_eps(eps: torch.Tensor, grad: torch.Tensor, scale: float, alpha_bar: float) -> torch.Tensor:
    """Classifier guidance (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image
    Synthesis", Sec. 4.2, Alg. 2), in epsilon terms.

    Derivation. For the VP latent x_t = a x0 + b eps (a = sqrt(alpha_bar), b = sqrt(1 - alpha_bar)),
    the score of the noised data is grad log p(x_t) = -E[eps | x_t] / b, so a noise prediction is a
    scaled score: eps(x_t) = -b grad log p(x_t). Bayes gives the conditional score
        grad log p(x_t | y) = grad log p(x_t) + grad log p(y | x_t),
    and weighting the classifier term by s (s = 1: the exact posterior; s > 1: sharper):
        eps_hat = -b (grad log p(x_t) + s g) = eps - s b g,      g = grad_{x_t} log p(y | x_t).
    ``grad`` is g taken with respect to the VP latent the UNet sees. Sigma-space samplers
    (x_s = x_t / a, sigma = b / a) need no other formula: grad_{x_s} = a g and their score is
    -eps / sigma, so eps_hat = eps - s sigma (a g) = eps - s b g again. See
    ``output_shift_from_eps`` for v-prediction.
    """
    return eps - scale * (1.0 - alpha_bar) ** 0.5 * grad


def output_shift_from_eps(delta_eps: torch.Tensor, alpha_bar: float, prediction_type: str) -> torch.Tensor:
    """The change of the model's native output that changes its implied epsilon by ``delta_eps``
    at a fixed x_t (conventions of pipelines/prediction.py, a = sqrt(alpha_bar), b = sqrt(1 - a^2)):

        epsilon:       d_out = d_eps
        v_prediction:  eps = a v + b x_t            =>  d_v  = d_eps / a
        sample (x0):   x0 = (x_t - b eps) / a       =>  d_x0 = -b d_eps / a

    Undefined at zero SNR (a = 0), where the guidance is zero anyway: x_T is independent of y,
    so p(y | x_T) = p(y) and its gradient vanishes; callers skip that step.
    """
    if prediction_type == "epsilon":
        return delta_eps
    a, b = alpha_bar**0.5, (1.0 - alpha_bar) ** 0.5
    if prediction_type == "v_prediction":
        return delta_eps / a
    if prediction_type == "sample":
        return -b * delta_eps / a
    raise ValueError(f"prediction_type={prediction_type!r} is not supported by classifier guidance")


# --------------------------------------------------------------------------- the classifier's gradient


def classifier_gradient(classifier, x_t: torch.Tensor, t, targets: torch.Tensor):
    """g = grad_{x_t} sum_a log p(y_a | x_t, t) over the named attributes (one backward pass through
    the classifier only), with log p(y | x_t) per sample and the logits. Samples are independent
    (GroupNorm, no batch statistics), so the gradient of the batch sum is each sample's own."""
    from .classifier import target_log_prob

    param = next(classifier.parameters())
    t_batch = torch.as_tensor(t, dtype=torch.float32, device=param.device).reshape(-1).expand(x_t.shape[0])
    with torch.enable_grad():
        x = x_t.detach().to(device=param.device, dtype=param.dtype).requires_grad_(True)
        logits = classifier(x, t_batch)
        log_prob = target_log_prob(logits, targets.to(param.device))
        (grad,) = torch.autograd.grad(log_prob.sum(), x)
    return grad.to(dtype=x_t.dtype, device=x_t.device), log_prob.detach(), {k: v.detach() for k, v in logits.items()}


# --------------------------------------------------------------------------- CLIP


class ClipGuide:
    """A CLIP image tower and text tower with their projections (transformers'
    ``CLIPVisionModelWithProjection`` / ``CLIPTextModelWithProjection``), the tokenizer, and the
    image preprocessing as differentiable torch ops. Frozen (eval, no parameter gradients).

    SD 1.x's own text encoder is a ``CLIPTextModel`` without the projection head (its checkpoint
    has no ``text_projection``), so the prompt is embedded by this guide's own text tower, in the
    same space as its image tower.
    """

    def __init__(self, vision_model, text_model, tokenizer, image_size: int, image_mean, image_std,
                 model_id: str = "in-memory"):
        if vision_model.config.projection_dim != text_model.config.projection_dim:
            raise ValueError(f"CLIP guide {model_id!r}: image projection_dim={vision_model.config.projection_dim} "
                             f"and text projection_dim={text_model.config.projection_dim} differ")
        self.vision = vision_model.eval().requires_grad_(False)
        self.text = text_model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.mean = torch.tensor(image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(image_std, dtype=torch.float32).view(1, 3, 1, 1)
        self.model_id = model_id

    @classmethod
    def from_pretrained(cls, model_id: str, device="cpu", dtype=torch.float32) -> "ClipGuide":
        """Both towers, the tokenizer and the preprocessing config from one CLIP checkpoint
        (a Hub id such as openai/clip-vit-base-patch32, or a local folder)."""
        from transformers import (CLIPImageProcessor, CLIPModel, CLIPTextModelWithProjection, CLIPTokenizer,
                                  CLIPVisionModelWithProjection)

        # published CLIP checkpoints are CLIPModel folders: load once, and give each tower its projection
        # (loading each *WithProjection class from it reports the other tower's weights as unexpected)
        clip = CLIPModel.from_pretrained(model_id, dtype=dtype)
        towers = []
        for cls_, config, body, projection in (
                (CLIPVisionModelWithProjection, clip.config.vision_config, "vision_model", "visual_projection"),
                (CLIPTextModelWithProjection, clip.config.text_config, "text_model", "text_projection")):
            config.projection_dim = clip.config.projection_dim
            with torch.device("meta"):  # no random init: every parameter is replaced just below
                tower = cls_(config)
            setattr(tower, body, getattr(clip, body))
            setattr(tower, projection, getattr(clip, projection))
            towers.append(tower.to(device=device, dtype=dtype))
        vision, text = towers
        processor = CLIPImageProcessor.from_pretrained(model_id)
        crop = processor.crop_size  # a dict or transformers' SizeDict, {"height": .., "width": ..}
        size = crop["height"] if hasattr(crop, "__getitem__") else int(crop)
        return cls(vision, text, CLIPTokenizer.from_pretrained(model_id), size, processor.image_mean,
                   processor.image_std, model_id=model_id)

    @property
    def device(self) -> torch.device:
        return next(self.vision.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vision.parameters()).dtype

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """CLIPImageProcessor in torch: images (B, 3, H, W) in [-1, 1] (a VAE decode) -> [0, 1]
        (clamped, as the pipeline shows them), shortest side resized to ``image_size`` (bicubic,
        antialiased), centre crop, (x - mean) / std. Differentiable in ``images``."""
        x = (images.float() / 2 + 0.5).clamp(0, 1)
        h, w = x.shape[-2:]
        size = self.image_size
        # transformers' get_resize_output_image_size: the long side is int(size * long / short)
        new_h, new_w = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
        if (new_h, new_w) != (h, w):
            x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        x = x[..., top:top + size, left:left + size]
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def text_embeds(self, prompts: list[str]) -> torch.Tensor:
        """Unit-norm projected text embeddings (B, projection_dim); no gradient."""
        tokens = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        with torch.no_grad():
            out = self.text(input_ids=tokens.input_ids.to(self.device)).text_embeds
        return F.normalize(out.float(), dim=-1)

    def image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm projected image embeddings (B, projection_dim), differentiable in ``images``."""
        pixels = self.preprocess(images).to(device=self.device, dtype=self.dtype)
        return F.normalize(self.vision(pixel_values=pixels).image_embeds.float(), dim=-1)

    def similarity(self, images: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """cos(E_img(image), E_txt(prompt)) per sample, (B,)."""
        return (self.image_embeds(images) * text_embeds.to(self.device)).sum(dim=-1)


def clip_gradient(guide: ClipGuide, decode, x0_of, x_t: torch.Tensor, text_embeds: torch.Tensor):
    """g = grad_{x_t} cos(E_img(decode(x0_of(x_t))), E_txt) (one backward pass through CLIP, the
    VAE decoder and the denoiser ``x0_of``), with the cosine per sample. Samples are independent
    (no batch statistics anywhere), so the gradient of the batch sum is each sample's own."""
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        similarity = guide.similarity(decode(x0_of(x)), text_embeds)
        (grad,) = torch.autograd.grad(similarity.sum(), x)
    return grad.to(dtype=x_t.dtype), similarity.detach()


def vae_decoder(vae):
    """Latents (times the scaling factor, as the UNet sees them) -> images in [-1, 1]."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0

    def decode(latents: torch.Tensor) -> torch.Tensor:
        z = latents / vae.config.scaling_factor + shift
        return vae.decode(z.to(vae.dtype), return_dict=False)[0]

    return decode


# --------------------------------------------------------------------------- one generation's guide


class GradientGuide:
    """The guide one generation uses for the classifier methods, and its targets.

    ``kind`` "classifier": ``targets`` (B, len(HEADS)) class indices from the prompt's words;
    ``kind`` "clip": ``text_embeds`` (B, D) from the prompt. See the module docstring.
    """

    def __init__(self, method: str, classifier, clip_guide, prompt, num_images_per_prompt: int, device, vae=None):
        from .classifier import parse_prompt, target_indices

        self.method = method
        self.min_alpha_bar = 0.0  # the term is applied where alpha_bar > this (CLIP: CLIP_MIN_ALPHA_BAR)
        if classifier is None and clip_guide is None:
            raise ValueError(
                f"guidance method {method!r} needs a noise-aware classifier or a CLIP guide and this pipeline has "
                "neither (pipe.classifier is None, pipe.clip_guide is None). The embedded tiny-shapes model ships a "
                "classifier in classifier/ (pipelines.classifier.load_classifier); for other models configure a CLIP "
                f"model: app flag --clip-guidance-model ID (env {CLIP_GUIDANCE_ENV}), e.g. "
                f"{DEFAULT_SPACE_CLIP_MODEL}, or pipe.clip_guide = ClipGuide.from_pretrained(ID); or use method 'cfg'")
        self.kind = "classifier" if classifier is not None else "clip"
        if prompt is None:
            raise ValueError(f"guidance method {method!r} reads its target from the prompt text; "
                             "prompt_embeds alone are not enough: pass prompt")
        texts = [prompt] if isinstance(prompt, str) else list(prompt)
        if self.kind == "classifier":
            rows = []
            for text in texts:
                named = parse_prompt(text)
                if not named:
                    raise ValueError(f"prompt={text!r} names no attribute the classifier knows; guidance method "
                                     f"{method!r} needs at least one shape, color, size or position word")
                rows.extend([target_indices(named)] * num_images_per_prompt)
            self.classifier = classifier.to(device)
            self.targets = torch.tensor(rows, dtype=torch.long, device=device)
        else:
            for text in texts:
                if not text.strip():
                    raise ValueError(f"prompt={text!r} is empty; guidance method {method!r} with CLIP "
                                     f"({clip_guide.model_id}) pulls the image toward the prompt's CLIP text "
                                     "embedding: pass a prompt")
            if vae is None:
                raise ValueError(f"guidance method {method!r} with CLIP needs the pipeline's VAE to decode x0")
            self.clip, self.decode, self.min_alpha_bar = clip_guide, vae_decoder(vae), CLIP_MIN_ALPHA_BAR
            embeds = clip_guide.text_embeds(texts)
            self.text_embeds = embeds.repeat_interleave(num_images_per_prompt, dim=0)

    def gradient(self, x_t: torch.Tensor, t, alpha_bar: float, prediction_type: str, denoise, need_grad: bool):
        """(g or None, readout). ``denoise(x_vp) -> model output`` (one UNet call) is used by CLIP
        only. ``need_grad`` False (s = 0, zero SNR): CLIP reads the cosine without a backward pass."""
        if self.kind == "classifier":
            from .classifier import target_probs

            grad, log_prob, logits = classifier_gradient(self.classifier, x_t, t, self.targets)
            return grad, {"log_prob": log_prob.cpu().tolist(), "probs": target_probs(logits, self.targets),
                          "grad": grad.detach().to("cpu", torch.float32)}
        point = EvalPoint(timestep=float(t), alpha_bar=alpha_bar, sigma=None, sigma_space=False)

        def x0_of(x):
            return predicted_x0(denoise(x), x, point, prediction_type)

        if need_grad:
            grad, similarity = clip_gradient(self.clip, self.decode, x0_of, x_t, self.text_embeds)
            readout_grad = grad.detach().to("cpu", torch.float32)
        else:
            with torch.no_grad():
                similarity = self.clip.similarity(self.decode(x0_of(x_t)), self.text_embeds)
            grad, readout_grad = None, torch.zeros(x_t.shape, dtype=torch.float32)
        return grad, {"clip_similarity": similarity.cpu().tolist(), "grad": readout_grad, "clip_model": self.clip.model_id}
