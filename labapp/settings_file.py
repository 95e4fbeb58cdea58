"""Settings read back into Generate's form (issue 23): from a PNG this app made (its ``diffusion_lab``
text chunk, labapp/metadata.py), from a PNG that has only AUTOMATIC1111's ``parameters`` chunk, or
from a settings JSON (the document Generate shows beside its image).

Two steps, so that API clients get the document and the page gets its form:
- ``read_settings`` (the ``/read_settings`` endpoint): the file -> the settings document, checked
  field by field the way /generate checks its form (GenerationRequest.from_form) and normalized
  (every field present). A PNG of one image of a batch gives that image's own seed and one image,
  so Generate makes that image again.
- ``fill_form`` (the page only): a document -> the form's values, checked again (it is an event
  anyone can call).

What the document asks of another model is adapted, never silently: a size or a LoRA the loaded
model cannot take is left at the model's own, and the note says so.
"""
from __future__ import annotations

import inspect
import json
import re
import struct
import time
import zlib

from pipelines.request import GenerationRequest, interval_fields

from . import engine as eng
from . import lora_ui, lora_user_ui, uploads
from . import validation as check
from .metadata import PNG_A1111_KEY, PNG_JSON_KEY

MAX_JSON_BYTES = 64 * 1024  # a settings document is ~1 kB; a long blend is well under this
# a settings text chunk, compressed or not, is read up to this many bytes (inflated): A1111's
# "parameters" of a long prompt and a long LoRA list is a few kB (issue 30: a 1 MB text froze the server)
MAX_TEXT_CHUNK_BYTES = MAX_JSON_BYTES
MAX_A1111_PAIRS = 200  # "Key: value" pairs on A1111's last line; real files have ~20
PARSE_SECONDS = 1.0  # time box of the parse (it is linear: 64 kB take ~10 ms)
TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIELD = "file"
# The form's fields filled by ``fill_form``, in its output order (app.py wires the components so)
FORM_FIELDS = ("prompt", "negative_prompt", "scheduler", "steps", "guidance_scale", "seed", "width", "height",
               "num_images", "guidance_method", "guidance_rescale", "guidance_schedule", "guidance_interval_start",
               "guidance_interval_end", "apg_momentum", "apg_norm_threshold", "apg_eta", "cfg_zero_init_steps",
               "perp_neg_scale", "timestep_spacing", "sigmas", "lora", "classifier_scale")


# ------------------------------------------------------------------------------ the file

def _document_from_bytes(data: bytes) -> dict:
    if data.startswith(PNG_SIGNATURE):
        texts = png_texts(data, (PNG_JSON_KEY, PNG_A1111_KEY))  # capped, before Pillow inflates anything
        uploads.decode_image(FIELD, data)  # format, size and pixel limits
        if texts.get(PNG_JSON_KEY):
            return _json_object(texts[PNG_JSON_KEY], "the PNG's diffusion_lab chunk")
        if texts.get(PNG_A1111_KEY):
            return parse_a1111(texts[PNG_A1111_KEY])
        raise check.fail(FIELD, "<a PNG without settings>", "a PNG made by this app or by AUTOMATIC1111 (with its "
                                                            "settings in a text chunk), or a settings JSON")
    if len(data) > MAX_JSON_BYTES:
        raise check.fail(FIELD, f"<{len(data)} bytes>", f"a settings JSON of at most {MAX_JSON_BYTES} bytes, or a PNG")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise check.fail(FIELD, f"<{len(data)} bytes>", "a PNG or a settings JSON (UTF-8 text)") from None
    return _json_object(text, "the file")


def _json_object(text: str, where: str) -> dict:
    def no_constants(name):  # NaN / Infinity are not JSON
        raise ValueError(name)

    try:
        doc = json.loads(text, parse_constant=no_constants)
    except (ValueError, RecursionError):
        raise check.fail(FIELD, f"<{len(text)} characters>", f"valid JSON in {where}") from None
    if not isinstance(doc, dict):
        raise check.fail(FIELD, f"<JSON {type(doc).__name__}>", "a JSON object: the settings document Generate shows")
    return doc


