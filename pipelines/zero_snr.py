"""What diffusers' sigma-space samplers need on a zero-terminal-SNR model (issue 27).

A zero-terminal-SNR schedule (Lin et al. 2024) ends at alpha_bar_T = 0; diffusers lifts it to 2^-24,
so the noise level there is sigma_T = sqrt((1 - 2^-24) / 2^-24) ~ 4096: pure noise, 300 times the
sigma_max ~ 14.6 that SD 1.5's own schedule ends at. Two things break with it in diffusers 0.42.1:

1. Karras / exponential sigma ramps (Karras et al. 2022, eq. 5) run from sigma_T = 4096. Half of a
   10-step Karras ramp then lies above sigma ~ 60, i.e. within the last 4% of the training timesteps,
   where the model sees pure noise and does nothing useful; at 25+ steps several sigmas round to the
   same integer timestep (999), the multistep solvers' step index starts at the *second* copy and
   runs past the end of ``sigmas`` (IndexError / AssertionError; diffusers issues #10738, #12771).
   Leading spacing starts below T (t = 991 at 100 steps, 901 at 10), but at some step counts still on
   the curve's steep top (sigma 4096 at t = 999, 277 at 991, 246 at 990): DPM2 / DPM2 a round a
   Karras ramp's timesteps, and at 100, 111, 125 and 142 steps the ramp's second sigma rounds to the
   first timestep; the step index starts at its second copy and the run ends dividing by sigma = 0.
   Here the ramp is, at every spacing: one step from pure noise (sigma_T, where leading spacing too
   starts) to ``ramp_sigma_max`` (the sigma the schedule reaches before its zero-SNR rescale: 14.6 for
   SD's scaled-linear betas), then the usual Karras / exponential ramp from there down to the
   spacing's sigma_min. Every sigma is then distinct, and falls to a distinct integer timestep.
2. Second-order samplers (Heun, DPM2, DPM2 a) take their first step from sigma_T. Heun's trapezoid
   rule weighs the two x0 guesses of a step from sigma to sigma_1 by (sigma - sigma_1) / sigma_1:
   x_1 = D_1 + sigma_1 eps - ((sigma - sigma_1) / (2 sigma_1)) (D_1 - D_2), a factor ~110 on the
   difference of two guesses in the first step of 10 (DPM2's midpoint: ~15): wrong colours and
   smears. The same happens wherever sigma falls steeply (3 linspace steps: 4096 -> 1.8 -> 0.03).
   Here a step whose sigma falls more than ``STEEP_RATIO``-fold is first order, from the later of
   its two guesses: x_1 = D + (sigma_1 / sigma_eval) (x_eval - D) (the DDIM step, exact from pure
   noise); every other step is the sampler's own. (SD 1.5's schedule, sigma_max 14.6, keeps stock
   behaviour: the mixins act only on zero-terminal-SNR schedules.)

Each mixin is combined with its diffusers class by ``zero_snr_class``; the result keeps the class's
name and module (a saved pipeline loads back with stock diffusers) and behaves as stock wherever
alpha_bar_T is not ~0.
"""
from __future__ import annotations

import inspect
import math

import numpy as np
from diffusers import HeunDiscreteScheduler, KDPM2AncestralDiscreteScheduler, KDPM2DiscreteScheduler

TERMINAL_ALPHA_BAR = 2.0**-24  # diffusers' stand-in for alpha_bar_T = 0
KARRAS_RHO = 7.0  # Karras et al. 2022, eq. 5
STEEP_RATIO = 10.0  # sigma / sigma_next above which a second-order step is taken first order


def terminal_sigma(alphas_cumprod) -> float | None:
    """sigma_T of a zero-terminal-SNR schedule (alpha_bar_T <= 2 * 2^-24), else None."""
    last = float(alphas_cumprod[-1])
    if last > 2 * TERMINAL_ALPHA_BAR:
        return None
    last = max(last, TERMINAL_ALPHA_BAR)
    return math.sqrt((1.0 - last) / last)


