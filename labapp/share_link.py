"""A link that restores Generate's form: the page writes the form's values that differ from their
defaults as URL query parameters (``LINK_JS``, in the browser), and on load ``form_from_link`` reads
them back through the settings-file reader (every value checked as /generate checks it; a refusal
names the field and leaves the form as it was)."""
from __future__ import annotations

import json

import gradio as gr

from pipelines.request import INTERVAL_FIELDS as INTERVAL
from pipelines.request import progress_interval

from . import settings_file


def form_from_link(request: gr.Request):
    """On page load: the form's values (settings_file.FORM_FIELDS order, then the status line) from
    the URL's query parameters; every output skipped when the URL names none of the form's fields."""
    query = dict(request.query_params) if request is not None else {}
    doc = {k: v for k, v in query.items() if k in settings_file.FORM_FIELDS and k not in INTERVAL}
    skipped = tuple(gr.skip() for _ in settings_file.FORM_FIELDS)
    if not doc and not any(k in query for k in INTERVAL):
        return (*skipped, gr.skip())
    try:
        start, end = (float(query.get(k, default)) for k, default in zip(INTERVAL, ("0", "1")))
        doc["guidance_interval"] = progress_interval(start, end)
        values = settings_file.fill_form(doc)
    except (ValueError, gr.Error) as error:
        return (*skipped, f"The link's settings were not loaded: {getattr(error, 'message', error)}")
    return (*values[:-1], "Settings from the link loaded into the form: Generate makes the image.")


def link_js(defaults: dict) -> str:
    """The "Link to this setup" button's script: the form's values (FORM_FIELDS order) that differ
    from ``defaults`` as query parameters of this page's address, shown in the link box."""
    names = json.dumps(list(settings_file.FORM_FIELDS))
    return f"""(...values) => {{
  const names = {names}, defaults = {json.dumps(defaults)};
  const query = new URLSearchParams();
  names.forEach((name, i) => {{ if (String(values[i]) !== String(defaults[name])) query.set(name, values[i]); }});
  const link = location.origin + location.pathname + (query.toString() ? '?' + query.toString() : '');
  if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(link).catch(() => {{}});
  return [link];
}}"""
