"""Image outputs land in Gradio's cache once, atomically: a file the browser may be fetching is
never truncated and rewritten (the cause of net::ERR_CONTENT_LENGTH_MISMATCH in the browser test)."""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from gradio import processing_utils
from PIL import Image

from labapp import gradio_cache

_watch: dict = {"on": False, "opens": []}


def _audit(event, args):
    if _watch["on"] and event == "open":
        _watch["opens"].append(args)


sys.addaudithook(_audit)  # audit hooks cannot be removed; this one only records while "on"


def _image(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))


def _writes_to(path: str, opens) -> list:
    """The opens of ``path`` that could change it (a write mode or O_WRONLY/O_RDWR flags)."""
    hits = []
    for file, mode, flags in opens:
        if not isinstance(file, (str, bytes, os.PathLike)) or os.fspath(file) != path:
            continue
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR))
        if writing:
            hits.append((file, mode, flags))
    return hits


def _second_save_writes(save, folder: Path, fmt: str) -> list:
    image = _image()
    path = save(image, cache_dir=str(folder), format=fmt)
    _watch["opens"].clear()
    _watch["on"] = True
    try:
        again = save(image, cache_dir=str(folder), format=fmt)
    finally:
        _watch["on"] = False
    assert again == path
    return _writes_to(path, list(_watch["opens"]))


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_saving_the_same_image_again_never_opens_the_served_file_for_writing(tmp_path, fmt):
    assert _second_save_writes(gradio_cache.save_pil_to_cache, tmp_path, fmt) == []


def test_the_audit_check_catches_gradios_in_place_rewrite(tmp_path):
    """The check above can fail: Gradio's own function rewrites the existing file."""
    assert _second_save_writes(gradio_cache._original, tmp_path, "png") != []


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_same_path_and_bytes_as_gradio(tmp_path, fmt):
    image = _image(3)
    ours = Path(gradio_cache.save_pil_to_cache(image, cache_dir=str(tmp_path / "a"), format=fmt))
    theirs = Path(gradio_cache._original(image, cache_dir=str(tmp_path / "b"), format=fmt))
    assert ours.relative_to(tmp_path / "a") == theirs.relative_to(tmp_path / "b")
    assert ours.read_bytes() == theirs.read_bytes()
    assert not [p for p in ours.parent.iterdir() if p.name.startswith(".")], "staging file left behind"


def test_unsupported_format_raises_before_anything_is_written(tmp_path):
    with pytest.raises((KeyError, ValueError)):
        gradio_cache.save_pil_to_cache(_image(), cache_dir=str(tmp_path), format="nosuchformat")
    assert list(tmp_path.rglob("*")) == []


def test_a_reader_never_sees_a_short_file_while_the_same_image_is_saved_again(tmp_path):
    """What a FileResponse does (stat, then read) against a writer saving the same image over and over."""
    image = _image(5)
    path = gradio_cache.save_pil_to_cache(image, cache_dir=str(tmp_path), format="png")
    size = os.path.getsize(path)
    stop = threading.Event()

    def writer():
        while not stop.is_set():
            gradio_cache.save_pil_to_cache(image, cache_dir=str(tmp_path), format="png")

    thread = threading.Thread(target=writer)
    thread.start()
    short = 0
    try:
        for _ in range(3000):
            declared = os.stat(path).st_size
            with open(path, "rb") as handle:
                got = len(handle.read())
            short += declared != size or got != declared
    finally:
        stop.set()
        thread.join()
    assert short == 0


def test_the_app_installs_it():
    import app
    from testkit.app_server import tiny_engine

    gradio_cache.uninstall()
    app.build_demo(tiny_engine())
    assert processing_utils.save_pil_to_cache is gradio_cache.save_pil_to_cache
