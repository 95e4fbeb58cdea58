"""A Diffusion Lab server on tiny components, launched in the test process (shared by the
API, browser and handler tests and by bench/bench_app.py)."""
from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_engine():
    from labapp import engine_from_pipe
    from pipelines import TracingStableDiffusionPipeline
    from testkit.tiny import make_tiny_components

    return engine_from_pipe(TracingStableDiffusionPipeline(**make_tiny_components()), "tiny-test", "test components")


def launch(engine, concurrency_limit: int = 2, attempts: int = 3):
    """Launch on 127.0.0.1 with a free port; returns (demo, url). Call demo.close() at the end.

    Gradio's start-up probe of localhost can time out on a loaded 2-core machine
    ("localhost is not accessible"): that one error is retried, any other is raised.
    """
    import app

    demo = app.build_demo(engine, concurrency_limit=concurrency_limit)
    for attempt in range(attempts):
        port = free_port()
        try:
            demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                        **app.launch_kwargs())
            return demo, f"http://127.0.0.1:{port}/"
        except ValueError as error:
            if "localhost is not accessible" not in str(error) or attempt == attempts - 1:
                raise
