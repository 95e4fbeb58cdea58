"""Fine-tune one half of the embedded model's VAE on the shapes-world styles, the other half frozen.

    python train/finetune_vae.py --part decoder --steps 3000 --threads 1
    python train/finetune_vae.py --part encoder --encoder_styles night --steps 1200 --threads 1
    python train/finetune_vae.py --part decoder --combinations outline+night --steps 1500 --threads 1

Why: a style LoRA can only be as good as decode(encode(styled image)). After train_base.py's short
decoder stage (400 steps, ~1 epoch of its pool) the scorer read the VAE round trip of night images
with color right in 78% and shape in 47%, outline color 56%, pastel color 52% (plain: 99% / 94%):
the style LoRAs could not reach their color/shape targets through that decoder whatever they
learned. The encoder stays frozen, so the latent space and with it the base UNet are untouched;
plain images stay a quarter of every batch so their reconstructions do not drift.

Checkpoints (decoder + optimizer + step) go to --work_dir every --checkpointing_steps and the run
resumes from the latest one; the model's vae/ folder is replaced only at the end, by rename.
The scorer's reading of the round trip, before and after, is printed and stored in
<model>/training.json under vae.decoder_styles_extra.

--part encoder: the decoder (and so every image the base model generates) stays bit-identical. The
decoder fine-tune cannot bring back what the encoder throws away: night images, which the encoder never
saw while train_base.py trained it, come back with the corners of small shapes rounded off (shape read
right in 73%), which caps what a night LoRA can show. The encoder learns to reconstruct the
--encoder_styles images through the frozen decoder, while for every other kind its posterior is held
to the original encoder's (mean and log-variance), so the latents the UNet and the other LoRAs were
trained on do not move; the largest drift is measured and stored (vae.encoder_styles).

--partial: part-way styles (what a LoRA at a partial weight draws) join the pools; --partial_share
sets how many of each style kind's images are drawn part-way (default 0.5).

--keep_latents: a preservation term. A decoder trained on encoded renders drifts on what users see,
decoded *generated* latents (which lie a little off the encoder's manifold): a --partial decoder
alone cost pastel at weight 1 color 0.93 -> 0.77 on the embedded model. With a file of generated
latents (train/keep_latents.py: base, each style at 1, outline + night at 1 + 1), every step also
holds the decoder's pictures of --keep_batch of them to the pictures the VAE drew before this run
(or --keep_teacher's), weighted by --keep_weight. Several files may be given, comma-separated; latents
of a partial weight ("pastel@0.5") are never kept as they are (their pictures are what is being fixed).

--line_weight: a style dial that stays a dial after decoding. A LoRA at weight w generates latents close to
the straight line between the base model's latent and the full style's (pastel at 0.5 and 0.7: 8% of the
line's length off it, at 0.55 and 0.73 of the way), and the shipped decoder draws that line through other
hues: the blend of the two latents halfway reads the prompt's color in 73% of 30 prompts, the blend of
the two pictures in 100% (red turns orange, blue purple). The line term holds the decoder's picture of
lerp(z_base, z_style, t), t drawn in [0, 1], to lerp(picture(z_base), picture(z_style), t) with the
pictures the teacher drew, for each prompt of --keep_latents that has both; and with latents the UNet
generates at partial weights in the files, the picture of each one to the blend at its own place
along its line (the projection). --line_batch latents a step, weighted by --line_weight.

--combinations: style combinations become kinds of their own, in every batch next to plain and the
single styles. Two style LoRAs used together make images of the combined style, and the decoder had
never seen one: the round trip of outline + night renders read hollow 20% of the time, which capped
outline + night at about that. The record goes to vae.<part>_combinations; the earlier ones stay.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


from shapesworld import score_image
from shapesworld.world import STYLES, images_array, sample, style_parts
from train.common import warmup_cosine
from train.pair_pictures import check_pair, compose_pairs
from train.train_base import to_model_space

KINDS = (None,) + STYLES


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models/tiny-shapes")
    p.add_argument("--part", choices=("decoder", "encoder"), default="decoder", help="which half of the VAE learns")
    p.add_argument("--encoder_styles", default="night",
                   help="--part encoder: comma-separated styles (or --combinations) whose reconstruction the encoder "
                        f"learns; the other kinds are anchored to the original encoder (styles: {', '.join(STYLES)})")
    p.add_argument("--combinations", default="",
                   help="comma-separated style combinations trained as kinds of their own next to plain and the single "
                        "styles, e.g. 'outline+night,night+pastel' (what a user gets blending two style LoRAs)")
    p.add_argument("--partial", action="store_true",
                   help="also styles drawn part-way: half of every style kind's images get each style part at a "
                        "strength drawn in [0, 1] (shapesworld render strengths), what a LoRA at a partial weight "
                        "draws; the round trip is also read at strength 0.5 (kind@0.5)")
    p.add_argument("--partial_share", type=float, default=0.5,
                   help="--partial: share of each style kind's training images drawn part-way (default 0.5)")
    p.add_argument("--keep_latents", default=None,
                   help="a .pt file of generated latents (train/keep_latents.py): the decoder's pictures of them are "
                        "held to the teacher's")
    p.add_argument("--keep_teacher", default=None,
                   help="--keep_latents: the VAE folder whose pictures are kept (default: the VAE before this run)")
    p.add_argument("--keep_weight", type=float, default=1.0, help="--keep_latents: weight of the preservation term")
    p.add_argument("--keep_batch", type=int, default=16, help="--keep_latents: latents per step")
    p.add_argument("--line_weight", type=float, default=0.0,
                   help="--keep_latents: weight of the line term (0: off): latents between the base's and a full "
                        "style's, and the UNet's own partial-weight ones, drawn as the blend of the two pictures")
    p.add_argument("--line_batch", type=int, default=16, help="--line_weight: latents per step")
    p.add_argument("--compose_pairs", default="",
                   help="--keep_latents: comma-separated pairs with pastel (outline+pastel,night+pastel) whose teacher "
                        "pictures are replaced by a composition of the single styles' pictures (train/pair_pictures.py)")
    p.add_argument("--compose_partial", action="store_true",
                   help="--compose_pairs: also compose those pairs' latents at a partial weight (night+pastel@0.7) "
                        "from the singles at the same weight (pastel@0.7, night@0.7) where the files hold them; "
                        "these are held to their composed picture in the preservation term, not put on a line")
    p.add_argument("--chroma_weight", type=float, default=0.0,
                   help="--keep_latents / --line_weight: also weigh the error of each pixel's color away from its grey "
                        "(RGB minus its mean) by this much: a hue shift of a washed-out color is a small RGB error")
    p.add_argument("--anchor_weight", type=float, default=1.0, help="--part encoder: weight of the anchor loss")
    p.add_argument("--work_dir", default=None, help="default runs/vae-<part>")
    p.add_argument("--steps", type=int, default=2500)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--per_kind", type=int, default=3000, help="rendered images per kind (plain + each style)")
    p.add_argument("--eval_per_kind", type=int, default=200)
    p.add_argument("--checkpointing_steps", type=int, default=250)
    p.add_argument("--seed", type=int, default=4321)
    p.add_argument("--threads", type=int, default=0)
    return p.parse_args(argv)


def read_keep_latents(files: list[str]) -> tuple[torch.Tensor, list[tuple[str, int]]]:
    """The latents of train/keep_latents.py files, concatenated, with each one's (setting label, case index).
    Files without case indices (older ones) number each setting's latents in order."""
    latents, labels = [], []
    for f in files:
        data = torch.load(f, weights_only=True)
        settings = data["settings"]
        cases = data.get("cases")
        if cases is None:
            cases, seen = [], {}
            for s in settings:
                cases.append(seen.get(s, 0))
                seen[s] = cases[-1] + 1
        labels += [(s, int(c)) for s, c in zip(settings, cases)]
        latents.append(data["latents"].float())
    return torch.cat(latents), labels