def _inflate(chunk: bytes, key: str) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(chunk, MAX_TEXT_CHUNK_BYTES + 1)
    except zlib.error:
        raise check.fail(FIELD, f"<the PNG's {key!r} chunk>", "a PNG whose compressed text chunk is valid zlib") from None
    if len(out) > MAX_TEXT_CHUNK_BYTES or inflater.unconsumed_tail:
        raise check.fail(FIELD, f"<the PNG's {key!r} chunk: over {MAX_TEXT_CHUNK_BYTES} bytes inflated>",
                         f"a settings text of at most {MAX_TEXT_CHUNK_BYTES} bytes")
    return out


def png_texts(data: bytes, keys) -> dict[str, str]:
    """The text chunks (tEXt, zTXt, iTXt) named ``keys`` of a PNG, read by walking its chunks: each at
    most MAX_TEXT_CHUNK_BYTES, a compressed one inflated only up to that (one byte more says "too
    long"), so a 1 kB zTXt that inflates to 1 MB costs 64 kB. Linear in the file."""
    texts, position = {}, len(PNG_SIGNATURE)
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        body = data[position + 8:position + 8 + length]
        position += 12 + length
        if kind == b"IEND":
            break
        if kind not in TEXT_CHUNKS:
            continue
        raw_key, _, rest = body.partition(b"\0")
        key = raw_key.decode("latin-1")
        if key not in keys:
            continue
        if len(rest) > MAX_TEXT_CHUNK_BYTES:
            raise check.fail(FIELD, f"<the PNG's {key!r} chunk: {len(rest)} bytes>",
                             f"a settings text of at most {MAX_TEXT_CHUNK_BYTES} bytes")
        if kind == b"tEXt":
            texts[key] = rest.decode("latin-1")
        elif kind == b"zTXt":
            texts[key] = _inflate(rest[1:], key).decode("latin-1")
        else:  # iTXt: compression flag, method, language tag NUL, translated keyword NUL, text (UTF-8)
            flag, _language, _translated, text = rest[:1], *rest[2:].split(b"\0", 2)
            texts[key] = (_inflate(text, key) if flag == b"\1" else text).decode("utf-8", "replace")
    return texts


def a1111_pairs(line: str, deadline: float | None = None) -> dict[str, str]:
    """``Key: value, Key: "quoted, value", ...`` (A1111's last line) -> {key: value}, in one pass.

    A tokenizer, not a regex: every character is looked at a bounded number of times (each search
    stops at the next comma), so the time is linear in the line (issue 30: the regex it replaces
    backtracked quadratically, 51 s at 64 kB, holding the GIL). Pieces without a key are skipped.
    """
    deadline = time.monotonic() + PARSE_SECONDS if deadline is None else deadline
    pairs: dict[str, str] = {}
    position, end = 0, len(line)
    while position < end:
        if len(pairs) >= MAX_A1111_PAIRS:
            raise check.fail(FIELD, f"<A1111 settings with over {MAX_A1111_PAIRS} fields>",
                             f"at most {MAX_A1111_PAIRS} 'Key: value' fields")
        if time.monotonic() > deadline:
            raise check.fail(FIELD, "<A1111 settings text>", f"a settings text read within {PARSE_SECONDS:g} s")
        comma = line.find(",", position)
        comma = end if comma < 0 else comma
        colon = line.find(":", position, comma)
        if colon < 0:  # a piece without "Key:"
            position = comma + 1
            continue
        key = line[position:colon].strip()
        start = colon + 1
        while start < end and line[start] == " ":
            start += 1
        if start < end and line[start] == '"':  # a quoted value may hold commas
            close, escaped = start + 1, False
            while close < end:
                char = line[close]
                if char == '"' and not escaped:
                    break
                escaped = char == "\\" and not escaped
                close += 1
            value = line[start + 1:close].replace('\\"', '"')
            comma = line.find(",", close)
            comma = end if comma < 0 else comma
        else:
            value = line[start:comma].strip()
        position = comma + 1
        if key and len(key) <= 64 and key[0].isascii() and key[0].isalpha():
            pairs[key] = value
    return pairs


