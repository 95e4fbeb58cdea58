"""Command line of train/train_lora.py.

Flag names follow diffusers' `examples/text_to_image/train_text_to_image_lora.py` wherever the
option means the same thing, so people who know that script know this one. Differences:
`--validation_steps` replaces their `--validation_epochs` (epochs are meaningless on a 40-image
LoRA set); the LoRA shape (`--lora_alpha`, `--lora_dropout`, `--init_lora_weights`,
`--target_modules`), per-group learning rates, the `warmup_cosine` schedule, caption dropout and
the shapes-world data source are additions.

`validate_args` raises `ValueError`s that name the flag, the bad value and what is allowed.
"""
from __future__ import annotations

import argparse
import importlib.util
import os

# diffusers.optimization.get_scheduler names, plus ours (LinearLR warmup -> CosineAnnealingLR floor).
LR_SCHEDULERS = (
    "warmup_cosine",
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
)
SHAPES_STYLES = ("outline", "night", "pastel")
UNET_TARGET_MODULES = "to_q,to_k,to_v,to_out.0"
TEXT_ENCODER_TARGET_MODULES = "q_proj,k_proj,v_proj,out_proj"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train_lora.py",
        description="Fine-tune LoRA adapters on a Stable Diffusion 1.x/2.x model (diffusers format).",
    )
    # Model
    p.add_argument("--pretrained_model_name_or_path", type=str, required=True,
                   help="Hub id or local folder of a diffusers-format SD 1.x/2.x model.")
    p.add_argument("--revision", type=str, default=None)
    p.add_argument("--variant", type=str, default=None, help="Weight file variant, e.g. fp16.")
    p.add_argument("--cache_dir", type=str, default=None)
    p.add_argument("--prediction_type", type=str, default=None, choices=["epsilon", "v_prediction"],
                   help="Override the scheduler config's prediction type (training target).")
    # Data
    p.add_argument("--dataset_name", type=str, default=None, help="Hub dataset (needs the `datasets` package).")
    p.add_argument("--dataset_config_name", type=str, default=None)
    p.add_argument("--train_data_dir", type=str, default=None,
                   help="Image folder with metadata.jsonl lines {\"file_name\": ..., \"text\": ...}.")
    p.add_argument("--shapes_style", type=str, default=None, choices=SHAPES_STYLES,
                   help="Render a shapes-world data set of this style into <output_dir>/data and train on it.")
    p.add_argument("--shapes_num_samples", type=int, default=None, help="Images to render for --shapes_style (default 200).")
    # Partner LoRA: train this adapter to compose with an existing one
    p.add_argument("--partner_lora", type=str, default=None,
                   help="A trained UNet LoRA (diffusers-format .safetensors file, or a folder holding "
                        "pytorch_lora_weights.safetensors) loaded frozen next to the adapter being trained. On a "
                        "--partner_prob share of the steps it is switched on and the batch comes from the partner data "
                        "(images of both styles together), so the new adapter learns to work alone and combined.")
    p.add_argument("--partner_weight", type=float, default=1.0, help="Weight of the partner LoRA when it is on.")
    p.add_argument("--partner_prob", type=float, default=0.5,
                   help="Share of the steps trained with the partner on, on partner data (default 0.5).")
    p.add_argument("--partner_train_data_dir", type=str, default=None,
                   help="Image folder (metadata.jsonl) of the combined style, for --partner_lora.")
    p.add_argument("--partner_shapes_style", type=str, default=None,
                   help="The partner's shapes-world style: renders <--shapes_style>+<this> images into "
                        "<output_dir>/partner_data as the partner data. With --dial, several partners may be "
                        "given, comma-separated in both --partner_lora and this flag, in the same order.")
    # Dial: adapters that behave at partial weights and in pairs
    p.add_argument("--dial", action="store_true",
                   help="Train the adapter at a weight drawn every step in [--dial_min_weight, 1] (its peft "
                        "scaling) on shapes-world images of the style drawn at that strength (needs --shapes_style); "
                        "partners are switched on at drawn weights too, on images of both styles at those "
                        "strengths. See train/README.md.")
    p.add_argument("--dial_min_weight", type=float, default=0.05, help="Lowest weight --dial draws (default 0.05).")
    p.add_argument("--dial_full_prob", type=float, default=0.2,
                   help="Share of the --dial steps at weight exactly 1, the style as before (default 0.2).")
    p.add_argument("--dial_partner_equal_prob", type=float, default=0.5,
                   help="Share of the --dial partner steps where the partner's weight equals the adapter's "
                        "(default 0.5; else it is drawn on its own).")
    p.add_argument("--dial_anchor_lora", type=str, default=None,
                   help="With --dial: a frozen copy of an adapter whose prediction the trained one is held to on "
                        "the steps at weight 1 (usually the adapter it starts from: what weight 1 already does "
                        "well stays while the dial trains the middle weights). See train/README.md.")
    p.add_argument("--dial_anchor_weight", type=float, default=1.0,
                   help="Weight of the anchor term (SNR-weighted MSE to the anchor's prediction; default 1).")
    p.add_argument("--dial_anchor_pairs", type=str, default="",
                   help="Comma-separated partner styles whose steps with both at weight 1 are anchored too "
                        "(default none: only the adapter alone at 1).")
    p.add_argument("--dial_anchor_partner_loras", type=str, default="",
                   help="One file per --dial_anchor_pairs style, in the same order: the partner the anchor pair is "
                        "made of (default: the --partner_lora itself), e.g. the shipped partner when the partner "
                        "was itself retrained.")
    p.add_argument("--latent_fit_steps", type=int, default=0,
                   help="Fit each training latent to its image through the frozen decoder for this many Adam steps "
                        "before noising (default 0: the encoder's latent), so the adapter learns latents the decoder "
                        "draws right where the encoder's map is poor (e.g. part-way and paired styles). With --dial, "
                        "full-strength steps of the style alone are not fitted. Costs a decoder pass and its "
                        "backward per step and image. See train/README.md.")
    p.add_argument("--latent_fit_lr", type=float, default=0.1, help="Adam learning rate of --latent_fit_steps (default 0.1).")
    p.add_argument("--foreground_loss_weight", type=float, default=0.0,
                   help="Weight the denoising loss towards the subject: latent pixels over image pixels that differ "
                        "from the image's border color count 1 + this much more (normalised per image; default 0: "
                        "uniform). For subjects on plain backgrounds, where a color error on the subject is a few "
                        "latent pixels against the whole background.")
    p.add_argument("--image_column", type=str, default="image")
    p.add_argument("--caption_column", type=str, default="text")
    p.add_argument("--max_train_samples", type=int, default=None)
    p.add_argument("--resolution", type=int, default=None,
                   help="Training size in pixels; default: the model's native size (unet sample_size * vae factor).")
    p.add_argument("--center_crop", action="store_true", help="Center crop (default: random crop).")
    p.add_argument("--random_flip", action="store_true")
    p.add_argument("--caption_dropout_prob", type=float, default=0.0,
                   help="Probability of replacing a caption by the empty caption (keeps CFG's unconditional branch).")
    p.add_argument("--dataloader_num_workers", type=int, default=0)
    # LoRA
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--lora_alpha", type=float, default=None, help="LoRA alpha (scale = alpha / rank); default: rank.")
    p.add_argument("--lora_dropout", type=float, default=0.0)
    p.add_argument("--init_lora_weights", type=str, default="gaussian", choices=["gaussian", "default"],
                   help="gaussian: A ~ N(0, 1/rank); default: peft's Kaiming-uniform A. B starts at zero in both.")
    p.add_argument("--init_lora", type=str, default=None,
                   help="Start the adapter from this LoRA (.safetensors file, or a folder with "
                        "pytorch_lora_weights.safetensors) instead of a fresh init; same --rank, --lora_alpha and "
                        "--target_modules as it was trained with. UNet LoRAs only.")
    p.add_argument("--target_modules", type=str, default=UNET_TARGET_MODULES, help="Comma-separated UNet module names.")
    p.add_argument("--train_text_encoder", action="store_true")
    p.add_argument("--text_encoder_target_modules", type=str, default=TEXT_ENCODER_TARGET_MODULES)
    # Optimisation
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--train_batch_size", type=int, default=16, help="Per device.")
    p.add_argument("--num_train_epochs", type=int, default=100)
    p.add_argument("--max_train_steps", type=int, default=None, help="Overrides --num_train_epochs.")
    p.add_argument("--gradient_accumulation_steps", type=int, default=1)
    p.add_argument("--gradient_checkpointing", action="store_true")
    p.add_argument("--learning_rate", type=float, default=1e-4, help="UNet LoRA learning rate.")
    p.add_argument("--text_encoder_lr", type=float, default=None, help="Text-encoder LoRA learning rate (default: --learning_rate).")
    p.add_argument("--scale_lr", action="store_true",
                   help="Multiply learning rates by accumulation steps * batch size * processes.")
    p.add_argument("--lr_scheduler", type=str, default="constant", choices=LR_SCHEDULERS)
    p.add_argument("--lr_warmup_steps", type=int, default=500)
    p.add_argument("--lr_warmup_start_factor", type=float, default=0.01,
                   help="warmup_cosine: LR factor at step 0, rising linearly to 1 over --lr_warmup_steps.")
    p.add_argument("--lr_min", type=float, default=0.0,
                   help="warmup_cosine: absolute LR floor the cosine decays to (shared by all groups).")
    p.add_argument("--lr_num_cycles", type=int, default=1, help="cosine_with_restarts: number of hard restarts.")
    p.add_argument("--lr_power", type=float, default=1.0, help="polynomial: power factor.")
    p.add_argument("--snr_gamma", type=float, default=None, help="Min-SNR-gamma loss weighting (5.0 recommended).")
    p.add_argument("--noise_offset", type=float, default=0.0)
    p.add_argument("--cfg_loss_scale", type=float, default=None,
                   help="Also hold the classifier-free-guided prediction at this scale to the target (a second "
                        "UNet pass with the empty caption per step). For style LoRAs whose effect guidance bends.")
    p.add_argument("--cfg_loss_weight", type=float, default=1.0, help="Weight of the --cfg_loss_scale term.")
    p.add_argument("--use_8bit_adam", action="store_true", help="bitsandbytes AdamW8bit.")
    p.add_argument("--adam_beta1", type=float, default=0.9)
    p.add_argument("--adam_beta2", type=float, default=0.999)
    p.add_argument("--adam_weight_decay", type=float, default=1e-2, help="UNet LoRA weight decay.")
    p.add_argument("--text_encoder_weight_decay", type=float, default=None, help="Default: --adam_weight_decay.")
    p.add_argument("--adam_epsilon", type=float, default=1e-08)
    p.add_argument("--max_grad_norm", type=float, default=1.0)
    p.add_argument("--allow_tf32", action="store_true")
    p.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"],
                   help="Default: the accelerate config's value.")
    # Checkpoints, validation, logging
    p.add_argument("--output_dir", type=str, default="sd-lora-model")
    p.add_argument("--checkpointing_steps", type=int, default=500)
    p.add_argument("--checkpoints_total_limit", type=int, default=None)
    p.add_argument("--resume_from_checkpoint", type=str, default=None, help='"latest" or a checkpoint folder.')
    p.add_argument("--validation_prompt", type=str, default=None)
    p.add_argument("--num_validation_images", type=int, default=4)
    p.add_argument("--validation_steps", type=int, default=100,
                   help="Validate every N optimizer steps (diffusers' script uses --validation_epochs).")
    p.add_argument("--validation_inference_steps", type=int, default=25)
    p.add_argument("--logging_dir", type=str, default="logs", help="Relative to --output_dir.")
    p.add_argument("--report_to", type=str, default="tensorboard",
                   help='"tensorboard", "wandb", a comma list, "all" or "none".')
    p.add_argument("--local_rank", type=int, default=-1, help="Set by torch.distributed.launch; read from LOCAL_RANK too.")
    # Export and Hub
    p.add_argument("--export_kohya", action="store_true", help="Also write pytorch_lora_weights_kohya.safetensors.")
    p.add_argument("--trigger_word", type=str, default=None, help="Instance/trigger word(s) for the model card.")
    p.add_argument("--license", type=str, default="creativeml-openrail-m")
    p.add_argument("--push_to_hub", action="store_true")
    p.add_argument("--hub_token", type=str, default=None, help="Default: HF_TOKEN or the saved login.")
    p.add_argument("--hub_model_id", type=str, default=None, help="Default: the --output_dir folder name.")
    p.add_argument("--hub_private", action="store_true")
    return p