def line_pairs(z: torch.Tensor, labels: list[tuple[str, int]], skip: set[int] = frozenset()) -> dict:
    """For the line term: ``ends`` (n, 2) indices of (base, full style) latents of one prompt, and ``mids``
    (m, 3) indices (partial-weight latent, base, full style) with ``t`` (m,), each mid's place along its line
    (the projection, clipped to [0, 1]). A partial-weight latent whose line lacks an end, or in ``skip`` (held
    to a picture of its own), is left out."""
    index = {lab: i for i, lab in enumerate(labels)}
    ends, mids, ts = [], [], []
    for i, (label, case) in enumerate(labels):
        style, _, weight = label.partition("@")
        if label == "base" or (weight and i in skip):
            continue
        b, f = index.get(("base", case)), index.get((style, case))
        if b is None or f is None:
            continue
        if not weight:
            ends.append((b, f))
            continue
        d, r = (z[f] - z[b]).flatten(), (z[i] - z[b]).flatten()
        mids.append((i, b, f))
        ts.append(float(((r @ d) / (d @ d).clamp_min(1e-12)).clamp(0.0, 1.0)))
    return {"ends": torch.tensor(ends, dtype=torch.long).reshape(-1, 2),
            "mids": torch.tensor(mids, dtype=torch.long).reshape(-1, 3), "t": torch.tensor(ts)}


