"""One builder per tab of the page (generate, cfg, schedulers, explorer, lora, attention).

Each ``build(...)`` lays out its tab inside the open ``gr.Tab``, wires the events that stay inside
it, and returns a namespace of the components (and events) other tabs need; app.py assembles the
tabs and wires what crosses them. The small parts every tab uses live in ``parts.py``.
"""