def parse_a1111(text: str) -> dict:
    """AUTOMATIC1111's ``parameters`` text -> the fields it shares with this app's document: prompt,
    negative prompt, steps, sampler (its names are this app's; "Schedule type: Karras" joins the
    name as A1111 1.9+ writes it), CFG scale, seed, size and model."""
    if len(text) > MAX_TEXT_CHUNK_BYTES:
        raise check.fail(FIELD, f"<{len(text)} characters of A1111 settings>",
                         f"a settings text of at most {MAX_TEXT_CHUNK_BYTES} characters")
    deadline = time.monotonic() + PARSE_SECONDS
    lines = text.strip().split("\n")
    tail = lines.pop() if lines and (lines[-1].startswith("Steps: ") or ", Steps: " in lines[-1]) else ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    pairs = a1111_pairs(tail, deadline)
    doc: dict = {"prompt": "\n".join(prompt), "negative_prompt": "\n".join(negative)}
    if "Steps" in pairs:
        doc["steps"] = pairs["Steps"]
    if "Sampler" in pairs:
        sampler = pairs["Sampler"]
        if pairs.get("Schedule type", "").lower() == "karras" and not sampler.endswith("Karras"):
            if sampler + " Karras" in eng.known_schedulers():
                sampler += " Karras"
            else:  # A1111 1.9+ offers Karras sigmas for every sampler; this app for some
                doc["a1111_notes"] = [f"Schedule type Karras is not offered with {sampler}: plain {sampler}"]
        doc["scheduler"] = sampler
    if "CFG scale" in pairs:
        doc["guidance_scale"] = pairs["CFG scale"]
    if "Seed" in pairs:
        doc["seed"] = pairs["Seed"]
    if re.fullmatch(r"\d+x\d+", pairs.get("Size", "")):
        doc["width"], doc["height"] = (int(v) for v in pairs["Size"].split("x"))
    if "Model" in pairs:
        doc["model"] = pairs["Model"]
    return doc


# ------------------------------------------------------------------------------ document -> form

_INTEGER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def _number(doc: dict, key: str, default):
    value = doc.get(key, default)
    if isinstance(value, str):  # A1111's text values; anything else is checked by from_form as it is
        # ASCII digits only: Python's int() also takes "٤" (4) and "4_0" (40), never what a file meant
        if len(value) <= 40 and _INTEGER.fullmatch(value):
            return int(value)
        if len(value) <= 40 and _DECIMAL.fullmatch(value):
            return float(value)
        raise check.fail(key, value, "a number written with ASCII digits (e.g. 7 or 6.5)")
    return value