def karras_ramp(sigma_max: float, sigma_min: float, n: int, rho: float = KARRAS_RHO) -> np.ndarray:
    """Karras et al. 2022, eq. 5: n sigmas from sigma_max to sigma_min, dense near sigma_min."""
    ramp = np.linspace(0.0, 1.0, n)
    top, bottom = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (top + ramp * (bottom - top)) ** rho


def exponential_ramp(sigma_max: float, sigma_min: float, n: int) -> np.ndarray:
    """n sigmas from sigma_max to sigma_min, evenly spaced in log sigma."""
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n))


class ZeroSnrSigmaRamps:
    """Karras / exponential ramps for a zero-terminal-SNR schedule, at every timestep spacing: sigma_T,
    then the ramp from ``ramp_sigma_max`` to the spacing's sigma_min (see the module docstring, point 1).
    ``ramp_sigma_max`` is set by the registry."""

    ramp_sigma_max: float = 14.6

    def _zero_snr_ramp(self, ramp, in_sigmas, num_inference_steps, stock):
        sigmas = np.asarray(in_sigmas, dtype=np.float64)
        n = int(num_inference_steps or self.num_inference_steps)
        top = terminal_sigma(self.alphas_cumprod)
        if top is None:
            return stock()
        # Pure noise first, at every spacing. Trailing, linspace and DPM-Solver's full range start there (their
        # own float32 sigma_T is kept); leading starts below T (t = 991 at 100 steps), on the zero-SNR curve's
        # steep top, where a ramp from it puts two sigmas within one integer timestep (module docstring,
        # point 1), and linspace at 1 step at t = 0: both start at sigma_T too. The spacing sets sigma_min only.
        start = float(sigmas[0]) if sigmas[0] >= 0.5 * top else top
        if n == 1:
            return np.array([start])
        sigma_min = float(sigmas[-1])
        if n == 2:  # a ramp ends at sigma_min (DEIS stops there)
            return np.array([start, sigma_min])
        return np.concatenate([[start], ramp(max(self.ramp_sigma_max, sigma_min), sigma_min, n - 1)])

    def _convert_to_karras(self, in_sigmas, num_inference_steps=None):
        # LMS and DPM++ SDE call it without num_inference_steps (they read self.num_inference_steps)
        def stock():
            if num_inference_steps is None:
                return super(ZeroSnrSigmaRamps, self)._convert_to_karras(in_sigmas=in_sigmas)
            return super(ZeroSnrSigmaRamps, self)._convert_to_karras(in_sigmas=in_sigmas, num_inference_steps=num_inference_steps)

        return self._zero_snr_ramp(karras_ramp, in_sigmas, num_inference_steps, stock)

    def _convert_to_exponential(self, in_sigmas, num_inference_steps):
        def stock():
            return super(ZeroSnrSigmaRamps, self)._convert_to_exponential(in_sigmas=in_sigmas, num_inference_steps=num_inference_steps)

        return self._zero_snr_ramp(exponential_ramp, in_sigmas, num_inference_steps, stock)


def _replace_prev_sample(out, prev_sample):
    if isinstance(out, tuple):
        return (prev_sample,) + tuple(out[1:])
    out.prev_sample = prev_sample
    return out


