"""The shapes world: the embedded model's procedural domain, its captions and its scorer.

A package of its own (not under train/) because the app's CFG lab, bench/ and tests read
images with the scorer as much as the trainers render data with the generator.
"""
from .scorer import Reading, adherence, score_image
from .world import (COLOR_NAMES, HPOS, SHAPES, SIZES, STYLES, VOCABULARY, VPOS, Attributes, Sample,
                    caption_for, full_caption, images_array, join_styles, render, sample, style_parts,
                    write_imagefolder)