def _fail(flag: str, value, allowed: str) -> None:
    raise ValueError(f"{flag}={value!r} is invalid: {allowed}")


def validate_args(args: argparse.Namespace) -> argparse.Namespace:
    """Check flag combinations argparse cannot; fill derived defaults. Raises ValueError naming the flag."""
    env_local_rank = int(os.environ.get("LOCAL_RANK", -1))
    if env_local_rank != -1 and env_local_rank != args.local_rank:
        args.local_rank = env_local_rank

    sources = [f for f, v in (("--dataset_name", args.dataset_name), ("--train_data_dir", args.train_data_dir),
                              ("--shapes_style", args.shapes_style)) if v]
    if len(sources) != 1:
        raise ValueError(f"give exactly one data source of --dataset_name, --train_data_dir, --shapes_style (got {sources or 'none'})")
    if args.train_data_dir is not None:
        if not os.path.isdir(args.train_data_dir):
            _fail("--train_data_dir", args.train_data_dir, "not a folder")
        if not os.path.isfile(os.path.join(args.train_data_dir, "metadata.jsonl")):
            _fail("--train_data_dir", args.train_data_dir, "needs a metadata.jsonl ({\"file_name\": ..., \"text\": ...} per line)")
    if args.shapes_num_samples is not None:
        if args.shapes_style is None:
            raise ValueError("--shapes_num_samples needs --shapes_style")
        if args.shapes_num_samples < 1:
            _fail("--shapes_num_samples", args.shapes_num_samples, "must be >= 1")
    args.partner_loras, args.partner_shapes_styles = [], []
    _validate_partner(args)
    if args.dial:
        if args.shapes_style is None:
            raise ValueError("--dial needs --shapes_style: it renders the style at each drawn weight")
        if not 0.0 < args.dial_min_weight <= 1.0:
            _fail("--dial_min_weight", args.dial_min_weight, "must be in (0, 1]")
        for flag, value in (("--dial_full_prob", args.dial_full_prob),
                            ("--dial_partner_equal_prob", args.dial_partner_equal_prob)):
            if not 0.0 <= value <= 1.0:
                _fail(flag, value, "must be in [0, 1]")
    _validate_anchor(args)
    if args.init_lora is not None:
        args.init_lora = _lora_file("--init_lora", args.init_lora)
    if args.cfg_loss_scale is not None and args.cfg_loss_scale <= 1.0:
        _fail("--cfg_loss_scale", args.cfg_loss_scale, "must be > 1 (at 1 the guided prediction is the conditional one)")
    if args.cfg_loss_weight <= 0:
        _fail("--cfg_loss_weight", args.cfg_loss_weight, "must be > 0")
    if args.latent_fit_steps < 0:
        _fail("--latent_fit_steps", args.latent_fit_steps, "must be >= 0 (0: the encoder's latents)")
    if args.foreground_loss_weight < 0:
        _fail("--foreground_loss_weight", args.foreground_loss_weight, "must be >= 0 (0: a uniform loss)")
    if args.latent_fit_lr <= 0:
        _fail("--latent_fit_lr", args.latent_fit_lr, "must be > 0")
    if args.dataset_config_name and not args.dataset_name:
        raise ValueError("--dataset_config_name needs --dataset_name")

    positive_ints = ["rank", "train_batch_size", "num_train_epochs", "gradient_accumulation_steps",
                     "checkpointing_steps", "num_validation_images", "validation_steps", "validation_inference_steps"]
    for name in positive_ints:
        if getattr(args, name) < 1:
            _fail(f"--{name}", getattr(args, name), "must be >= 1")
    for name in ("max_train_steps", "checkpoints_total_limit", "max_train_samples", "resolution"):
        value = getattr(args, name)
        if value is not None and value < 1:
            _fail(f"--{name}", value, "must be >= 1")
    for name in ("lr_warmup_steps", "dataloader_num_workers"):
        if getattr(args, name) < 0:
            _fail(f"--{name}", getattr(args, name), "must be >= 0")
    if args.lora_alpha is None:
        args.lora_alpha = float(args.rank)
    if args.lora_alpha <= 0:
        _fail("--lora_alpha", args.lora_alpha, "must be > 0")
    if not 0.0 <= args.lora_dropout < 1.0:
        _fail("--lora_dropout", args.lora_dropout, "must be in [0, 1)")
    if not 0.0 <= args.caption_dropout_prob < 1.0:
        _fail("--caption_dropout_prob", args.caption_dropout_prob, "must be in [0, 1)")
    if args.learning_rate <= 0:
        _fail("--learning_rate", args.learning_rate, "must be > 0")
    if args.text_encoder_lr is not None and args.text_encoder_lr <= 0:
        _fail("--text_encoder_lr", args.text_encoder_lr, "must be > 0")
    if not args.train_text_encoder:
        for flag in ("text_encoder_lr", "text_encoder_weight_decay"):
            if getattr(args, flag) is not None:
                raise ValueError(f"--{flag} is set but --train_text_encoder is not: there is no text-encoder LoRA to apply it to")
    if not 0.0 < args.lr_warmup_start_factor <= 1.0:
        _fail("--lr_warmup_start_factor", args.lr_warmup_start_factor, "must be in (0, 1]")
    if args.lr_min < 0:
        _fail("--lr_min", args.lr_min, "must be >= 0")
    smallest_lr = min(args.learning_rate, args.text_encoder_lr or args.learning_rate)
    if args.lr_scheduler == "warmup_cosine" and args.lr_min > smallest_lr:
        _fail("--lr_min", args.lr_min, f"the cosine floor must not exceed the smallest group learning rate ({smallest_lr})")
    if args.snr_gamma is not None and args.snr_gamma <= 0:
        _fail("--snr_gamma", args.snr_gamma, "must be > 0 (5.0 is the paper's value)")
    if args.noise_offset < 0:
        _fail("--noise_offset", args.noise_offset, "must be >= 0")
    if args.max_grad_norm <= 0:
        _fail("--max_grad_norm", args.max_grad_norm, "must be > 0")
    for flag, value in (("--target_modules", args.target_modules),
                        ("--text_encoder_target_modules", args.text_encoder_target_modules)):
        if not [m for m in value.split(",") if m.strip()]:
            _fail(flag, value, "give comma-separated module names, e.g. to_q,to_k,to_v,to_out.0")
    if args.use_8bit_adam and importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError("--use_8bit_adam needs bitsandbytes: `pip install bitsandbytes` (CUDA only), or drop the flag")
    if args.dataset_name and importlib.util.find_spec("datasets") is None:
        raise ValueError(f"--dataset_name={args.dataset_name!r} needs the `datasets` package: `pip install datasets`, "
                         "or pass a local --train_data_dir")
    if args.resume_from_checkpoint not in (None, "latest") and not os.path.isdir(args.resume_from_checkpoint):
        _fail("--resume_from_checkpoint", args.resume_from_checkpoint, 'not a folder; give "latest" or a checkpoint-N folder')
    report_to = [r.strip() for r in args.report_to.split(",") if r.strip()]
    for tracker in report_to:
        if tracker not in ("tensorboard", "wandb", "all", "none"):
            _fail("--report_to", args.report_to, "allowed: tensorboard, wandb, all, none (comma-separated)")
    if args.hub_token is not None and ("wandb" in report_to or "all" in report_to):
        raise ValueError("--hub_token with --report_to wandb would risk leaking the token; log in with `hf auth login` "
                         "or set HF_TOKEN instead")
    if args.hub_model_id is not None and not args.push_to_hub:
        raise ValueError("--hub_model_id is set but --push_to_hub is not")
    if args.push_to_hub and args.hub_model_id is None:
        args.hub_model_id = os.path.basename(os.path.abspath(args.output_dir))
    return args


