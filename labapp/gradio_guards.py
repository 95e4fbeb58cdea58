"""Three narrow guards on Gradio 6.31's HTTP layer, installed by ``app.build_demo`` (idempotent).

1. Files per upload request: ``route_utils.upload_fn`` builds its multipart parser with
   ``max_files=1000`` hard-coded (40 x 1 MB were accepted in one request). The app has one
   single-image input, so one file per request (HTTP 400 "Too many files ..." beyond).
2. An unknown ``fn_index`` in ``/gradio_api/queue/join`` (or ``/run``) raised a KeyError inside
   ``route_utils.get_fn``: HTTP 500. Now HTTP 404 naming ``fn_index``.
3. A ``Range`` request on ``/gradio_api/file=`` was answered by
   ``RangedFileResponse(path, range, dict(request.headers) + 2 headers)``: the request's own
   headers (Cookie, Authorization, ...) were copied into the 206 response. Gradio 6.31.0 is the
   newest release on the package index (checked with ``pip index versions gradio``) and its code
   still does it, so only Content-Disposition and Content-Type are kept here.

Later ones (each function's docstring says why): payload paths repeated as sent, gr.Examples' row
index checked, a payload of the wrong shape for its component refused by parameter name (not with
pydantic's text), and no server path in /gradio_api/info's parameter defaults.
"""
from __future__ import annotations

MAX_FILES_PER_UPLOAD = 1
MAX_FIELDS_PER_UPLOAD = 10
RANGED_RESPONSE_HEADERS = ("content-disposition", "content-type")


def limit_files_per_upload(max_files: int = MAX_FILES_PER_UPLOAD, max_fields: int = MAX_FIELDS_PER_UPLOAD) -> None:
    from gradio import route_utils

    base = getattr(route_utils.GradioMultiPartParser, "unlimited", route_utils.GradioMultiPartParser)

    class LimitedMultiPartParser(base):
        unlimited = base

        def __init__(self, *args, **kwargs):
            kwargs["max_files"] = min(kwargs.get("max_files", max_files), max_files)
            kwargs["max_fields"] = min(kwargs.get("max_fields", max_fields), max_fields)
            super().__init__(*args, **kwargs)

    route_utils.GradioMultiPartParser = LimitedMultiPartParser


def refuse_unknown_fn_index() -> None:
    from fastapi import HTTPException
    from gradio import route_utils

    original = getattr(route_utils.get_fn, "unguarded", route_utils.get_fn)

    def get_fn(blocks, api_name, body):
        try:
            return original(blocks, api_name, body)
        except KeyError:
            raise HTTPException(status_code=404, detail=f"fn_index={body.fn_index!r} is not an event of this app") from None

    get_fn.unguarded = original
    route_utils.get_fn = get_fn


def drop_echoed_range_headers() -> None:
    from gradio import ranged_response

    cls = ranged_response.RangedFileResponse
    original = getattr(cls.__init__, "unguarded", cls.__init__)

    def __init__(self, path, range, headers=None, *args, **kwargs):
        kept = {k: v for k, v in (headers or {}).items() if k.lower() in RANGED_RESPONSE_HEADERS}
        original(self, path, range, kept, *args, **kwargs)

    __init__.unguarded = original
    cls.__init__ = __init__


def no_resolved_paths_in_refusals() -> None:
    """Gradio's refusal of a payload path outside the uploads names the path *resolved* on the server
    ("Cannot move /work/.../app.py ..." for ``path: "app.py"``: issue 30). Say the path as sent."""
    from gradio import processing_utils

    original = getattr(processing_utils._check_allowed, "unguarded", processing_utils._check_allowed)

    def _check_allowed(path, check_in_upload_folder: bool):
        try:
            return original(path, check_in_upload_folder)
        except processing_utils.InvalidPathError:
            if not check_in_upload_folder:
                raise  # the app's own outputs: an operator's error, with Gradio's advice
            raise processing_utils.InvalidPathError(
                f"Cannot move {str(path)[:200]} to the gradio cache dir because it was not uploaded by a user.") from None

    _check_allowed.unguarded = original
    processing_utils._check_allowed = _check_allowed


def checked_example_index() -> None:
    """``gr.Examples``' event maps a row index to that row (``gr.Dataset.preprocess``, the one event
    that keeps Gradio's preprocess): ``-1`` gave the last row (Python indexing) and ``"x"`` a
    TypeError. Only an integer in [0, rows) is taken; anything else is refused naming ``index``."""
    from gradio.components import dataset

    cls = dataset.Dataset
    original = getattr(cls.preprocess, "unguarded", cls.preprocess)

    def preprocess(self, payload):
        if payload is not None and self.type != "index":
            rows = len(self.raw_samples)
            if isinstance(payload, bool) or not isinstance(payload, int) or not 0 <= payload < rows:
                from .validation import fail

                raise fail("index", payload, f"an example row, an integer in [0, {rows - 1}]")
        return original(self, payload)

    preprocess.unguarded = original
    cls.preprocess = preprocess


# What each data model takes, for the refusal of a payload of the wrong shape (issue 30, item 15).
UPLOADED_FILE = ('a file uploaded to this app, sent as {"path": <what /gradio_api/upload returned>, '
                 '"meta": {"_type": "gradio.FileData"}} (gradio_client.handle_file sends this)')