class FirstOrderOnSteepSteps:
    """Second-order samplers (Heun, DPM2, DPM2 a) on a zero-SNR schedule: a step whose sigma falls more
    than STEEP_RATIO-fold (always the first, from sigma_T) is first order (module docstring, point 2).
    The step's second model call still happens (the loop's timesteps are fixed); its x0 guess, the
    later one, is the one used."""

    def _steep(self) -> bool:
        """In the second call of a step from sigmas[i - 1] to sigmas[i], is the drop steep?"""
        if terminal_sigma(self.alphas_cumprod) is None or self.step_index is None or self.state_in_first_order:
            return False
        start, end = float(self.sigmas[self.step_index - 1]), self._deterministic_target(self.step_index)
        return end > 0 and start > STEEP_RATIO * end

    def _deterministic_target(self, i) -> float:
        return float(self.sigmas[i])

    def step(self, model_output, timestep, sample, *args, **kwargs):
        if not self._steep():
            return super().step(model_output, timestep, sample, *args, **kwargs)
        # the second call of a steep step: x_eval = sample at sigma_eval
        sigma_eval, sigma_next, sigma_up = self._second_call_sigmas(self.step_index)
        out = super().step(model_output, timestep, sample, *args, **kwargs)  # advances state and RNG as stock
        x0 = out[1] if isinstance(out, tuple) else out.pred_original_sample
        prev = x0 + (sigma_next / sigma_eval) * (sample - x0)  # first order (DDIM) from the later guess
        if sigma_up:
            prev_stock = out[0] if isinstance(out, tuple) else out.prev_sample
            # keep the ancestral noise stock drew: its part of prev_stock is what the deterministic part leaves
            deterministic = self._stock_deterministic(sample, x0, sigma_eval, sigma_next)
            prev = prev + (prev_stock - deterministic)
        return _replace_prev_sample(out, prev.to(sample.dtype))


class ZeroSnrHeun(FirstOrderOnSteepSteps, ZeroSnrSigmaRamps):
    def _second_call_sigmas(self, i):
        return float(self.sigmas[i]), float(self.sigmas[i]), 0.0  # Heun evaluates at sigma_next


class ZeroSnrKDPM2(FirstOrderOnSteepSteps, ZeroSnrSigmaRamps):
    def _second_call_sigmas(self, i):
        return float(self.sigmas_interpol[i]), float(self.sigmas[i]), 0.0  # the log-midpoint, then sigma_next


class ZeroSnrKDPM2Ancestral(FirstOrderOnSteepSteps, ZeroSnrSigmaRamps):
    def _second_call_sigmas(self, i):
        return float(self.sigmas_interpol[i - 1]), float(self.sigmas_down[i - 1]), float(self.sigmas_up[i - 1])

    def _deterministic_target(self, i) -> float:
        return float(self.sigmas_down[i - 1])  # the ancestral step's ODE part ends at sigma_down

    def _stock_deterministic(self, sample, x0, sigma_eval, sigma_down):
        # stock: x_start + d_mid (sigma_down - sigma), d_mid = (sample - x0) / sigma_eval
        sigma = float(self.sigmas[self.step_index - 2])  # step_index already advanced by stock
        return self._start_sample + (sample - x0) / sigma_eval * (sigma_down - sigma)

    def step(self, model_output, timestep, sample, *args, **kwargs):
        self._start_sample = self.sample  # stock frees it in the second call
        return super().step(model_output, timestep, sample, *args, **kwargs)


_MIXINS = {
    HeunDiscreteScheduler: ZeroSnrHeun,
    KDPM2DiscreteScheduler: ZeroSnrKDPM2,
    KDPM2AncestralDiscreteScheduler: ZeroSnrKDPM2Ancestral,
}
_CLASSES: dict[type, type] = {}


def zero_snr_class(cls: type) -> type:
    """``cls`` with the zero-terminal-SNR fixes that apply to it (same name and module, so saved
    configs and model_index.json name the stock class)."""
    if cls not in _MIXINS and not hasattr(cls, "_convert_to_karras"):
        return cls  # DDIM, DDPM, PNDM, LCM: nothing to fix
    if cls not in _CLASSES:
        mixin = _MIXINS.get(cls, ZeroSnrSigmaRamps)
        # the stock class's module and name: a pipeline saved with it records ["diffusers", "<Class>"] and
        # loads back with stock diffusers
        namespace = {"__module__": cls.__module__, "__qualname__": cls.__qualname__}
        if issubclass(mixin, FirstOrderOnSteepSteps):
            inner = mixin.step

            def step(self, *args, **kwargs):
                return inner(self, *args, **kwargs)

            # pipelines pass generator / eta only when step's signature names them (prepare_extra_step_kwargs)
            step.__signature__ = inspect.signature(cls.step)
            step.__doc__ = cls.step.__doc__
            namespace["step"] = step
        sub = type(cls.__name__, (mixin, cls), namespace)
        _CLASSES[cls] = sub
    return _CLASSES[cls]