def form_from_document(doc: dict) -> tuple[dict, list[str]]:
    """A settings document -> (GenerationRequest.from_form's keyword arguments, notes on what was
    adapted to the loaded model). Missing fields take the model's defaults; every value is checked
    by from_form afterwards, which names the field it refuses."""
    engine = eng.current()
    scheduler, steps, guidance = engine.defaults()
    notes = [str(n) for n in doc.get("a1111_notes", [])][:4] if isinstance(doc.get("a1111_notes"), list) else []
    # from_form's own defaults, then the model's for the fields it requires
    defaults = {name: p.default for name, p in inspect.signature(GenerationRequest.from_form).parameters.items()
                if p.default is not inspect.Parameter.empty}
    defaults |= {"prompt": "", "negative_prompt": "", "scheduler": scheduler, "steps": steps,
                 "guidance_scale": guidance, "seed": 0}
    texts = ("prompt", "negative_prompt", "scheduler", "guidance_method", "guidance_schedule", "timestep_spacing",
             "sigmas")
    form = {k: (doc.get(k, v) if k in texts else _number(doc, k, v)) for k, v in defaults.items()
            if k not in ("width", "height", "lora", "guidance_interval_start", "guidance_interval_end")}
    interval = doc.get("guidance_interval")
    if not (interval is None or (isinstance(interval, (list, tuple)) and len(interval) == 2
                                 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in interval))):
        raise check.fail("guidance_interval", interval, "null or [start, end], fractions of the steps")
    form["guidance_interval_start"], form["guidance_interval_end"] = interval_fields(interval)
    # one image of a batch: its own seed, alone (labapp/metadata.py writes image_seed since issue 23)
    if "image_seed" in doc and form["num_images"] != 1:
        form["seed"], form["num_images"] = _number(doc, "image_seed", 0), 1
        notes.append(f"image #{doc.get('image_index', '?')} of a batch of {doc.get('num_images')}: its own seed "
                     f"{form['seed']}, one image")
    model = doc.get("model")
    same_model = model in (None, engine.model_id)
    lo, hi, _ = engine.limits().size_range
    for key in ("width", "height"):
        value = _number(doc, key, 0)
        if same_model or (isinstance(value, int) and lo <= value <= hi):
            form[key] = value
        else:
            form[key] = 0
            notes.append(f"{key} {value} is the other model's: {engine.native_size} here")
    lora = doc.get("lora", "")
    if isinstance(lora, list):
        names = set(lora_user_ui.blend_names(engine))
        missing = [a.get("name") for a in lora
                   if isinstance(a, dict) and isinstance(a.get("name"), str) and a.get("name") not in names]
        if missing and not same_model:
            lora = [a for a in lora if not (isinstance(a, dict) and a.get("name") in missing)]
            notes.append(f"LoRA {', '.join(map(str, missing))} not available for {engine.model_id}: left out")
        # a well-formed blend goes to its text form; anything else as JSON, for Blend.parse to refuse by name
        # (a string weight raised "Unknown format code 'g'", a list name "unhashable type: 'list'")
        plain = all(isinstance(a, dict) and isinstance(a.get("name"), str)
                    and isinstance(a.get("weight", 1.0), (int, float)) and not isinstance(a.get("weight", 1.0), bool)
                    and not isinstance(a.get("text_encoder_weight"), (str, bool, list, dict)) for a in lora)
        lora = lora_ui.blend_to_spec(lora) if plain else json.dumps(lora)
    form["lora"] = lora
    if not same_model:
        notes.insert(0, f"made with {model}, loaded into the form for {engine.model_id}")
    return form, notes


def checked(doc) -> tuple[GenerationRequest, list[str]]:
    if not isinstance(doc, dict):
        raise check.fail("settings", type(doc).__name__, "a settings document (a JSON object)")
    form, notes = form_from_document(doc)
    request = GenerationRequest.from_form(lora_user_ui.limits(eng.current()), **form)
    return request, notes


@check.gradio_errors
def read_settings(file) -> dict:
    """/read_settings: a PNG (this app's or AUTOMATIC1111's) or a settings JSON -> the settings document
    for the loaded model, every field checked as /generate checks it, plus ``notes`` (a list: what
    was adapted to this model). Pass its fields to /generate to make the image again."""
    if file is None:
        raise check.fail(FIELD, None, "a PNG made by this app or by AUTOMATIC1111, or a settings JSON")
    payload = file
    try:
        request, notes = checked(_document_from_bytes(uploads.payload_bytes(FIELD, payload)))
    finally:
        if isinstance(file, dict) and isinstance(file.get("path"), str):
            uploads.discard_upload(file["path"])  # read once: not kept in the temp dir (issue 30)
    return request.to_dict() | {"notes": notes}


@check.gradio_errors
def fill_form(doc) -> tuple:
    """The page: a settings document (``read_settings``' answer) -> Generate's form values in FORM_FIELDS
    order, then the status line."""
    request, notes = checked(doc)
    form = request.to_dict()
    form["guidance_interval_start"], form["guidance_interval_end"] = interval_fields(form.pop("guidance_interval"))
    form["lora"] = lora_ui.blend_to_spec(form["lora"])
    status = "Settings loaded into the form" + (f" ({'; '.join(notes)})" if notes else "") + ": Generate makes the image."
    return (*[form[k] for k in FORM_FIELDS], status)