def _lora_file(flag: str, value: str) -> str:
    """A LoRA weights file given as the file or as the folder that holds pytorch_lora_weights.safetensors."""
    path = os.path.join(value, "pytorch_lora_weights.safetensors") if os.path.isdir(value) else value
    if not (os.path.isfile(path) and path.endswith(".safetensors")):
        _fail(flag, value, "give a LoRA .safetensors file or a folder with pytorch_lora_weights.safetensors")
    return path


def _validate_anchor(args: argparse.Namespace) -> None:
    pairs = [st.strip() for st in args.dial_anchor_pairs.split(",") if st.strip()]
    files = [f.strip() for f in args.dial_anchor_partner_loras.split(",") if f.strip()]
    args.dial_anchor_pair_styles, args.dial_anchor_partner_files = pairs, []
    if args.dial_anchor_lora is None:
        for flag, value in (("--dial_anchor_pairs", pairs), ("--dial_anchor_partner_loras", files)):
            if value:
                raise ValueError(f"{flag} needs --dial_anchor_lora (the adapter's anchor copy)")
        return
    if not args.dial:
        raise ValueError("--dial_anchor_lora needs --dial (it holds the weight-1 steps of a dial run)")
    args.dial_anchor_lora = _lora_file("--dial_anchor_lora", args.dial_anchor_lora)
    if args.dial_anchor_weight <= 0:
        _fail("--dial_anchor_weight", args.dial_anchor_weight, "must be > 0")
    for st in pairs:
        if st not in args.partner_shapes_styles:
            _fail("--dial_anchor_pairs", args.dial_anchor_pairs,
                  f"partner styles from --partner_shapes_style ({', '.join(args.partner_shapes_styles) or 'none given'})")
    if files and len(files) != len(pairs):
        _fail("--dial_anchor_partner_loras", args.dial_anchor_partner_loras,
              f"one file per --dial_anchor_pairs style ({len(pairs)} given)")
    args.dial_anchor_partner_files = [_lora_file("--dial_anchor_partner_loras", f) for f in files]


