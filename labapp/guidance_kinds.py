"""CFG lab, "Classifier vs classifier-free" (issue 15): the handler of /compare_guidance_kinds.

Same prompt and seed under classifier guidance (CG, the UNet sees only the empty prompt), CFG and
CG+CFG; adherence curves over shapes-world prompts (the scorer); UNet and classifier calls and
seconds per image (counted by pipelines.guidance_eval); per step, the classifier's probability
of the prompt's attributes; the classifier gradient next to |eps_c - eps_u| at one step.
The runs go through engine.measure_guidance_kind (the app's one door to the pipeline).
"""
from __future__ import annotations

import math

import gradio as gr
from matplotlib.figure import Figure

from pipelines.guidance import DEFAULT_CLASSIFIER_SCALE

from . import engine as eng
from . import plots
from . import validation as check
from .generate import CLASSIFIER_SCALE_RANGE, GUIDANCE_RANGE, MAX_STEPS
from .images import upscale

GRID_SIZE = 160
MAX_ADHERENCE_PROMPTS = 32
ADHERENCE_SEED = 20_000  # shapes-world samples 20000.. name the targets of the adherence prompts
KIND_COLORS = {"uncond": plots.PALETTE[6], "cfg": plots.PALETTE[0], "classifier": plots.PALETTE[2],
               "classifier+cfg": plots.PALETTE[3]}

FORMULAS = r"""
**Classifier guidance** (Dhariwal & Nichol 2021): a separately trained, noise-aware classifier
adds its gradient to the unconditional score,
$\nabla \log p(x_t|y) = \nabla \log p(x_t) + s\,\nabla \log p(y|x_t)$, i.e.
$\hat\varepsilon = \varepsilon(x_t, \varnothing) - s\,\sqrt{1-\bar\alpha_t}\,\nabla_{x_t} \log p(y|x_t)$
(one UNet call and one classifier backward pass per step; the UNet never reads the prompt).
**Classifier-free guidance** (Ho & Salimans 2022): the same model's conditional and unconditional
predictions, $\tilde\varepsilon = \varepsilon(x_t, \varnothing) + w\,(\varepsilon(x_t, y) - \varepsilon(x_t, \varnothing))$
(two UNet calls per step). CG+CFG adds the classifier term to the CFG prediction.
"""


def _run(kind, prompts, seeds, targets=None, mentioned=None, **kwargs):
    return eng.measure_guidance_kind(kind, prompts, seeds, targets, mentioned, **kwargs)


class _CountedRuns:
    """``_run`` that reports "k / n runs" to gr.Progress before each run (the comparison takes tens of
    seconds on CPU: the status line shows how far it is; the lab's Stop button cancels it)."""

    def __init__(self, progress, total: int):
        self.progress, self.total, self.done = progress, total, 0

    def __call__(self, *args, **kwargs):
        if self.progress is not None:
            self.progress((self.done, self.total), desc="guidance runs", unit="runs")
        self.done += 1
        return _run(*args, **kwargs)


def _adherence_figure(cg_scales, cfg_scales, curves: dict, guidance_scale: float, n_prompts: int) -> Figure:
    """Mean adherence per kind: CG and CG+CFG against s (bottom axis), CFG against w (top axis)."""
    fig, (ax,) = plots._figure(6.4, 3.2)
    ax.plot(cg_scales, curves["classifier"], marker="o", ms=4, color=KIND_COLORS["classifier"], label="CG (s)")
    ax.plot(cg_scales, curves["classifier+cfg"], marker="s", ms=4, color=KIND_COLORS["classifier+cfg"],
            label=f"CG+CFG (s, w = {guidance_scale:g})")
    ax.axhline(curves["uncond"], color=KIND_COLORS["uncond"], ls=":", label="unconditional")
    ax.set_ylim(-0.03, 1.03)
    plots._style(ax, f"Prompt adherence, mean of 5 attributes ({n_prompts} prompts)", "classifier scale s", "accuracy")
    top = ax.twiny()
    top.plot(cfg_scales, curves["cfg"], marker="^", ms=4, color=KIND_COLORS["cfg"], label="CFG (w, top axis)")
    top.set_xlabel("CFG scale w", fontsize=9)
    top.tick_params(labelsize=8)
    lines = ax.get_lines() + top.get_lines()
    ax.legend(lines, [l.get_label() for l in lines], fontsize=8, loc="lower right")
    return fig


def _probability_figure(traces: dict) -> Figure:
    """Per step, the classifier's probability of the prompt's attributes (product over the named
    ones = exp log p(y|x_t)) for each kind's run."""
    fig, (ax,) = plots._figure(6.4, 3.0)
    for kind, trace in traces.items():
        steps = [r.step for r in trace]
        joint = [math.exp(r.classifier["log_prob"][0]) for r in trace]
        ax.plot(steps, joint, marker="o", ms=3, color=KIND_COLORS[kind], label=kind)
    ax.set_ylim(-0.03, 1.03)
    plots._style(ax, "Classifier's p(prompt's attributes | x_t) per step: when does the sample decide?", "step",
                 "p(y | x_t)")
    ax.legend(fontsize=8)
    return fig


