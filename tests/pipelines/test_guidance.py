"""Each guidance method against its formula on hand-made tensors; expected numbers worked out by
hand in the comments (never by calling the function under test twice)."""
import math

import pytest
import torch

from pipelines.guidance import (
    GUIDANCE_METHODS,
    APGParams,
    CFGZeroParams,
    GuidanceConfig,
    Guider,
    PerpNegParams,
    apg,
    cfg,
    cfg_zero_star,
    in_guidance_interval,
    optimized_scale,
    perp_neg,
    rescale_cfg,
    scheduled_scale,
)


def t(*rows):
    """Rows of 2 numbers -> (B, 1, 1, 2) tensor: each row is one sample."""
    return torch.tensor(rows, dtype=torch.float64).view(len(rows), 1, 1, 2)


def close(a, *rows, tol=1e-6):
    torch.testing.assert_close(a, t(*rows), atol=tol, rtol=0)


def test_cfg():
    # u + w (c - u) = [1, 2] + 3 [2, 3] = [7, 11]
    close(cfg(t([1, 2]), t([3, 5]), 3.0), [7, 11])
    close(cfg(t([1, 2]), t([3, 5]), 1.0), [3, 5])  # w = 1: conditional only


def test_rescale_cfg():
    # std (unbiased) of c = [0, 4]: sqrt(8) ; of g = [1, 3]: sqrt(2) ; ratio 2 -> rescaled [2, 6]
    # phi = 0.5: 0.5 [2, 6] + 0.5 [1, 3] = [1.5, 4.5]
    close(rescale_cfg(t([1, 3]), t([0, 4]), 0.5), [1.5, 4.5])
    close(rescale_cfg(t([1, 3]), t([0, 4]), 1.0), [2, 6])
    close(rescale_cfg(t([1, 3]), t([0, 4]), 0.0), [1, 3])


@pytest.mark.parametrize(
    "schedule, expected",
    [
        ("constant", [5, 5, 5, 5, 5]),
        ("linear-up", [1, 3, 5, 7, 9]),  # 1 + 4 * 2p, p = 0, .25, .5, .75, 1
        ("linear-down", [9, 7, 5, 3, 1]),
        # 1 + 4 (1 - cos(pi p)): p = .25 -> 1 + 4 (1 - 0.70711) = 2.17157; p = .75 -> 1 + 4 * 1.70711 = 7.82843
        ("cosine", [1, 2.171573, 5, 7.828427, 9]),
    ],
)
def test_scheduled_scale(schedule, expected):
    got = [scheduled_scale(5.0, schedule, i, 5) for i in range(5)]
    assert got == pytest.approx(expected, abs=1e-5)


def test_scheduled_scale_single_step_and_bad_name():
    assert scheduled_scale(7.0, "linear-up", 0, 1) == 1.0  # p = 0 for one step
    with pytest.raises(ValueError, match="'cosine'"):
        scheduled_scale(7.0, "exp", 0, 3)


def test_guidance_interval():
    interval = (0.28, 5.42)  # EDM2's (sigma_lo, sigma_hi]
    assert [in_guidance_interval(s, interval) for s in (0.28, 0.3, 5.42, 5.5)] == [False, True, True, False]
    assert in_guidance_interval(100.0, None)


def test_apg_projection_and_threshold():
    # D_c = [1, 0], D_u = [0, 1]: d = [1, -1], ||d|| = sqrt2 > r = 1 -> d = [.70711, -.70711]
    # d_par = (<d, D_c> / <D_c, D_c>) D_c = [.70711, 0]; d_perp = [0, -.70711]
    cond, uncond = t([1, 0]), t([0, 1])
    out, running = apg(uncond, cond, 3.0, None, momentum=-0.5, norm_threshold=1.0, eta=0.0)
    close(out, [1, -1.414214])  # D_c + 2 d_perp
    close(running, [1, -1])  # the momentum buffer keeps d before the threshold
    out, _ = apg(uncond, cond, 3.0, None, momentum=-0.5, norm_threshold=1.0, eta=1.0)
    close(out, [2.414214, -1.414214])  # eta = 1: D_c + 2 d


def test_apg_momentum():
    # with running [1, -1], beta = -0.5: d = [1, -1] - 0.5 [1, -1] = [.5, -.5]; r = 0 (off)
    # d_par = [.5, 0], d_perp = [0, -.5]; out = [1, 0] + 2 [0, -.5] = [1, -1]
    out, running = apg(t([0, 1]), t([1, 0]), 3.0, t([1, -1]), momentum=-0.5, norm_threshold=0.0, eta=0.0)
    close(out, [1, -1])
    close(running, [0.5, -0.5])


def test_cfg_zero_star_per_sample():
    # sample 1: c = [3, 1], u = [1, 1]: s* = 4 / 2 = 2; out = 2u + 2 (c - 2u) = [2, 2] + [2, -2] = [4, 0]
    # sample 2: c = [1, 1], u = [2, 0]: s* = 2 / 4 = .5; out = [1, 0] + 2 ([1, 1] - [1, 0]) = [1, 2]
    cond, uncond = t([3, 1], [1, 1]), t([1, 1], [2, 0])
    assert optimized_scale(uncond, cond).flatten().tolist() == pytest.approx([2.0, 0.5])
    close(cfg_zero_star(uncond, cond, 2.0, step=1, zero_init_steps=1), [4, 0], [1, 2])
    close(cfg_zero_star(uncond, cond, 2.0, step=0, zero_init_steps=1), [0, 0], [0, 0])  # zero-init
    # without s*: plain CFG, u + 2 (c - u) = [5, 1] and [0, 2]
    close(cfg_zero_star(uncond, cond, 2.0, step=3, zero_init_steps=1, use_optimized_scale=False), [5, 1], [0, 2])


