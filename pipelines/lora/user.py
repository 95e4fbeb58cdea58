"""A LoRA file a user brings (an upload or a Hub file), read safely and checked against the model.

Order of the checks, each a ValueError that names the file and what is wrong:

1. The name: a pickle suffix (.ckpt, .pt, .bin, ...) is refused before anything is read
   (``lora_files.refuse_unsafe_name``).
2. The first bytes: a pickle (``0x80`` + protocol byte) or a zip archive (``PK\\x03\\x04``, what
   ``torch.save`` writes) renamed .safetensors is refused by its magic bytes. Nothing here, nor in
   diffusers' loader called with ``use_safetensors=True``, ever calls ``torch.load``.
3. The JSON header, parsed here before any tensor byte is read: its length (at most
   ``MAX_HEADER_BYTES``), the tensor count (at most ``MAX_TENSORS``: a file of 10,000 tiny tensors
   costs a Python object and a peft lookup each), every dtype (float only), shape and byte range:
   the declared size ``prod(shape) x itemsize`` must equal the entry's byte range, ranges must tile
   the data section without gaps or overlaps, and the data section must hold them all (a header
   claiming huge tensors, or a truncated file, fails here).
4. The format, from key names: diffusers/peft (``unet.* / text_encoder.*`` with ``lora_A/lora_B``)
   or kohya-ss / AUTOMATIC1111 (``lora_unet_* / lora_te_*``, ``.alpha``, LoCon convs). LyCORIS
   formats diffusers cannot apply to SD 1.x (LoHa, LoKr, (IA)^3, OFT, GLoRA, full diffs, Tucker
   ``lora_mid``, DoRA) and things that are not LoRAs (textual-inversion embeddings, whole model
   checkpoints) are refused by name.
5. The tensors, read with safetensors: NaN or Inf anywhere is refused (naming the first key).
6. Fit: the keys are converted with diffusers' own converter (``lora_state_dict``, which maps
   kohya names through ``lora_conversion_utils``; then ``convert_unet_state_dict_to_peft``), and
   every targeted module must exist in the current UNet / text encoder with matching shapes
   (``A: (r, in[, k, k])``, ``B: (out, r[, 1, 1])``). The refusal names the first mismatch and,
   when the file's metadata says it, the base model it was made for (an SDXL LoRA on SD 1.5).

``read_user_lora(path, pipe)`` returns a ``UserLoraFile`` (format, SHA-256, metadata, size), after
which ``LoraBlender.load`` injects it like a preset (diffusers' ``load_lora_weights``).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .files import refuse_unsafe_name

MAX_HEADER_BYTES = 8 * 2**20  # an SD 1.x LoRA with every layer targeted has a ~100 kB header
MAX_TENSORS = 4096  # a full SD 1.x LoCon (UNet + text encoder, down/up/alpha) has ~1,800
MAX_TENSOR_ELEMENTS = 2**28  # one tensor; a rank-128 LoRA's largest SD 1.x tensor has ~3 M
MAX_KEY_CHARS = 512
# no published SD 1.x LoRA goes past rank 256 (kohya's largest presets); a full-rank delta of SD 1.5's
# widest layer would be 1280. The inspector's and peft's costs grow with the rank (issue 30: a rank-8000
# layer in a 2 MB file cost +1.4 GB), so anything above is refused from the header, naming this limit.
MAX_RANK = 1024
RANK_AXIS = {".lora_A.": 0, ".lora_down.": 0, ".lora_B.": 1, ".lora_up.": 1}  # where the rank sits in the shape
DTYPES = {"F16": (2, torch.float16), "BF16": (2, torch.bfloat16), "F32": (4, torch.float32), "F64": (8, torch.float64)}
KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
KOHYA_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha")

# key fragment -> the format it belongs to, refused by name (LyCORIS formats diffusers cannot apply
# to SD 1.x, and files that are not LoRAs at all)
UNSUPPORTED_FORMATS = (
    (".hada_w1_a", "LoHa (LyCORIS Hadamard-product adapter)"),
    (".hada_t1", "LoHa (LyCORIS Hadamard-product adapter)"),
    (".lokr_w1", "LoKr (LyCORIS Kronecker-product adapter)"),
    (".lokr_w2", "LoKr (LyCORIS Kronecker-product adapter)"),
    (".on_input", "(IA)^3 (LyCORIS)"),
    (".oft_blocks", "OFT (LyCORIS orthogonal fine-tuning)"),
    (".oft_diag", "BOFT/OFT (LyCORIS orthogonal fine-tuning)"),
    (".a1.weight", "GLoRA (LyCORIS)"),
    (".diff", "a full weight difference (LyCORIS 'full')"),
    (".lora_mid.weight", "LoCon with Tucker decomposition (lora_mid; diffusers cannot apply it)"),
    (".dora_scale", "DoRA (diffusers drops dora_scale for SD 1.x: the result would be wrong)"),
    ("emb_params", "a textual-inversion embedding, not a LoRA"),
    ("string_to_param", "a textual-inversion embedding, not a LoRA"),
    ("model.diffusion_model.", "a whole model checkpoint, not a LoRA"),
    ("first_stage_model.", "a whole model checkpoint, not a LoRA"),
)
# what a file's metadata may say about the model it was trained on (kohya-ss, modelspec, civitai)
BASE_MODEL_KEYS = ("ss_base_model_version", "modelspec.architecture", "ss_sd_model_name", "baseModel",
                   "base_model", "ss_v2")


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class SafetensorsHeader:
    path: str
    file_size: int
    header_len: int
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def data_size(self) -> int:
        return self.file_size - 8 - self.header_len


@dataclass
class UserLoraFile:
    """A checked LoRA file: safe to hand to ``LoraBlender.load``."""

    path: str
    sha256: str
    format: str  # "diffusers" | "kohya"
    size_bytes: int
    num_tensors: int
    metadata: dict[str, str]
    base_model: str | None  # from the metadata, when it says
    components: tuple[str, ...]  # "unet", "text_encoder"
    dtypes: tuple[str, ...]
    num_weights: int  # elements of its A and B matrices (alphas left out)


def _fail(path, problem: str) -> ValueError:
    return ValueError(f"LoRA file {os.path.basename(os.fspath(path))!r}: {problem}")


def sniff_magic(path, head: bytes) -> None:
    """Refuse a pickle or a zip (torch.save) by its first bytes, whatever the file is named."""
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        raise _fail(path, f"is a pickle (starts with bytes 0x80 0x{head[1]:02x}, pickle protocol {head[1]}); "
                          "only safetensors files are read (pickles can run code when loaded)")
    if head[:4] == b"PK\x03\x04":
        raise _fail(path, "is a zip archive (what torch.save writes, holding a pickle); only safetensors files "
                          "are read (convert it with safetensors first)")


def read_header(path) -> SafetensorsHeader:
    """Parse and check the safetensors header of ``path`` without reading any tensor data."""
    path = os.fspath(path)
    refuse_unsafe_name(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        sniff_magic(path, head)
        if len(head) < 8:
            raise _fail(path, f"is not a safetensors file: only {size} bytes")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > MAX_HEADER_BYTES:
            raise _fail(path, f"header of {header_len} bytes is over the limit of {MAX_HEADER_BYTES} bytes")
        if not 2 <= header_len <= size - 8:
            raise _fail(path, f"is not a safetensors file (header length {header_len} does not fit a {size}-byte "
                              "file; truncated, or not safetensors)")
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise _fail(path, "is not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise _fail(path, f"is not a safetensors file (its header is a JSON {type(header).__name__})")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _fail(path, "its __metadata__ is not a map of strings")
    if len(header) > MAX_TENSORS:
        raise _fail(path, f"holds {len(header)} tensors; at most {MAX_TENSORS} are accepted "
                          "(an SD 1.x LoRA with every layer targeted has under 2,000)")
    if not header:
        raise _fail(path, "holds no tensors")
    tensors = {key: _entry(path, key, value) for key, value in header.items()}
    result = SafetensorsHeader(path, size, header_len, tensors, metadata)
    _check_layout(result)
    check_ranks(result)
    return result


def check_ranks(header: SafetensorsHeader) -> None:
    """Every A / B (lora_down / lora_up) tensor's rank, read from its declared shape, is at most MAX_RANK."""
    for key, entry in header.tensors.items():
        for fragment, axis in RANK_AXIS.items():
            if fragment in key and len(entry.shape) > axis and entry.shape[axis] > MAX_RANK:
                raise _fail(header.path, f"tensor {key!r} has rank {entry.shape[axis]} (shape {list(entry.shape)}); "
                                         f"at most rank {MAX_RANK} is accepted")