PAYLOAD_ALLOWED = {
    "FileData": UPLOADED_FILE + "; data: URLs and bare strings are not taken here",
    "ImageData": ('an image: an uploaded file {"path": <what /gradio_api/upload returned>, "meta": '
                  '{"_type": "gradio.FileData"}} or an inline {"url": "data:image/png;base64,..."}'),
    "EditorData": ('an ImageEditor value {"background": ..., "layers": [...], "composite": ...} whose images are '
                   'uploaded files ({"path": ..., "meta": {"_type": "gradio.FileData"}}) or null'),
}


def _payload_shown(value):
    """The refused value, shortened; an object by its keys (a path inside is the client's, but the
    refusals of this app never repeat paths)."""
    if isinstance(value, dict):
        return f"<an object with keys {', '.join(sorted(map(str, value))[:8]) or 'none'}>"
    if isinstance(value, list):
        return f"<a list of {len(value)} items>"
    return value


def payload_error(field: str, model: str, error):
    """A pydantic ValidationError of Gradio's data model as one sentence naming the field (the
    parameter, and the place inside the payload), the value and what is allowed."""
    from .validation import fail

    first = error.errors(include_url=False)[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "__root__"]
    allowed = PAYLOAD_ALLOWED.get(model, f"a {model} object (see /gradio_api/info)")
    if loc:  # inside the payload: name the place (mask_drawing.layers[0]) and what it takes
        field += "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc)
        msg = first.get("msg", "")
        if "'meta' field" in msg or "FileData" in msg:
            allowed = UPLOADED_FILE
        else:
            allowed = msg.replace("Input should be ", "").replace("Value error, ", "") + f" (the whole value: {allowed})"
    return fail(field, _payload_shown(first.get("input")), allowed)


def payloads_checked_by_name() -> None:
    """Gradio validates each payload against its component's data model (``FileData``, ``ImageData``,
    ``EditorData``) in ``Blocks.preprocess_data`` before any handler runs, even with
    ``preprocess=False``, and a wrong shape came back as pydantic's text: " | 1 validation error for
    FileData ... The 'meta' field must be explicitly provided" (a FileData without ``meta``, a data:
    URL or a string for a gr.File), "1 validation error for ImageData" (an image given as
    "/etc/passwd" or 5), "... for EditorData" (a mask_drawing string). The same validation runs here
    first on the raw payload, and a refusal names the parameter (as /gradio_api/info names it), the
    value and what the component takes."""
    from gradio import blocks, components, utils
    from pydantic import ValidationError

    cls = blocks.Blocks
    original = getattr(cls.preprocess_data, "unguarded", cls.preprocess_data)

    def name_of(block_fn, index: int, block) -> str:
        try:
            return blocks._get_api_parameter_name(block_fn, utils.get_function_params(block_fn.fn), index)
        except Exception:  # noqa: BLE001 - a name for the message only
            return str(getattr(block, "label", None) or f"param_{index}")

    async def preprocess_data(self, block_fn, inputs, state, *args, **kwargs):
        for index, block in enumerate(block_fn.inputs):
            model = getattr(block, "data_model", None)
            if not isinstance(block, components.Component) or block.stateful or model is None or index >= len(inputs):
                continue
            value = inputs[index]
            if index in block_fn.component_prop_inputs:
                value = value.get("value") if isinstance(value, dict) else value
            if value is None:
                continue
            try:
                model.model_validate(value, context={"validate_meta": True})
            except ValidationError as error:
                raise payload_error(name_of(block_fn, index, block), model.__name__, error) from None
        return await original(self, block_fn, inputs, state, *args, **kwargs)

    preprocess_data.unguarded = original
    cls.preprocess_data = preprocess_data


def no_server_paths_in_api_info() -> None:
    """``/gradio_api/info`` (and ``/openapi.json``, the API page, the client's view_api) gave each
    image parameter's default as the FileData Gradio wrote at build time: ``"path":
    "/tmp/diffusion-lab-.../<sha>/image.webp"``, the server's temp dir, in the info and in every code
    snippet (issue 30, item 14). A file default is only usable by a client on this very host (the
    client uploads the path it is given), so the API now states no file default: each file in a
    parameter default becomes null (the parameter stays optional; the handler then refuses a missing
    image by name, and a missing ImageEditor value reads as nothing painted). The page itself is
    untouched: its defaults come from /config."""
    from gradio import blocks
    from gradio_client import utils as client_utils

    cls = blocks.Blocks
    original = getattr(cls.get_api_info, "unguarded", cls.get_api_info)

    def without_files(value):
        return client_utils.traverse(value, lambda _file: None, client_utils.is_file_obj_with_meta)

    def get_api_info(self, *args, **kwargs):
        info = original(self, *args, **kwargs)
        for endpoints in (info or {}).values():
            for endpoint in (endpoints.values() if isinstance(endpoints, dict) else ()):
                for parameter in (endpoint.get("parameters", ()) if isinstance(endpoint, dict) else ()):
                    if parameter.get("parameter_default") is not None:
                        parameter["parameter_default"] = without_files(parameter["parameter_default"])
        return info

    get_api_info.unguarded = original
    cls.get_api_info = get_api_info


def install() -> None:
    from . import network, server_limits

    server_limits.install()  # body limits and timeouts, header timeout, upload quota (issue 30)
    network.install_timeouts()  # every Hub call has a timeout (issue 30)
    limit_files_per_upload()
    no_resolved_paths_in_refusals()
    payloads_checked_by_name()
    no_server_paths_in_api_info()
    checked_example_index()
    refuse_unknown_fn_index()
    drop_echoed_range_headers()