# model calls per image and step of each kind: UNet rows (2 with CFG) plus one classifier pass with CG
KIND_CALLS = {"uncond": 1, "cfg": 2, "classifier": 2, "classifier+cfg": 3}
DEFAULT_ADHERENCE_PROMPTS = 3  # the defaults (4 CFG and 5 CG scales) fit the budget at 25 steps


def request_cost(steps: int, n_cfg: int, n_cg: int, n_prompts: int) -> int:
    """Model calls of one comparison (everything ``compare_guidance_kinds`` runs), counted as
    engine.request_cost counts them: calls per step x steps x images."""
    calls = KIND_CALLS
    grid = n_cg * calls["classifier"] + n_cfg * calls["cfg"]
    traced = calls["classifier"] + calls["classifier+cfg"] + calls["classifier"] + calls["classifier+cfg"]
    adherence = n_prompts * (calls["uncond"] + n_cg * (calls["classifier"] + calls["classifier+cfg"]) + n_cfg * calls["cfg"])
    return steps * (grid + traced + adherence)


def within_budget(steps: int, n_cfg: int, n_cg: int, n_prompts: int) -> None:
    """Refuse a comparison over engine.MODEL_CALL_BUDGET before anything runs (issue 30: 40 steps
    held the pipeline slot 219 s)."""
    cost = request_cost(steps, n_cfg, n_cg, n_prompts)
    if cost > eng.MODEL_CALL_BUDGET:
        raise gr.Error(f"compare_guidance_kinds: this request needs {cost} model calls (steps x (UNet rows + classifier "
                       f"passes) x images); the budget is {eng.MODEL_CALL_BUDGET} model calls per request "
                       "(MODEL_CALL_BUDGET, the largest single /generate). Use fewer steps, scales or adherence prompts.",
                       title="Too much work for one request")


ADHERENCE_KEYS = ("shape", "color", "size", "h", "v")  # mean_adherence's attributes (h, v: position)