def picture_loss(drawn: torch.Tensor, goal: torch.Tensor, chroma_weight: float = 0.0) -> torch.Tensor:
    """MSE + 0.5 L1 of decoded pictures against their goal, plus ``chroma_weight`` x the MSE of the pixels' colors
    away from grey (each pixel's RGB minus its mean), where a hue shift of a pale color shows."""
    loss = F.mse_loss(drawn, goal) + 0.5 * F.l1_loss(drawn, goal)
    if chroma_weight:
        loss = loss + chroma_weight * F.mse_loss(drawn - drawn.mean(1, keepdim=True), goal - goal.mean(1, keepdim=True))
    return loss


def line_batch(lines: dict, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` latents on the lines and the pictures they should decode to: half drawn at t ~ U[0, 1] between the
    ends (all of them when there are no partial-weight latents), the rest the UNet's own partial-weight latents."""
    z, pics = lines["latents"], lines["pictures"]
    n_mid = n // 2 if len(lines["mids"]) else 0
    pick = lines["ends"][torch.randint(len(lines["ends"]), (n - n_mid,), generator=g)]
    t = torch.rand(n - n_mid, generator=g)[:, None, None, None]
    zs = [(1 - t) * z[pick[:, 0]] + t * z[pick[:, 1]]]
    goals = [(1 - t) * pics[pick[:, 0]] + t * pics[pick[:, 1]]]
    if n_mid:
        k = torch.randint(len(lines["mids"]), (n_mid,), generator=g)
        m, tm = lines["mids"][k], lines["t"][k][:, None, None, None]
        zs.append(z[m[:, 0]])
        goals.append((1 - tm) * pics[m[:, 1]] + tm * pics[m[:, 2]])
    return torch.cat(zs), torch.cat(goals)


def render(kind, n: int, base_seed: int, partial: str | float | None = None, share: float = 0.5):
    """``partial``: None (full styles), a strength for every part, or "random" (a ``share`` of the images,
    spread evenly, at strengths drawn in [0, 1] per part, seeded by ``base_seed``; the rest at full
    strength; share 0.5 = every odd image)."""
    if partial is None or kind is None:
        images, _, attrs = images_array(np.arange(n) + base_seed, style=kind, empty_prob=0.0)
        return torch.from_numpy(images), attrs
    parts = style_parts(kind)
    rng = np.random.default_rng([base_seed, 0xD1A1])
    samples = []
    for i in range(n):
        if partial == "random":
            drawn = {p_: float(rng.uniform()) for p_ in parts}  # drawn for every image: a share keeps the seeds
            strengths = drawn if int((i + 1) * share) > int(i * share) else None
        else:
            strengths = {p_: float(partial) for p_ in parts}
        samples.append(sample(int(base_seed + i), style=kind, empty_prob=0.0, strengths=strengths))
    return torch.from_numpy(np.stack([np.asarray(s_.image) for s_ in samples])), [s_.attributes for s_ in samples]


@torch.no_grad()
def round_trip_scores(vae, images: torch.Tensor, attrs) -> dict:
    x = to_model_space(images)
    out = []
    for i in range(0, len(x), 100):
        out.append(vae.decode(vae.encode(x[i:i + 100]).latent_dist.mode()).sample)
    rec = ((torch.cat(out).clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    rs = [score_image(a) for a in rec]
    return {"color": float(np.mean([r.color == a.color for r, a in zip(rs, attrs)])),
            "shape": float(np.mean([r.shape == a.shape for r, a in zip(rs, attrs)])),
            "hollow": float(np.mean([r.hollow for r in rs])),
            "dark": float(np.mean([r.dark_background for r in rs])),
            "saturation": float(np.mean([r.saturation for r in rs if r.found] or [0.0]))}


def table(before: dict, after: dict) -> str:
    lines = ["| images | color before | color after | shape before | shape after | hollow / dark after |",
             "|---|---|---|---|---|---|"]
    for kind in before:
        b, a = before[kind], after[kind]
        lines.append(f"| {kind} | {b['color']:.2f} | {a['color']:.2f} | {b['shape']:.2f} | {a['shape']:.2f} | "
                     f"{a['hollow']:.2f} / {a['dark']:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers import AutoencoderKL

    encoder_part = args.part == "encoder"
    combinations = tuple(c.strip() for c in args.combinations.split(",") if c.strip())
    for c in combinations:
        try:
            parts = style_parts(c)
        except ValueError as e:
            raise SystemExit(f"--combinations={args.combinations!r}: {e}") from None
        if len(parts) < 2:
            raise SystemExit(f"--combinations={args.combinations!r}: {c!r} is a single style (always trained); "
                             "list combinations of two or more joined with '+'")
    if not 0.0 < args.partial_share <= 1.0:
        raise SystemExit(f"--partial_share={args.partial_share}: must be in (0, 1]")
    if args.keep_latents and encoder_part:
        raise SystemExit("--keep_latents holds the decoder's pictures: it goes with --part decoder")
    keep_files = [f.strip() for f in (args.keep_latents or "").split(",") if f.strip()]
    for f in keep_files:
        if not os.path.isfile(f):
            raise SystemExit(f"--keep_latents={args.keep_latents!r}: no such file {f!r} (make one with train/keep_latents.py)")
    if args.keep_weight <= 0 or args.keep_batch < 1:
        raise SystemExit(f"--keep_weight={args.keep_weight}, --keep_batch={args.keep_batch}: must be > 0 and >= 1")
    if args.chroma_weight < 0:
        raise SystemExit(f"--chroma_weight={args.chroma_weight}: must be >= 0")
    if args.line_weight < 0 or args.line_batch < 1:
        raise SystemExit(f"--line_weight={args.line_weight}, --line_batch={args.line_batch}: must be >= 0 and >= 1")
    compose = tuple(c.strip() for c in args.compose_pairs.split(",") if c.strip())
    if compose and not keep_files:
        raise SystemExit("--compose_pairs replaces pictures of --keep_latents latents: give --keep_latents too")
    if args.compose_partial and not compose:
        raise SystemExit("--compose_partial composes the --compose_pairs pairs at partial weights: give --compose_pairs too")
    for c in compose:
        try:
            check_pair(c)
        except ValueError as e:
            raise SystemExit(f"--compose_pairs={args.compose_pairs!r}: {e}") from None
    if args.line_weight and not keep_files:
        raise SystemExit("--line_weight draws lines between latents of --keep_latents: give --keep_latents too")
    kinds = KINDS + tuple(dict.fromkeys(combinations))
    kind_names = [k or "plain" for k in kinds]  # evals, records and checkpoints name them so
    if args.batch_size < len(kinds):
        raise SystemExit(f"--batch_size={args.batch_size} is below the number of kinds ({len(kinds)}): one image of each "
                         "kind per batch at least")
    styles = tuple(s.strip() for s in args.encoder_styles.split(",") if s.strip())
    bad = [s for s in styles if s not in kinds[1:]]
    if encoder_part and (bad or not styles):
        raise SystemExit(f"--encoder_styles={args.encoder_styles!r}: each must be one of "
                         f"{', '.join(k for k in kinds[1:])} (add a combination with --combinations)")
    work_dir = args.work_dir or os.path.join("runs", f"vae-{args.part}" + ("-combinations" if combinations else "")
                                             + ("-partial" if args.partial else ""))
    vae_dir = os.path.join(args.model, "vae")
    vae = AutoencoderKL.from_pretrained(vae_dir).eval()
    os.makedirs(work_dir, exist_ok=True)

    pools, evals = [], {}
    for k, kind in enumerate(kinds):
        images, _ = render(kind, args.per_kind, (args.seed + k) * 1_000_000, "random" if args.partial else None,
                           args.partial_share)
        pools.append(images)
        evals[kind_names[k]] = render(kind, args.eval_per_kind, (args.seed + k) * 1_000_000 + 900_000)
        if args.partial and kind is not None:
            evals[f"{kind_names[k]}@0.5"] = render(kind, args.eval_per_kind, (args.seed + k) * 1_000_000 + 950_000, 0.5)
    before_path = os.path.join(work_dir, "before.json")
    before = json.load(open(before_path)) if os.path.exists(before_path) else None
    if before is None or set(before) != set(evals):
        before = {name: round_trip_scores(vae, *evals[name]) for name in evals}
        json.dump(before, open(before_path + ".tmp", "w"), indent=1)
        os.replace(before_path + ".tmp", before_path)

    keep = lines = None
    if keep_files:  # the teacher's pictures of the generated latents, drawn once
        teacher = AutoencoderKL.from_pretrained(args.keep_teacher).eval() if args.keep_teacher else vae
        z_all, labels = read_keep_latents(keep_files)
        z_all = z_all / vae.config.scaling_factor
        with torch.no_grad():
            pictures = torch.cat([teacher.decode(z_all[i:i + 100]).sample for i in range(0, len(z_all), 100)])
        del teacher
        composed: list[int] = []
        if compose:
            pictures, composed = compose_pairs(pictures, labels, compose, partial=args.compose_partial)
            if not composed:
                raise SystemExit(f"--compose_pairs={args.compose_pairs!r}: no latent of those pairs in {args.keep_latents!r} "
                                 "has the same prompt's pastel (and night) latent beside it")
            print(f"compose pairs: {len(composed)} pictures of {', '.join(compose)} composed from the single styles'")
        # held to their pictures: the full-weight latents, and the partial-weight pairs given a composed picture
        held = torch.tensor(["@" not in label for label, _ in labels])
        held[torch.tensor(composed, dtype=torch.long)] = True
        keep = (z_all[held], pictures[held])
        if args.line_weight:
            lines = line_pairs(z_all, labels, skip=set(composed))
            if not len(lines["ends"]):
                raise SystemExit(f"--line_weight: no prompt in {args.keep_latents!r} has both a 'base' latent and a "
                                 "style's at full weight (train/keep_latents.py --settings)")
            lines["pictures"] = pictures
            lines["latents"] = z_all
            print(f"line term: {len(lines['ends'])} lines, {len(lines['mids'])} partial-weight latents on them")

    # the half that learns: decoder + post_quant_conv, or encoder + quant_conv
    learn = (vae.encoder, vae.quant_conv) if encoder_part else (vae.decoder, vae.post_quant_conv)
    names = ("encoder", "quant_conv") if encoder_part else ("decoder", "post_quant_conv")
    reference = copy.deepcopy(vae).requires_grad_(False) if encoder_part else None  # the original encoder
    vae.requires_grad_(False)
    params = [p_ for m in learn for p_ in m.parameters()]
    for p_ in params:
        p_.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(50, args.steps, floor=0.1))
    start = 0
    ckpt = os.path.join(work_dir, "checkpoint.pt")
    if os.path.exists(ckpt):
        state = torch.load(ckpt, weights_only=True)
        if state.get("part", "decoder") != args.part:
            raise SystemExit(f"{ckpt} is a --part {state.get('part', 'decoder')} checkpoint; this run is --part {args.part}")
        saved_kinds = state.get("kinds", kind_names[:len(KINDS)])  # checkpoints from before --combinations
        if saved_kinds != kind_names:
            raise SystemExit(f"{ckpt} was trained on the kinds {saved_kinds}; this run has {kind_names}: "
                             "give another --work_dir (or the same --combinations)")
        for name, m in zip(names, learn):
            m.load_state_dict(state[name])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start = state["step"]
        print(f"resumed at step {start}")

    per = args.batch_size // len(kinds)
    learned = [k for k, kind in enumerate(kinds) if kind in styles] if encoder_part else list(range(len(kinds)))
    # which rows of every batch (per images of each kind, in kinds order) the encoder learns to reconstruct
    rows = torch.isin(torch.arange(len(kinds)).repeat_interleave(per), torch.tensor(learned))
    t0 = time.time()
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc=f"vae {args.part} (styles)")
    for m in learn:
        m.train()
    for step in bar:
        g = torch.Generator().manual_seed(args.seed * 100_003 + step)
        batch = torch.cat([pool[torch.randint(len(pool), (per,), generator=g)] for pool in pools])
        x = to_model_space(batch)
        if encoder_part:
            post = vae.encode(x).latent_dist
            with torch.no_grad():
                ref = reference.encode(x).latent_dist
            z = post.mean[rows] + post.std[rows] * torch.randn(post.mean[rows].shape, generator=g)
            rec = vae.decode(z).sample
            fixed = ~rows  # the kinds whose latents the UNet and the shipped LoRAs rely on
            anchor = (F.mse_loss(post.mean[fixed], ref.mean[fixed]) + F.mse_loss(post.logvar[fixed], ref.logvar[fixed])
                      if fixed.any() else x.new_zeros(()))
            loss = F.mse_loss(rec, x[rows]) + 0.5 * F.l1_loss(rec, x[rows]) + args.anchor_weight * anchor
        else:
            with torch.no_grad():
                post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
            rec = vae.decode(z).sample
            loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x)
            if keep is not None:
                pick = torch.randint(len(keep[0]), (args.keep_batch,), generator=g)
                kept = vae.decode(keep[0][pick]).sample
                loss = loss + args.keep_weight * picture_loss(kept, keep[1][pick], args.chroma_weight)
            if lines is not None:
                z_line, goal = line_batch(lines, args.line_batch, g)
                loss = loss + args.line_weight * picture_loss(vae.decode(z_line).sample, goal, args.chroma_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % args.checkpointing_steps == 0 or step + 1 == args.steps:
            state = {name: m.state_dict() for name, m in zip(names, learn)}
            state.update(part=args.part, kinds=kind_names, optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                         step=step + 1)
            torch.save(state, ckpt + ".tmp")
            os.replace(ckpt + ".tmp", ckpt)
    vae.eval()
    vae.requires_grad_(False)
    after = {name: round_trip_scores(vae, *evals[name]) for name in evals}
    print(table(before, after))
    drift = None
    if encoder_part:  # how far the anchored kinds' latents moved, against the spread of the latents
        drift = {}
        with torch.no_grad():
            for name, (images, _) in evals.items():
                x = to_model_space(images)
                a, b = vae.encode(x).latent_dist.mean, reference.encode(x).latent_dist.mean
                drift[name] = {"max_abs": float((a - b).abs().max()), "rms": float((a - b).pow(2).mean().sqrt()),
                               "latent_std": float(b.std())}
        print("latent drift (posterior mean vs the original encoder):", json.dumps(drift))

    tmp = vae_dir + ".tmp-new"
    shutil.rmtree(tmp, ignore_errors=True)
    vae.save_pretrained(tmp)
    old = vae_dir + ".tmp-old"
    shutil.rmtree(old, ignore_errors=True)
    os.replace(vae_dir, old)
    os.replace(tmp, vae_dir)
    shutil.rmtree(old, ignore_errors=True)

    info_path = os.path.join(args.model, "training.json")
    info = json.load(open(info_path)) if os.path.exists(info_path) else {}
    record = {
        "command": "python train/finetune_vae.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "final_loss": loss.item(),
        "wall_seconds_this_run": round(time.time() - t0, 1),
        "round_trip_before": before, "round_trip_after": after}
    if encoder_part:
        record.update(styles=list(styles), anchor_weight=args.anchor_weight, latent_drift=drift)
    key = "encoder_styles" if encoder_part else "decoder_styles_extra"
    if combinations:  # a later stage: the earlier records stay
        record.update(combinations=list(combinations))
        key = f"{args.part}_combinations"
    if args.keep_latents:
        record.update(keep_latents=args.keep_latents, keep_teacher=args.keep_teacher or "the VAE before this run",
                      keep_weight=args.keep_weight, keep_batch=args.keep_batch)
    if args.chroma_weight:
        record.update(chroma_weight=args.chroma_weight)
    if compose:
        record.update(compose_pairs=",".join(compose), composed=len(composed))
        if args.compose_partial:
            record.update(compose_partial=True, composed_partial=sum("@" in labels[i][0] for i in composed))
    if args.line_weight:
        record.update(line_weight=args.line_weight, line_batch=args.line_batch, lines=len(lines["ends"]),
                      partial_weight_latents=len(lines["mids"]))
    if args.partial:
        record.update(partial=True, partial_share=args.partial_share)
        key = f"{args.part}_partial"
    earlier = info.setdefault("vae", {}).get(key)
    if earlier:  # a record of the same kind (an earlier run this one went on from) stays, nested
        record["earlier_runs"] = [{k: v for k, v in earlier.items() if k != "earlier_runs"},
                                  *earlier.get("earlier_runs", [])]
    info["vae"][key] = record
    with open(info_path + ".tmp", "w") as f:
        json.dump(info, f, indent=2)
    os.replace(info_path + ".tmp", info_path)


if __name__ == "__main__":
    main()