def test_perp_neg():
    # d_pos = [1, 0], d_neg = [1, 1]; along d_pos: [1, 0]; perpendicular: [0, 1]
    # out = u + 2 d_pos - 1 * [0, 1] = [2, -1]
    close(perp_neg(t([0, 0]), t([1, 0]), t([1, 1]), 2.0, 1.0), [2, -1])
    # a negative exactly along the positive direction is removed entirely: out = u + w d_pos
    close(perp_neg(t([0, 0]), t([1, 0]), t([3, 0]), 2.0, 1.0), [2, 0])


def test_guider_keeps_apg_state_per_generation():
    config = GuidanceConfig(method="apg", scale=3.0, apg=APGParams(momentum=-0.5, norm_threshold=0.0, eta=0.0))
    def ident(x):  # predictions already denoised
        return x

    cond, uncond = t([1, 0]), t([0, 1])
    guider = Guider(config, enabled=True)
    # step 0: d = [1, -1]: d_perp = [0, -1] -> [1, -2]; step 1: as in test_apg_momentum -> [1, -1]
    close(guider.combine([uncond, cond], 3.0, 0, ident, ident), [1, -2])
    close(guider.combine([uncond, cond], 3.0, 1, ident, ident), [1, -1])
    close(Guider(config, enabled=True).combine([uncond, cond], 3.0, 0, ident, ident), [1, -2])  # fresh buffer


def test_guider_scale_at_interval_and_disabled():
    g = Guider(GuidanceConfig(scale=4.0, interval=(0.4, 1.0), interval_space="fraction"), enabled=True)
    assert [g.scale_at(i, 3, None) for i in range(3)] == [1.0, 4.0, 4.0]  # p = 0, .5, 1
    g = Guider(GuidanceConfig(scale=4.0, interval=(1.0, 10.0)), enabled=True)
    assert [g.scale_at(0, 3, s) for s in (14.6, 5.0, 0.5)] == [1.0, 4.0, 1.0]
    g = Guider(GuidanceConfig(scale=4.0), enabled=False)
    assert g.scale_at(0, 3, 1.0) == 1.0 and g.num_branches == 1
    close(g.combine([t([5, 6])], 1.0, 0), [5, 6])


def test_guider_rescale_after_method_and_perp_neg_branches():
    g = Guider(GuidanceConfig(method="perp-neg", scale=2.0, rescale=0.0), enabled=True)
    assert g.num_branches == 3
    close(g.combine([t([0, 0]), t([1, 0]), t([1, 1])], 2.0, 0), [2, -1])
    # cfg then rescale, phi = 1: u = [1, 1], c = [1, 2], w = 2 -> guided [1, 3];
    # std(c) = sqrt(.5), std(guided) = sqrt(2): times .5 -> [.5, 1.5]
    g = Guider(GuidanceConfig(scale=2.0, rescale=1.0), enabled=True)
    close(g.combine([t([1, 1]), t([1, 2])], 2.0, 0), [0.5, 1.5])


def test_cfg_zero_star_zero_init_skips_rescale():
    g = Guider(GuidanceConfig(method="cfg-zero-star", scale=3.0, rescale=0.7, cfgzero=CFGZeroParams(2)), enabled=True)
    out = g.combine([t([1, 1]), t([3, 1])], 3.0, 1)
    close(out, [0, 0])  # std 0 would give nan if rescaled


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(method="pag"), "method='pag'.*'cfg', 'apg', 'cfg-zero-star', 'perp-neg'"),
        (dict(scale=float("nan")), "scale=nan"),
        (dict(scale=float("inf")), "scale=inf"),
        (dict(rescale=float("nan")), "rescale=nan"),
        (dict(schedule="exp"), "schedule='exp'"),
        (dict(interval=(2.0, 1.0)), r"interval=\(2.0, 1.0\)"),
        (dict(interval_space="time"), "interval_space='time'"),
        (dict(cfgzero=CFGZeroParams(zero_init_steps=-1)), "zero_init_steps=-1"),
        (dict(apg=APGParams(momentum=math.nan)), "apg.momentum=nan"),
        (dict(perpneg=PerpNegParams(negative_scale=math.inf)), "negative_scale=inf"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GuidanceConfig(**kwargs)


def test_config_resolution_and_peak():
    c = GuidanceConfig(schedule="linear-up").resolved(7.5, 0.3)
    assert (c.scale, c.rescale) == (7.5, 0.3) and c.peak_scale() == 14.0
    assert GuidanceConfig(scale=2.0).resolved(7.5, 0.0).scale == 2.0
    assert set(GUIDANCE_METHODS) == {"cfg", "apg", "cfg-zero-star", "perp-neg", "classifier", "classifier+cfg"}
