"""Diffusion Lab's app package: handlers, plotting, validation and model access for app.py.

app.py holds the layout and the wiring; everything it calls lives here. Nothing here does
diffusion math: that is the pipelines package's job.
"""
from .engine import Engine, choose_model, current, engine_from_pipe, install, load_engine

__all__ = ["Engine", "choose_model", "current", "engine_from_pipe", "install", "load_engine"]