def _adherence(measure, engine, seed: int, n_prompts: int, cg_list, cfg_list, w: float, common: dict):
    """(adherence figure, table) over ``n_prompts`` shapes-world prompts: each attribute's accuracy
    (the scorer) and the cost in model calls, not wall time (CPU timings of runs this small are noise)."""
    if not (engine.is_embedded and n_prompts > 0):
        why = "0 prompts asked" if engine.is_embedded else "the scorer reads shapes-world images: load the embedded model"
        return None, f"Adherence curves skipped ({why})."
    from shapesworld import full_caption, sample
    from pipelines.guidance_eval import mean_adherence

    samples = [sample(ADHERENCE_SEED + i, empty_prob=0.0) for i in range(n_prompts)]
    batch = dict(prompts=[full_caption(x.attributes) for x in samples], seeds=[seed + i for i in range(n_prompts)],
                 targets=[x.attributes for x in samples], mentioned=None, **common)
    runs = {"uncond": [measure("uncond", **batch)],
            "classifier": [measure("classifier", classifier_scale=v, **batch) for v in cg_list],
            "cfg": [measure("cfg", cfg_scale=v, **batch) for v in cfg_list],
            "classifier+cfg": [measure("classifier+cfg", cfg_scale=w, classifier_scale=v, **batch) for v in cg_list]}
    curves = {k: [mean_adherence(x.adherence, ADHERENCE_KEYS) for x in v] for k, v in runs.items()}
    curves["uncond"] = curves["uncond"][0]
    rows = []
    for kind, kind_runs in runs.items():
        for x in kind_runs:
            a = x.adherence
            rest = " | ".join(f"{a.get(k, float('nan')):.2f}" for k in ADHERENCE_KEYS[2:])
            rows.append(f"| {kind} | {x.cfg_scale:g} | {x.classifier_scale:g} | {a['shape']:.2f} | {a['color']:.2f} | "
                        f"{mean_adherence(a, ADHERENCE_KEYS):.2f} | {x.unet_calls_per_image:g} | "
                        f"{x.classifier_calls_per_image:g} | {rest} |")
    table = ("| kind | w | s | shape | color | mean (shape, color, size, h, v) | UNet evaluations / image | "
             "classifier passes / image | size | h position | v position |\n"
             "|---|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows))
    return _adherence_figure(cg_list, cfg_list, curves, w, n_prompts), table


@check.gradio_errors
def compare_guidance_kinds(prompt="a red circle", seed=0, steps=25, scheduler="DDIM", guidance_scale=3.0,
                           cfg_scales="1, 1.5, 3, 5", classifier_scales="0, 2, 4, 8, 16",
                           classifier_scale=DEFAULT_CLASSIFIER_SCALE, adherence_prompts=DEFAULT_ADHERENCE_PROMPTS, heat_step=0.5,
                           progress=gr.Progress()):
    """Classifier vs classifier-free guidance on one prompt and seed (see the module docstring).

    Returns (grid, adherence plot, cost table, per-step probability plot, gradient heat map,
    |eps_c - eps_u| heat map, note).
    """
    engine = eng.current()
    if getattr(engine.pipe, "classifier", None) is None:
        raise gr.Error(f"model {engine.model_id!r} has no noise-aware classifier (the embedded tiny-shapes model ships "
                       "one in models/tiny-shapes/classifier/): this comparison reads the shapes classifier and its "
                       "scorer, so it is not available. CLIP guidance (guidance_method 'classifier' with "
                       "--clip-guidance-model) still works on Generate and /generate", title="No classifier")
    prompt = check.text("prompt", prompt, required=True)
    seed = check.integer("seed", seed, 0, check.MAX_SEED)
    steps = check.integer("steps", steps, 2, MAX_STEPS)
    scheduler = check.choice("scheduler", scheduler, eng.known_schedulers())
    w = check.number("guidance_scale", guidance_scale, *GUIDANCE_RANGE)
    cfg_list = check.number_list("cfg_scales", cfg_scales, *GUIDANCE_RANGE, at_most=6)
    cg_list = check.number_list("classifier_scales", classifier_scales, *CLASSIFIER_SCALE_RANGE, at_most=6)
    s = check.number("classifier_scale", classifier_scale, *CLASSIFIER_SCALE_RANGE)
    n_prompts = check.integer("adherence_prompts", adherence_prompts, 0, MAX_ADHERENCE_PROMPTS)
    heat_fraction = check.number("heat_step", heat_step, 0.0, 1.0)
    within_budget(steps, len(cfg_list), len(cg_list), n_prompts if engine.is_embedded else 0)
    common = dict(steps=steps, scheduler=scheduler)

    adherence_runs = (1 + 2 * len(cg_list) + len(cfg_list)) if engine.is_embedded and n_prompts > 0 else 0
    measure = _CountedRuns(progress, len(cg_list) + len(cfg_list) + 4 + adherence_runs)
    # 1. Same prompt and seed: CG over s, CFG over w (images), and the three traced runs
    grid = []
    for value in cg_list:
        image_run = measure("classifier", [prompt], [seed], classifier_scale=value, **common)
        grid.append((upscale(image_run.images[0], GRID_SIZE), f"CG s = {value:g}"))
    for value in cfg_list:
        image_run = measure("cfg", [prompt], [seed], cfg_scale=value, **common)
        grid.append((upscale(image_run.images[0], GRID_SIZE), f"CFG w = {value:g}"))
    # s = 0 keeps the classifier's readout at no change to the image (bit-for-bit the plain run)
    traced = {
        "uncond": measure("classifier", [prompt], [seed], classifier_scale=0.0, record="light", **common),
        "cfg": measure("classifier+cfg", [prompt], [seed], cfg_scale=w, classifier_scale=0.0, record="light", **common),
        "classifier": measure("classifier", [prompt], [seed], classifier_scale=s, record="light", **common),
        "classifier+cfg": measure("classifier+cfg", [prompt], [seed], cfg_scale=w, classifier_scale=s, record="full",
                               **common),
    }
    prob_fig = _probability_figure({k: r.traces[0] for k, r in traced.items()})
    trace = traced["classifier+cfg"].traces[0]
    r = trace[min(len(trace) - 1, round(heat_fraction * (len(trace) - 1)))]
    grad_map = r.classifier["grad"][0].abs().mean(dim=0).numpy()  # (h, w) mean over channels
    grad_heat = plots.heatmap(grad_map, f"|grad log p(y|x_t)|, step {r.step + 1}", cmap="viridis", label="|g|")
    eps_heat = None
    if r.eps_cond is not None and r.eps_uncond is not None:
        eps_map = (r.eps_cond[0] - r.eps_uncond[0]).abs().mean(dim=0).numpy()
        eps_heat = plots.heatmap(eps_map, f"|eps_c - eps_u|, step {r.step + 1}", label="|difference|")

    # 2. Adherence curves and costs over shapes-world prompts (embedded model only: the scorer)
    adherence_fig, table = _adherence(measure, engine, seed, n_prompts, cg_list, cfg_list, w, common)
    note = (f"Traced runs: w = {w:g}, s = {s:g}; heat maps at step {r.step + 1} / {r.num_steps} "
            f"(t = {r.timestep:.0f}). A classifier pass is one forward and one backward through the classifier.")
    return grid, adherence_fig, table, prob_fig, grad_heat, eps_heat, note
