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
    ("localhost is not accessible"). The server is up by then (a second ``launch()`` would only
    rerun it on its first port), so it is polled until it answers; any other error is raised.
    """
    import app

    demo = app.build_demo(engine, concurrency_limit=concurrency_limit)
    try:
        demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                    **app.launch_kwargs())
    except ValueError as error:
        if "localhost is not accessible" not in str(error) or not demo.is_running:
            raise
        wait_until_it_answers(demo.local_url, error, tries=attempts * 20)
    return demo, demo.local_url


def wait_until_it_answers(url: str, error: Exception, tries: int = 60, every: float = 0.5) -> None:
    import time

    import httpx

    for _ in range(tries):
        try:
            if httpx.get(url, timeout=5).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(every)
    raise error
