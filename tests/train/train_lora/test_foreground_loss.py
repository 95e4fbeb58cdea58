"""train_lora.py --foreground_loss_weight: the denoising loss weighted towards the subject on a plain background."""
from __future__ import annotations

import numpy as np
import pytest
import torch


def _images(styles):
    from shapesworld.world import sample

    ss = [sample(5 + i, style=s, empty_prob=0.0) for i, s in enumerate(styles)]
    return torch.from_numpy(np.stack([np.asarray(s.image, np.float32) / 127.5 - 1 for s in ss])).permute(0, 3, 1, 2)


def test_weights_are_higher_on_the_shape_and_average_one():
    from train.train_lora import foreground_weights

    x = _images(["pastel", "night", "outline", None])  # (4, 3, 32, 32)
    w = foreground_weights(x, (8, 8), 10.0)
    assert w.shape == (4, 1, 8, 8)
    torch.testing.assert_close(w.mean(dim=(1, 2, 3)), torch.ones(4))
    subject = ((x - x[..., :1, :1]).abs().amax(dim=1, keepdim=True) > 0.1).float()  # corner = background here
    share = torch.nn.functional.adaptive_avg_pool2d(subject, (8, 8))
    for i in range(4):  # every mostly-shape latent pixel outweighs every background-only one
        assert w[i][share[i] > 0.5].min() > 2 * w[i][share[i] == 0].max(), i
    plain = torch.zeros((2, 3, 32, 32))  # no subject: the loss stays uniform
    torch.testing.assert_close(foreground_weights(plain, (8, 8), 10.0), torch.ones((2, 1, 8, 8)))
    torch.testing.assert_close(foreground_weights(x, (8, 8), 0.0), torch.ones((4, 1, 8, 8)))


def test_the_flag_is_checked():
    from train.lora_args import parse_args

    with pytest.raises(ValueError, match="--foreground_loss_weight=-1.0"):
        parse_args(["--pretrained_model_name_or_path", "m", "--shapes_style", "night", "--foreground_loss_weight", "-1"])
