"""Training data for the LoRA trainer: image folders, Hub datasets, the shapes world.

Every random choice in the data (crop offset, flip, caption dropout, which caption of a list)
is a pure function of (seed, epoch, index), drawn from a generator seeded with those three. The
sampler yields (epoch, index) keys, so the whole data stream is reproducible from the seed alone:
worker processes, resumed runs and every rank of a distributed run see exactly the same
examples without sharing any RNG state.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

# Large odd multipliers keep (seed, epoch, index) -> generator seed collision-free in practice.
_EPOCH_MIX, _INDEX_MIX = 1_000_003, 7_919


def keyed_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator seeded by a seed and integer keys (e.g. epoch, index or step, rank)."""
    mixed = int(seed)
    for key in keys:
        mixed = (mixed * _EPOCH_MIX + int(key) * _INDEX_MIX + 1) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


class EpochShuffleSampler(Sampler):
    """Yields (epoch, index) keys in a permutation that depends only on (seed, epoch).

    Call `set_epoch` before iterating; accelerate's batch sharding then hands rank r every
    num_processes-th batch of the same permutation on every rank.
    """

    def __init__(self, num_samples: int, seed: int):
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        order = torch.randperm(self.num_samples, generator=keyed_generator(self.seed, self.epoch, -1))
        return iter([(self.epoch, int(i)) for i in order])


def read_imagefolder(folder: str, caption_column: str = "text") -> list[tuple[str, str]]:
    """(image path, caption) pairs from an imagefolder's metadata.jsonl ({"file_name": ..., <caption_column>: ...})."""
    rows = []
    with open(os.path.join(folder, "metadata.jsonl"), encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if "file_name" not in row or caption_column not in row:
                raise ValueError(f"--train_data_dir={folder!r}: metadata.jsonl line {line_no} needs keys 'file_name' "
                                 f"and {caption_column!r} (--caption_column); found {sorted(row)}")
            path = os.path.join(folder, row["file_name"])
            if not os.path.isfile(path):
                raise ValueError(f"--train_data_dir={folder!r}: metadata.jsonl line {line_no} names a missing file {row['file_name']!r}")
            rows.append((path, row[caption_column]))
    if not rows:
        raise ValueError(f"--train_data_dir={folder!r}: metadata.jsonl lists no images")
    return rows


class CaptionedImages(Dataset):
    """(image, caption) examples -> {"pixel_values": (3, R, R) in [-1, 1], "input_ids": (L,)}.

    `load(i)` returns (PIL image, caption or list of captions) for example i; it is the only part
    that differs between an image folder and a Hub dataset.
    """

    def __init__(self, load, num_examples: int, tokenizer, resolution: int, seed: int,
                 center_crop: bool = False, random_flip: bool = False, caption_dropout_prob: float = 0.0):
        self.load = load
        self.num_examples = num_examples
        self.tokenizer = tokenizer
        self.resolution = resolution
        self.seed = seed
        self.center_crop = center_crop
        self.random_flip = random_flip
        self.caption_dropout_prob = caption_dropout_prob

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        g = keyed_generator(self.seed, epoch, index)
        image, caption = self.load(index)
        pixel_values = self.transform(image.convert("RGB"), g)
        if isinstance(caption, (list, tuple)):
            caption = caption[int(torch.randint(len(caption), (1,), generator=g))]
        # Always draw, so the generator's stream does not depend on the dropout setting.
        if float(torch.rand((), generator=g)) < self.caption_dropout_prob:
            caption = ""
        return {"pixel_values": pixel_values, "input_ids": self.tokenize(caption)}

    def tokenize(self, caption: str) -> torch.Tensor:
        ids = self.tokenizer(caption, max_length=self.tokenizer.model_max_length, padding="max_length",
                             truncation=True, return_tensors="pt").input_ids
        return ids[0]  # (L,)

    def transform(self, image: Image.Image, g: torch.Generator) -> torch.Tensor:
        """Resize the short side to the resolution, crop a square, maybe flip, scale to [-1, 1]."""
        r = self.resolution
        w, h = image.size
        scale = r / min(w, h)
        new_w, new_h = max(r, round(w * scale)), max(r, round(h * scale))
        image = image.resize((new_w, new_h), Image.BILINEAR)
        if self.center_crop:
            left, top = (new_w - r) // 2, (new_h - r) // 2
        else:
            left = int(torch.randint(new_w - r + 1, (1,), generator=g))
            top = int(torch.randint(new_h - r + 1, (1,), generator=g))
        image = image.crop((left, top, left + r, top + r))
        flip = float(torch.rand((), generator=g)) < 0.5
        if self.random_flip and flip:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0  # (R, R, 3)
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()  # (3, R, R)


def collate(examples: list[dict]) -> dict:
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]).contiguous(memory_format=torch.contiguous_format),
        "input_ids": torch.stack([e["input_ids"] for e in examples]),
    }


def imagefolder_loader(folder: str, caption_column: str, max_samples: int | None = None):
    rows = read_imagefolder(folder, caption_column)[:max_samples]

    def load(i):
        path, caption = rows[i]
        with Image.open(path) as im:
            return im.copy(), caption

    return load, len(rows)


def hub_dataset_loader(args):
    """A Hub dataset through `datasets` (imported lazily: only this path needs it)."""
    try:
        import datasets
    except ImportError as err:
        raise ValueError(f"--dataset_name={args.dataset_name!r} needs the `datasets` package: pip install datasets") from err
    data = datasets.load_dataset(args.dataset_name, args.dataset_config_name, cache_dir=args.cache_dir)["train"]
    for flag, column in (("--image_column", args.image_column), ("--caption_column", args.caption_column)):
        if column not in data.column_names:
            raise ValueError(f"{flag}={column!r} is not a column of {args.dataset_name}: {data.column_names}")
    if args.max_train_samples is not None:
        data = data.select(range(min(args.max_train_samples, len(data))))

    def load(i):
        row = data[i]
        return row[args.image_column], row[args.caption_column]

    return load, len(data)


def render_shapes_dataset(folder: str, style: str, num_samples: int, seed: int, trigger: str | None) -> str:
    """Render a shapes-world style into an imagefolder (skipped when a complete one is already there)."""
    metadata = os.path.join(folder, "metadata.jsonl")
    if os.path.isfile(metadata):
        with open(metadata, encoding="utf-8") as f:
            if sum(1 for line in f if line.strip()) == num_samples:
                return folder
    from shapesworld.world import write_imagefolder  # lazy: the trainer works on any data without it

    return write_imagefolder(folder, num_samples, style=style, seed=seed, trigger=trigger)


def build_dataset(args, tokenizer, resolution: int, seed: int, partner: bool = False) -> CaptionedImages:
    """The training data or, with `partner`, the partner data (images of both styles together);
    both get the same transforms and caption dropout."""
    if partner:
        load, n = imagefolder_loader(args.partner_train_data_dir, args.caption_column)
    elif args.dataset_name:
        load, n = hub_dataset_loader(args)
    else:
        load, n = imagefolder_loader(args.train_data_dir, args.caption_column, args.max_train_samples)
    return CaptionedImages(load, n, tokenizer, resolution, seed, center_crop=args.center_crop,
                           random_flip=args.random_flip, caption_dropout_prob=args.caption_dropout_prob)
