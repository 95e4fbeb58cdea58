"""Outputs of the LoRA trainer: adapter files (diffusers and kohya formats), model card, Hub upload.

Every file lands in the output folder by `os.replace` from a temporary name in the same folder, so
a reader (or a crash) never sees half a file.
"""
from __future__ import annotations

import os
import shutil

import torch
from safetensors.torch import save_file

from train.redact import known_tokens, redact

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
KOHYA_WEIGHT_NAME = "pytorch_lora_weights_kohya.safetensors"
HUB_IGNORE_PATTERNS = ["checkpoint-*", "checkpoint-*/**", ".tmp-*", ".tmp-*/**", ".trash-*", ".trash-*/**", "data/**",
                       "partner_data/**"]


def peft_lora_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().float().cpu().contiguous() for k, v in get_peft_model_state_dict(module).items()}


def save_adapter(output_dir: str, unet, text_encoder=None, export_kohya: bool = False) -> list[str]:
    """Write pytorch_lora_weights.safetensors (stock `load_lora_weights` reads it, alpha included via
    the adapter metadata) and, optionally, a kohya-format copy. Returns the written paths."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya

    def inference_metadata(module) -> dict:
        # Dropout is training-only; diffusers' loader builds the LoRA layers from this metadata and
        # leaves them in train mode, so a nonzero value here would make inference random.
        return {**module.peft_config["default"].to_dict(), "lora_dropout": 0.0}

    unet_state = peft_lora_state(unet)
    te_state = peft_lora_state(text_encoder) if text_encoder is not None else None
    tmp_dir = os.path.join(output_dir, ".tmp-export")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    # UNet keys stay in peft format (lora_A / lora_B), which the stock loader reads as is.
    # convert_state_dict_to_diffusers would rename only attention layers to the old lora.down/up
    # names and leave resnet, proj and ff layers as lora_A/B: on loading, diffusers 0.42.1 then
    # keeps one naming and silently drops the other (measured: 56 of 117 layers lost).
    StableDiffusionPipeline.save_lora_weights(
        tmp_dir,
        unet_lora_layers=unet_state,
        text_encoder_lora_layers=convert_state_dict_to_diffusers(te_state) if te_state else None,
        unet_lora_adapter_metadata=inference_metadata(unet),
        text_encoder_lora_adapter_metadata=inference_metadata(text_encoder) if te_state else None,
    )
    written = [os.path.join(output_dir, LORA_WEIGHT_NAME)]
    os.replace(os.path.join(tmp_dir, LORA_WEIGHT_NAME), written[0])

    if export_kohya:
        prefixed = {f"unet.{k}": v for k, v in unet_state.items()}
        prefixed.update({f"text_encoder.{k}": v for k, v in (te_state or {}).items()})
        kohya = convert_state_dict_to_kohya(prefixed)
        # The converter writes alpha = rank; ours may differ (scale = alpha / rank).
        alpha = float(unet.peft_config["default"].lora_alpha)
        te_alpha = float(text_encoder.peft_config["default"].lora_alpha) if te_state else alpha
        for key in [k for k in kohya if k.endswith(".alpha")]:
            kohya[key] = torch.tensor(te_alpha if key.startswith("lora_te") else alpha)
        rank = unet.peft_config["default"].r
        tmp_file = os.path.join(tmp_dir, KOHYA_WEIGHT_NAME)
        save_file(kohya, tmp_file, metadata={"ss_network_module": "networks.lora", "ss_network_dim": str(rank),
                                             "ss_network_alpha": str(alpha)})
        written.append(os.path.join(output_dir, KOHYA_WEIGHT_NAME))
        os.replace(tmp_file, written[-1])
    shutil.rmtree(tmp_dir, ignore_errors=True)
    return written


_SETTINGS_SHOWN = ("rank", "lora_alpha", "lora_dropout", "init_lora_weights", "target_modules", "train_text_encoder",
                   "resolution", "train_batch_size", "gradient_accumulation_steps", "max_train_steps", "learning_rate",
                   "text_encoder_lr", "lr_scheduler", "lr_warmup_steps", "snr_gamma", "noise_offset",
                   "caption_dropout_prob", "prediction_type", "mixed_precision", "seed", "partner_lora", "partner_weight",
                   "partner_prob", "init_lora", "cfg_loss_scale", "cfg_loss_weight", "dial", "dial_min_weight",
                   "dial_full_prob", "dial_partner_equal_prob", "dial_anchor_lora", "dial_anchor_weight",
                   "dial_anchor_pairs", "dial_anchor_partner_loras", "latent_fit_steps", "latent_fit_lr",
                   "foreground_loss_weight")


def write_model_card(output_dir: str, config: dict, base_model: str, dataset: str, sample_images: list[str],
                     num_processes: int) -> str:
    """README.md with YAML front matter the Hub understands; `config` must already be free of secrets."""
    from huggingface_hub import ModelCard, ModelCardData

    trigger = config.get("trigger_word") or None
    card_data = ModelCardData(
        base_model=base_model,
        library_name="diffusers",
        license=config.get("license") or "creativeml-openrail-m",
        tags=["stable-diffusion", "text-to-image", "lora", "diffusers-training"],
        instance_prompt=trigger,
        widget=[{"text": config.get("validation_prompt") or "", "output": {"url": p}} for p in sample_images],
    )
    repo_name = os.path.basename(os.path.abspath(output_dir))
    rows = "\n".join(f"| `{k}` | `{config.get(k, '')}` |" for k in _SETTINGS_SHOWN if k in config)
    samples = "\n".join(f"![sample {i}]({p})" for i, p in enumerate(sample_images)) or "_No validation images were made._"
    trigger_text = (f"Use **{trigger}** in the prompt to trigger the style." if trigger
                    else "No trigger word was set.")
    partner_text = ""
    if config.get("partner_lora"):
        partner_text = (f"\n## Composes with\n\nTrained together with the frozen LoRA `{os.path.basename(config['partner_lora'])}` "
                        f"(weight {config.get('partner_weight', 1.0)}) on {float(config.get('partner_prob', 0.5)):.0%} of the "
                        "steps, on images of both styles together, so the two can be loaded at once "
                        "(`pipe.set_adapters([...], [1.0, ...])`). Samples whose file name ends in `-with-partner` "
                        "were made with both loaded.\n")
    body = f"""
