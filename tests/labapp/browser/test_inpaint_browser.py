"""Inpainting in a real browser (Playwright + Debian chromium, tiny components): paint a mask over
the explorer's image in gr.ImageEditor, run Inpaint, see the result, the mask and the steps with
the mask's border, and the explorer's slider move to the inpainting run's steps. Screenshots in
test-artifacts/ (gitignored)."""
from __future__ import annotations

import pytest

from testkit.browser import shot

pytestmark = pytest.mark.browser


def test_paint_a_mask_and_inpaint(page):
    page.get_by_role("tab", name="Timestep explorer").click()
    # the editor's opening mask has arrived: it comes in the same response as the crop note (explorer.py,
    # _image_views), and strokes painted before it are replaced by it (CI under load sent an empty drawing)
    page.wait_for_function("() => (document.querySelector('#noise-crop-note') || {innerText: ''}).innerText.trim()",
                           timeout=60_000)
    editor = page.locator("#inpaint-editor")
    editor.scroll_into_view_if_needed()
    editor.get_by_role("button", name="Brush", exact=True).click()
    canvas = editor.locator("canvas").first
    page.wait_for_function("() => document.querySelector('#inpaint-editor canvas').getBoundingClientRect().width > 0")
    box = canvas.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 60, cy - 50)
    page.mouse.down()
    for dy in range(-50, 51, 10):  # a filled patch in the image's middle: strokes left-right, top to bottom
        page.mouse.move(cx - 60, cy + dy, steps=4)
        page.mouse.move(cx + 60, cy + dy, steps=8)
    page.mouse.up()
    shot(page, "inpaint-mask-painted")
    page.locator("#inpaint-button").click()
    status = page.locator("#inpaint-status")
    status.get_by_text("Inpainted").wait_for(timeout=120_000)
    text = status.inner_text()
    assert "by latent blending" in text and "of the image" in text, text
    share = int(text.split("Inpainted ")[1].split("%")[0])
    assert 5 <= share <= 95, text  # the painted patch, not nothing and not everything
    steps = page.locator("#inpaint-steps")
    steps.scroll_into_view_if_needed()
    page.wait_for_function("() => document.querySelectorAll('#inpaint-steps img').length >= 5")
    captions = steps.inner_text()
    assert "mask (white = regenerate)" in captions and "x_t, step 1/" in captions and "result" in captions
    assert page.locator("#inpaint-result img").count() == 1
    shot(page, "inpaint-result")
    assert not page.console_errors, page.console_errors


def test_uploaded_mask_of_another_shape_is_refused_by_name(page, tmp_path):
    import numpy as np
    from PIL import Image

    path = tmp_path / "wide.png"
    Image.fromarray(np.full((16, 64), 255, np.uint8)).save(path)
    page.locator("#inpaint-mask input[type=file]").set_input_files(str(path))
    page.wait_for_function("() => document.querySelector('#inpaint-mask img') !== null")
    page.locator("#inpaint-button").click()
    error = page.get_by_text("is not allowed: the image's size")
    error.first.wait_for(timeout=60_000)
    assert "mask='64x16 px'" in page.content()
    shot(page, "inpaint-mask-refused")