def _entry(path, key: str, value) -> TensorEntry:
    if len(key) > MAX_KEY_CHARS:
        raise _fail(path, f"a tensor name of {len(key)} characters (at most {MAX_KEY_CHARS})")
    if not isinstance(value, dict) or set(value) != {"dtype", "shape", "data_offsets"}:
        raise _fail(path, f"header entry {key!r} is not a tensor description (dtype, shape, data_offsets)")
    dtype, shape, offsets = value["dtype"], value["shape"], value["data_offsets"]
    if dtype not in DTYPES:
        raise _fail(path, f"tensor {key!r} has dtype {dtype!r}; LoRA weights must be one of {sorted(DTYPES)}")
    if (not isinstance(shape, list) or len(shape) > 4
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise _fail(path, f"tensor {key!r} has shape {shape!r}; expected at most 4 non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
            or offsets[0] > offsets[1]):
        raise _fail(path, f"tensor {key!r} has data_offsets {offsets!r}; expected [start, end], start <= end")
    entry = TensorEntry(dtype, tuple(shape), offsets[0], offsets[1])
    if entry.numel > MAX_TENSOR_ELEMENTS:
        raise _fail(path, f"tensor {key!r} claims shape {list(shape)} ({entry.numel:,} elements); at most "
                          f"{MAX_TENSOR_ELEMENTS:,} per tensor")
    declared = entry.numel * DTYPES[dtype][0]
    if declared != entry.end - entry.start:
        raise _fail(path, f"tensor {key!r} declares {declared} bytes ({dtype} {list(shape)}) but its byte range "
                          f"holds {entry.end - entry.start}")
    return entry


def _check_layout(header: SafetensorsHeader) -> None:
    spans = sorted((e.start, e.end, k) for k, e in header.tensors.items())
    position = 0
    for start, end, key in spans:
        if start != position:
            raise _fail(header.path, f"tensor {key!r} starts at byte {start}, expected {position} "
                                     "(byte ranges must tile the data without gaps or overlaps)")
        position = end
    if position > header.data_size:
        raise _fail(header.path, f"is truncated: its header describes {position} bytes of tensors, the file holds "
                                 f"{header.data_size}")
    if position != header.data_size:
        raise _fail(header.path, f"has {header.data_size - position} bytes after its last tensor")


def detect_format(path, keys) -> str:
    """"diffusers" or "kohya" from the key names; ValueError naming a format it cannot apply."""
    keys = list(keys)
    for key in keys:
        for fragment, name in UNSUPPORTED_FORMATS:
            if fragment in key:
                raise _fail(path, f"is {name} (key {key!r}); this app applies LoRA and LoCon files "
                                  "(diffusers/peft or kohya-ss keys) only")
    if all(k.startswith(KOHYA_PREFIXES) for k in keys):
        odd = next((k for k in keys if not k.endswith(KOHYA_SUFFIXES)), None)
        if odd is not None:
            raise _fail(path, f"kohya-ss key {odd!r} is not a lora_down/lora_up weight or an alpha")
        return "kohya"
    if all(k.startswith(("unet.", "text_encoder.", "text_encoder_2.")) for k in keys):
        odd = next((k for k in keys if "lora" not in k), None)
        if odd is not None:
            raise _fail(path, f"key {odd!r} is not a LoRA weight (diffusers keys hold 'lora_A' / 'lora_B')")
        return "diffusers"
    first = next(k for k in keys if not k.startswith(KOHYA_PREFIXES + ("unet.", "text_encoder.")))
    raise _fail(path, f"key {first!r} is neither diffusers/peft (unet.*, text_encoder.*) nor kohya-ss "
                      "(lora_unet_*, lora_te_*); a LoRA for another model family?")


ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # diffusers' LoraConfig kwargs, "unet.r", "text_encoder.lora_alpha", ...
MAX_ALPHA = 16 * MAX_RANK  # |lora_alpha|: real files use alpha <= rank (scale alpha/r <= 1); 1e30 made every image noise
# LoraConfig fields a file may set; any other field must hold its default (None, False, empty): use_dora
# broke every later /generate ("Tensor on device cpu is not on the expected device meta!"), and
# megatron_core names a module to import, layer_replication rebuilds the model, modules_to_save loads whole layers
ADAPTER_FIELDS_SET = ("r", "lora_alpha", "target_modules", "lora_dropout", "bias", "use_rslora", "rank_pattern",
                      "alpha_pattern", "init_lora_weights", "fan_in_fan_out", "task_type", "peft_type", "peft_version",
                      "base_model_name_or_path", "revision", "inference_mode", "exclude_modules", "layers_to_transform",
                      "layers_pattern", "auto_mapping", "lora_bias", "ensure_weight_tying", "runtime_config")


def _rank_ok(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_RANK


def _alpha_ok(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and abs(value) <= MAX_ALPHA)


def _default(spec):
    import dataclasses

    if spec.default is not dataclasses.MISSING:
        return spec.default
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return None


def check_adapter_metadata(path, metadata: dict[str, str]) -> None:
    """The LoraConfig a file's ``lora_adapter_metadata`` asks for: known fields, ranges, no DoRA."""
    import dataclasses

    from peft import LoraConfig

    raw = metadata.get(ADAPTER_METADATA_KEY)
    if raw is None:
        return
    try:
        config = json.loads(raw)
    except (ValueError, RecursionError):
        raise _fail(path, f"its {ADAPTER_METADATA_KEY} is not JSON") from None
    if not isinstance(config, dict):
        raise _fail(path, f"its {ADAPTER_METADATA_KEY} is a JSON {type(config).__name__}, not an object")
    known = {f.name: f for f in dataclasses.fields(LoraConfig)}
    for key, value in config.items():
        name = key.split(".", 1)[1] if key.startswith(("unet.", "text_encoder.", "text_encoder_2.")) else key
        where = f"{ADAPTER_METADATA_KEY} field {key!r}"
        if name not in known:
            raise _fail(path, f"{where} is not a LoraConfig field (allowed: {', '.join(ADAPTER_FIELDS_SET[:8])}, ...)")
        if name == "use_dora" and value not in (None, False):
            raise _fail(path, f"{where}={value!r} is not allowed: DoRA adapters are not applied here (false)")
        if name not in ADAPTER_FIELDS_SET and value not in (None, False, [], {}, "", _default(known[name])):
            raise _fail(path, f"{where}={str(value)[:80]!r} is not allowed: this field must be left at its default")
        if name == "r" and not _rank_ok(value):
            raise _fail(path, f"{where}={str(value)[:40]} is not allowed: an integer rank in [1, {MAX_RANK}]")
        if name == "lora_alpha" and not _alpha_ok(value):
            raise _fail(path, f"{where}={str(value)[:40]} is not allowed: a finite number in [-{MAX_ALPHA}, {MAX_ALPHA}]")
        if name in ("rank_pattern", "alpha_pattern"):
            check = _rank_ok if name == "rank_pattern" else _alpha_ok
            if not isinstance(value, dict) or not all(check(v) for v in value.values()):
                raise _fail(path, f"{where} is not allowed: a map of module names to "
                                  + (f"ranks in [1, {MAX_RANK}]" if name == "rank_pattern" else
                                     f"finite alphas in [-{MAX_ALPHA}, {MAX_ALPHA}]"))
        if name == "use_rslora" and not isinstance(value, bool):
            raise _fail(path, f"{where}={str(value)[:40]} is not allowed: true or false")


def base_model_of(metadata: dict[str, str]) -> str | None:
    """What the file's metadata says it was trained for, e.g. "ss_base_model_version=sdxl_base_v1-0"."""
    found = [f"{k}={metadata[k][:80]}" for k in BASE_MODEL_KEYS if metadata.get(k)]
    return ", ".join(found) or None


def sha256_of(path, chunk: int = 2**20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_tensors(header: SafetensorsHeader) -> dict[str, torch.Tensor]:
    """The tensors of a checked file (safetensors only), each finite."""
    from safetensors import safe_open

    tensors = {}
    with safe_open(header.path, framework="pt", device="cpu") as f:
        for key in header.tensors:
            value = f.get_tensor(key)
            if value.is_floating_point() and not torch.isfinite(value).all():
                bad = "NaN" if torch.isnan(value).any() else "Inf"
                raise _fail(header.path, f"tensor {key!r} holds {bad} values; the adapter would turn every image "
                                         "into noise")
            tensors[key] = value
    return tensors


def peft_keys(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Component -> peft-style ``<module>.lora_A.weight`` state dict, through diffusers' converters."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_unet_state_dict_to_peft
    from diffusers.utils.state_dict_utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft

    converted, _alphas = StableDiffusionPipeline.lora_state_dict(dict(tensors))
    parts: dict[str, dict] = {}
    for key, value in converted.items():
        component, _, rest = key.partition(".")
        parts.setdefault(component, {})[rest] = value
    out = {}
    for component, part in parts.items():
        if component == "unet":
            out[component] = convert_unet_state_dict_to_peft(part)
        elif component == "text_encoder":
            out[component] = convert_state_dict_to_peft(convert_state_dict_to_diffusers(part))
        else:  # text_encoder_2 (SDXL) and the like: check_fit refuses it by its component name
            out[component] = part
    return out


def _module(model, path: str):
    modules = dict(model.named_modules())
    # CLIP's layers sit under "text_model." in transformers 4 and at the top in 5; files use either
    for candidate in (path, "text_model." + path, path.removeprefix("text_model.")):
        module = modules.get(candidate)
        if module is not None:
            return candidate, (module.get_base_layer() if hasattr(module, "get_base_layer") else module)
    return None, None


def _expected(module, part: str, rank: int) -> tuple | None:
    from torch import nn

    if isinstance(module, nn.Linear):
        return (rank, module.in_features) if part == "A" else (module.out_features, rank)
    if isinstance(module, nn.Conv2d):
        if part == "A":
            return (rank, module.in_channels, *module.kernel_size)
        return (module.out_channels, rank, 1, 1)
    return None


def check_fit(path, parts: dict[str, dict[str, torch.Tensor]], pipe, base_model: str | None) -> tuple[str, ...]:
    """Every targeted module exists in ``pipe`` with matching shapes, else the first mismatch."""
    made_for = f" (the file's metadata says it was made for {base_model})" if base_model else ""

    def mismatch(problem: str) -> ValueError:
        return _fail(path, f"does not fit this model: {problem}{made_for}")

    for component, state in parts.items():
        model = getattr(pipe, component, None)
        if model is None:
            raise mismatch(f"it has layers for {component!r}, which this pipeline does not have"
                           + (" (a second text encoder: an SDXL LoRA?)" if component == "text_encoder_2" else ""))
        for key, value in state.items():
            module_path, kind = key.rsplit(".lora_", 1) if ".lora_" in key else (key, "")
            if kind not in ("A.weight", "B.weight"):
                raise mismatch(f"{component}.{key} is not a lora_A / lora_B weight")
            found_path, module = _module(model, module_path)
            if module is None:
                raise mismatch(f"{component}.{key} targets {component}.{module_path}, which this model does not have")
            rank = value.shape[0] if kind[0] == "A" else (value.shape[1] if value.dim() > 1 else -1)
            expected = _expected(module, kind[0], rank)
            if expected is None:
                raise mismatch(f"{component}.{module_path} is a {type(module).__name__}; LoRA layers here fit "
                               "Linear and Conv2d only")
            if tuple(value.shape) != expected:
                raise mismatch(f"{component}.{key} has shape {list(value.shape)}, the model's "
                               f"{type(module).__name__} {component}.{found_path} needs {list(expected)}")
    return tuple(c for c in ("unet", "text_encoder") if parts.get(c))


def read_user_lora(path, pipe, hold=contextlib.nullcontext) -> UserLoraFile:
    """Every check of the module docstring, in order; returns what ``LoraBlender.load`` needs.

    ``hold``: a context manager held while the pipeline's modules are read (the fit check), e.g.
    ``LoraBlender.holding`` when other threads may load adapters meanwhile; the file is read and
    hashed outside it."""
    header = read_header(path)
    check_adapter_metadata(path, header.metadata)
    kind = detect_format(path, header.tensors)
    base_model = base_model_of(header.metadata)
    if kind == "kohya" and any(k.startswith("lora_unet_") and k[10:].startswith(("input_blocks", "output_blocks",
                                                                                  "middle_block"))
                               for k in header.tensors):
        first = next(k for k in header.tensors if k[10:].startswith(("input_blocks", "output_blocks", "middle_block")))
        raise _fail(path, f"does not fit this model: key {first!r} uses the LDM/SGM block names of SDXL files, "
                          f"which an SD 1.x UNet does not have"
                    + (f" (the file's metadata says it was made for {base_model})" if base_model else ""))
    tensors = read_tensors(header)
    try:
        parts = peft_keys(tensors)
    except (ValueError, KeyError) as error:  # diffusers' converter found keys it cannot rename
        raise _fail(path, f"diffusers cannot convert its keys: {str(error).strip()[:300]}") from None
    with hold():
        components = check_fit(path, parts, pipe, base_model)
    if not components:
        raise _fail(path, "has no layers for this model's UNet or text encoder")
    return UserLoraFile(path=str(Path(path).resolve()), sha256=sha256_of(path), format=kind,
                        size_bytes=header.file_size, num_tensors=len(header.tensors), metadata=dict(header.metadata),
                        base_model=base_model, components=components,
                        dtypes=tuple(sorted({e.dtype for e in header.tensors.values()})),
                        num_weights=sum(e.numel for k, e in header.tensors.items() if not k.endswith(".alpha")))