# LoRA: {repo_name}

LoRA adapter weights for [`{base_model}`](https://huggingface.co/{base_model}), fine-tuned on `{dataset}`
with Diffusion Lab's `train/train_lora.py`.

## Trigger words

{trigger_text}
{partner_text}
## Samples

Prompt: `{config.get('validation_prompt') or ''}`

{samples}

## Use

```python
import torch
from diffusers import StableDiffusionPipeline

pipe = StableDiffusionPipeline.from_pretrained("{base_model}", torch_dtype=torch.float16).to("cuda")
pipe.load_lora_weights("path/or/repo-id", weight_name="{LORA_WEIGHT_NAME}")
image = pipe("{trigger or 'a prompt'}", num_inference_steps=25).images[0]
```

## Training settings

| setting | value |
|---|---|
{rows}
| processes | `{num_processes}` |
"""
    card = ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body}")
    path = os.path.join(output_dir, "README.md")
    tmp = path + ".tmp"
    card.save(tmp)
    os.replace(tmp, path)
    return path


class HubPushError(RuntimeError):
    pass


def push_output_folder(output_dir: str, repo_id: str, token: str | None, private: bool) -> str:
    """create_repo + upload_folder (checkpoints and rendered data excluded). Raises HubPushError with a
    message that never contains the token."""
    from huggingface_hub import constants, create_repo, upload_folder

    try:
        repo = create_repo(repo_id, exist_ok=True, token=token, private=private)
        upload_folder(repo_id=repo.repo_id, folder_path=output_dir, commit_message="End of training",
                      ignore_patterns=HUB_IGNORE_PATTERNS, token=token)
        return repo.repo_id
    except Exception as err:  # broad on purpose: any failure must keep local files and explain itself
        detail = redact(f"{type(err).__name__}: {err}", known_tokens(token))  # HF_TOKEN and the login too
        raise HubPushError(
            f"--push_to_hub failed for --hub_model_id={repo_id!r} at {constants.ENDPOINT} ({detail}). "
            f"Nothing local was removed: the adapter and model card are in {os.path.abspath(output_dir)}; "
            "upload them later with `hf upload`."
        ) from None
