"""/inpaint through a real Gradio server and gradio_client (tiny components): mask uploaded or
painted (an ImageEditor value), resized when only its size differs, refused by name otherwise;
empty / full masks, a method the model lacks, strength; a 9-channel inpainting model refusing
/generate and /img2img with a clear error."""
import re

import numpy as np
import PIL.Image
import pytest
import torch

from gradio_client import handle_file


@pytest.fixture(scope="module")
def client():
    from gradio_client import Client

    from testkit.app_server import launch, tiny_engine

    torch.set_num_threads(1)
    demo, url = launch(tiny_engine(), concurrency_limit=1)
    yield Client(url, verbose=False)
    demo.close()


def _png(tmp_path, name, array):
    path = tmp_path / name
    PIL.Image.fromarray(array).save(path)
    return handle_file(str(path))


@pytest.fixture
def files(tmp_path):
    image = (np.random.RandomState(0).rand(32, 32, 3) * 255).astype("uint8")
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    layer = np.zeros((32, 32, 4), np.uint8)
    layer[8:24, 8:24] = (255, 0, 255, 255)
    big = np.zeros((64, 64), np.uint8)
    big[16:48, 16:48] = 255
    return {"image": _png(tmp_path, "image.png", image), "mask": _png(tmp_path, "mask.png", mask),
            "layer": _png(tmp_path, "layer.png", layer), "big": _png(tmp_path, "big.png", big),
            "wide": _png(tmp_path, "wide.png", np.full((32, 48), 255, np.uint8)),
            "empty": _png(tmp_path, "empty.png", np.zeros((32, 32), np.uint8)),
            "full": _png(tmp_path, "full.png", np.full((32, 32), 255, np.uint8))}


def test_inpaint_with_an_uploaded_mask(client, files):
    result, status, gallery, table, = client.predict(image=files["image"], mask=files["mask"], prompt="a red circle",
                                                     steps=4, seed=1, api_name="/inpaint")
    assert PIL.Image.open(result).size[0] >= 16
    assert "by latent blending" in status and "strength 1: 4 of 4 steps" in status and "4 model calls" in status
    assert "Inpainted 25% of the image" in status
    captions = [g["caption"] for g in gallery]
    assert captions[:3] == ["image + mask outline", "mask (white = regenerate)", "known region (grey = regenerated)"]
    assert captions[-1] == "result" and sum(c.startswith("x_t, step") for c in captions) == 4
    assert len(re.findall(r"\n\| \d+ \| \d+ \| [\d.]+ \| [\d.]+ \|", table)) == 4  # one row per step


def test_inpaint_with_a_painted_mask_and_a_resized_one(client, files):
    drawing = {"background": files["image"], "layers": [files["layer"]], "composite": None}
    _, status, _, _ = client.predict(image=files["image"], mask=None, mask_drawing=drawing, steps=2,
                                     api_name="/inpaint")
    assert "Inpainted 25% of the image" in status
    _, status, _, _ = client.predict(image=files["image"], mask=files["mask"], mask_drawing=drawing, steps=2,
                                     api_name="/inpaint")
    assert status.startswith("The uploaded mask was used (it wins over the drawing).")
    _, status, _, _ = client.predict(image=files["image"], mask=files["big"], steps=2, api_name="/inpaint")
    assert status.startswith("mask 64x64 resized to the image's 32x32.") and "Inpainted 25%" in status


@pytest.mark.parametrize("override, expected", [
    (dict(mask="wide"), r"mask='48x32 px' is not allowed: the image's size 32x32 px or its aspect ratio"),
    (dict(mask="empty"), r"mask='<32x32 px, nothing white at 16x16>' is not allowed"),
    (dict(mask="full"), r"mask='<32x32 px, all white>' is not allowed: a mask that keeps some of the image"),
    # the API's default mask_drawing is the editor's empty value: nothing painted, nothing uploaded
    (dict(mask=None), r"mask_drawing='<nothing painted>' is not allowed: .*or upload a mask"),
    (dict(mask=None, mask_drawing={"background": None, "layers": [], "composite": None}),
     r"mask_drawing='<nothing painted>' is not allowed"),
    (dict(method="unet"), r"method='unet' is not allowed: 'blend' or 'auto' with tiny-test: 'unet' needs a 9-channel"),
    (dict(method="x"), r"method='x' is not allowed: one of \['auto', 'blend', 'unet'\]"),
    (dict(strength=0), r"strength=0 is not allowed"),
    (dict(strength=1.5), r"strength=1.5 is not allowed"),
])
def test_bad_inpaint_input_is_named(client, files, override, expected):
    kwargs = dict(image=files["image"], mask=files["mask"], steps=2) | override
    if isinstance(kwargs["mask"], str):
        kwargs["mask"] = files[kwargs["mask"]]
    with pytest.raises(Exception, match=expected):
        client.predict(**kwargs, api_name="/inpaint")
    assert "Inpainted" in client.predict(image=files["image"], mask=files["mask"], steps=2, api_name="/inpaint")[1]


def test_an_inpainting_model_refuses_generate_and_img2img_and_inpaints(client):  # client: the engine put back after
    """Handlers called directly on a 9-channel engine (the server above keeps the 4-channel one)."""
    import gradio as gr

    from labapp import engine as eng
    from labapp import engine_from_pipe
    from labapp.generate import generate
    from labapp.img2img import img2img
    from labapp.inpaint import inpaint
    from pipelines import TracingStableDiffusionPipeline
    from testkit.tiny import make_tiny_components, tiny_inpaint_unet

    image = PIL.Image.fromarray((np.random.RandomState(0).rand(16, 16, 3) * 255).astype("uint8"))
    mask = PIL.Image.fromarray(np.pad(np.full((8, 8), 255, np.uint8), 4))
    pipe = TracingStableDiffusionPipeline(**{**make_tiny_components(), "unet": tiny_inpaint_unet()})
    pipe.set_progress_bar_config(disable=True)
    before = eng.current()
    eng.install(engine_from_pipe(pipe, "tiny-inpaint", "test components"))
    try:
        with pytest.raises(gr.Error, match="takes 9 input channels .*not text-to-image or img2img"):
            img2img(image, "a red circle", strength=0.5, steps=2)
        with pytest.raises(gr.Error, match="takes 9 input channels"):
            list(generate("a red circle", "", "DDIM", 2, 3.0, 0, width=16, height=16, preview_every=0))
        with pytest.raises(gr.Error, match=r"method='blend' is not allowed: 'unet' or 'auto' with tiny-inpaint"):
            inpaint(image, mask, method="blend", steps=2)
        _, status, _, _, _ = inpaint(image, mask, steps=2)
        assert "by the 9-channel inpainting UNet" in status
        from labapp.warmup import warm_up  # the app's start (sd15-inpaint) warms up by inpainting, not Generate

        assert "one 2-step inpainting: an inpainting model" in warm_up(eng.current())
    finally:
        eng.install(before)