def _validate_partner(args: argparse.Namespace) -> None:
    partner_data = [f for f, v in (("--partner_train_data_dir", args.partner_train_data_dir),
                                   ("--partner_shapes_style", args.partner_shapes_style)) if v]
    if args.partner_lora is None:
        if partner_data:
            raise ValueError(f"{partner_data[0]} needs --partner_lora (the adapter to compose with)")
        return
    files = [f.strip() for f in args.partner_lora.split(",")]
    if len(files) > 1 and not args.dial:
        _fail("--partner_lora", args.partner_lora, "one file (several, comma-separated, only with --dial)")
    args.partner_loras = [_lora_file("--partner_lora", f) for f in files]
    args.partner_lora = ",".join(args.partner_loras)
    if len(partner_data) != 1:
        raise ValueError(f"--partner_lora needs exactly one of --partner_train_data_dir, --partner_shapes_style "
                         f"(images of both styles together; got {partner_data or 'none'})")
    if args.dial and args.partner_shapes_style is None:
        raise ValueError("--dial with --partner_lora needs --partner_shapes_style (it renders both styles at the drawn "
                         "weights; --partner_train_data_dir has them at one weight only)")
    if args.partner_shapes_style is not None:
        if args.shapes_style is None:
            raise ValueError("--partner_shapes_style needs --shapes_style (the combined style is rendered from both)")
        styles = [st.strip() for st in args.partner_shapes_style.split(",")]
        for st in styles:
            if st not in SHAPES_STYLES:
                _fail("--partner_shapes_style", args.partner_shapes_style, f"styles from {', '.join(SHAPES_STYLES)}")
            if st == args.shapes_style:
                _fail("--partner_shapes_style", args.partner_shapes_style, f"must differ from --shapes_style={args.shapes_style!r}")
        if len(styles) != len(args.partner_loras):
            _fail("--partner_shapes_style", args.partner_shapes_style,
                  f"one style per --partner_lora file ({len(args.partner_loras)} given)")
        args.partner_shapes_styles = styles
    if args.partner_train_data_dir is not None and not os.path.isfile(os.path.join(args.partner_train_data_dir, "metadata.jsonl")):
        _fail("--partner_train_data_dir", args.partner_train_data_dir, "needs a folder with a metadata.jsonl")
    if not 0.0 < args.partner_prob <= 1.0:
        _fail("--partner_prob", args.partner_prob, "must be in (0, 1]")
    if args.partner_weight <= 0:
        _fail("--partner_weight", args.partner_weight, "must be > 0")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return validate_args(build_parser().parse_args(argv))


def public_config(args: argparse.Namespace) -> dict:
    """The run's settings for trackers and the model card: secrets removed, values made serialisable."""
    secret = args.hub_token
    config = {}
    for key, value in sorted(vars(args).items()):
        if key == "hub_token" or (secret and isinstance(value, str) and secret in value):
            continue
        config[key] = value if isinstance(value, (int, float, str, bool)) else ("" if value is None else str(value))
    return config
