"""Rectified flow: the one place that fixes the interpolation convention, timestep sampling and the sampler.

Convention (t = 0 is data, t = 1 is noise)::

    x_t = (1 - t) * x0 + t * eps,        eps ~ N(0, I)
    v   = dx_t/dt = eps - x0             (the training target)

Sampling integrates dx/dt = v from t = 1 (pure noise) down to t = 0 with Euler steps, x <- x + (t_next - t) v.
Classifier-free guidance: v = v_uncond + s (v_cond - v_uncond); s = 1 is exactly the conditional prediction
(the unconditional branch is then not evaluated at all).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from gpsk_materials.models.conditioning import ConditionBatch
from gpsk_materials.defaults import GUIDANCE, SAMPLER_COMPILE, SAMPLER_STEPS
from gpsk_materials.errors import ConfigError

VelocityModel = Callable[[Tensor, Tensor, ConditionBatch], Tensor]

#: ``compile_mode`` of :func:`sample`: eager (``"none"``) or a ``torch.compile`` mode of the Euler step
#: (``"reduce-overhead"`` adds CUDA graphs on CUDA; on the CPU it is inductor alone)
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")


def _bcast(t: Tensor, x: Tensor) -> Tensor:
    return t.view(-1, *([1] * (x.ndim - 1))).to(x.dtype)


def interpolate(x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """x_t = (1 - t) x0 + t eps."""
    tb = _bcast(t, x0)
    return (1 - tb) * x0 + tb * noise


def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    """v = eps - x0, the time derivative of :func:`interpolate`."""
    return noise - x0


def predict_x0(x_t: Tensor, v: Tensor, t: Tensor) -> Tensor:
    """Data estimate implied by a velocity: x0 = x_t - t v."""
    return x_t - _bcast(t, x_t) * v


def sample_timesteps(
    n: int, generator: torch.Generator | None = None, device=None, schedule: str = "logit_normal",
    mean: float = 0.0, std: float = 1.0,
) -> Tensor:
    """Training times in (0, 1): ``"logit_normal"`` (SD3's sigmoid of a normal, weighting mid-trajectory times)
    or ``"uniform"``."""
    if schedule == "logit_normal":
        return torch.sigmoid(mean + std * torch.randn(n, generator=generator, device=device))
    if schedule == "uniform":
        return torch.rand(n, generator=generator, device=device)
    raise ConfigError(f"unknown timestep schedule {schedule!r}: 'logit_normal' or 'uniform'")


def flow_loss(
    model: VelocityModel, x0: Tensor, cond: ConditionBatch, generator: torch.Generator | None = None,
    schedule: str = "logit_normal",
) -> Tensor:
    """Mean squared error between the predicted velocity and eps - x0 at random times."""
    t = sample_timesteps(x0.shape[0], generator, x0.device, schedule)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    v = model(interpolate(x0, noise, t), t, cond)
    return (v.float() - velocity_target(x0, noise).float()).pow(2).mean()


def guidance_batch(cond: ConditionBatch) -> ConditionBatch:
    """The conditions of one classifier-free-guided pass: ``cond`` followed by the same rows with every modality
    dropped (the unconditional branch), (2B,)."""
    both = ConditionBatch(**{k: torch.cat([v, v]) for k, v in cond.__dict__.items()})
    both.present = torch.cat([cond.present, torch.zeros_like(cond.present)])
    return both


def guided_velocity(model: VelocityModel, x: Tensor, t: Tensor, cond: ConditionBatch, guidance: float,
                    both: ConditionBatch | None = None, context=None) -> Tensor:
    """Classifier-free guided velocity v_u + s (v_c - v_u); one batched pass for both branches when s != 1.

    ``both`` (:func:`guidance_batch` of ``cond``, when s != 1) and ``context`` (the model's
    ``condition_context`` of the conditions it is called with: ``cond``, or ``both``) are what a sampler computes
    once for all its steps; without them they are derived here."""
    extra = {} if context is None else {"context": context}
    if guidance == 1.0:
        return model(x, t, cond, **extra)
    b = x.shape[0]
    both = guidance_batch(cond) if both is None else both
    v = model(torch.cat([x, x]), torch.cat([t, t]), both, **extra)
    v_cond, v_uncond = v[:b], v[b:]
    return v_uncond + guidance * (v_cond - v_uncond)


def euler_step(model: VelocityModel, x: Tensor, t: Tensor, dt: Tensor, cond: ConditionBatch, guidance: float,
               both: ConditionBatch | None = None, context=None) -> Tensor:
    """One Euler step x + dt v of the guided flow (:func:`guided_velocity`), the unit :func:`sample` compiles.

    Parameters
    ----------
    x : Tensor (B, C, n, n, n)
        State at time ``t``.
    t : Tensor (B,)
        Flow time of every row.
    dt : Tensor ()
        Time step t_next - t (negative: the sampler runs from noise to data); a tensor, so that a compiled step is
        traced once for all steps.

    Returns
    -------
    Tensor (B, C, n, n, n), the state at t + dt, in ``x``'s dtype.
    """
    return x + dt * guided_velocity(model, x, t, cond, guidance, both, context).to(x.dtype)


_COMPILED: dict[tuple[str, str], Callable] = {}


def compiled(fn: Callable, mode: str) -> Callable:
    """``torch.compile(fn, mode=mode, dynamic=False)``, built once per function and mode (torch then caches one
    graph per model, batch shape, dtype and autocast state behind its guards; a new batch size compiles again).

    Raises
    ------
    ConfigError
        ``mode`` not in :data:`COMPILE_MODES`.
    """
    if mode not in COMPILE_MODES:
        raise ConfigError(f"compile_mode must be one of {COMPILE_MODES}, got {mode!r}")
    if mode == "none":
        return fn
    key = (fn.__name__, mode)
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(fn, mode=mode, dynamic=False)
    return _COMPILED[key]


def apply_guidance_terms(terms: Sequence, x: Tensor, t: Tensor, v: Tensor) -> Tensor:
    """Reconstruction guidance: for each active term (``term.active(t)``, ``term(x0, t)`` -> loss (B,), ``term.scale``)
    add ``scale * g / rms(g)`` to the velocity, g the gradient of the loss with respect to the clean-latent estimate
    x0 = x - t v (the MMDiT is not differentiated). See :mod:`gpsk_materials.diffraction.guidance`."""
    now = float(t[0])
    active = [term for term in terms if term.active(now)]
    if not active:
        return v
    with torch.enable_grad():
        for term in active:
            x0 = predict_x0(x, v, t).detach().float().requires_grad_(True)
            (g,) = torch.autograd.grad(term(x0, t).sum(), x0)
            rms = g.flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-20)
            v = v + term.scale * (g / _bcast(rms, g)).to(v.dtype)
    return v


@torch.no_grad()
def sample(
    model: VelocityModel,
    cond: ConditionBatch,
    steps: int = SAMPLER_STEPS,
    guidance: float = GUIDANCE,
    generator: torch.Generator | None = None,
    shape: tuple[int, ...] = (64, 8, 8, 8),
    noise: Tensor | None = None,
    device=None,
    progress: bool = False,
    guidance_terms: Sequence | None = None,
    t_start: float = 1.0,
    compile_mode: str = SAMPLER_COMPILE,
) -> Tensor:
    """Integrate the flow from noise (t = 1) to data (t = 0) with ``steps`` Euler steps and CFG scale ``guidance``.

    Returns latents (B, *shape) in the model's (normalised) latent space. ``noise`` overrides the initial draw.
    ``guidance_terms`` (e.g. :class:`~gpsk_materials.diffraction.guidance.PatternGuidance`) add their gradient to
    the velocity (:func:`apply_guidance_terms`). ``t_start`` < 1 starts from ``noise`` taken as the state x_t at that
    time (a partly noised latent, :func:`interpolate`) and integrates from there to t = 0 in ``steps`` steps.

    ``compile_mode`` (:data:`COMPILE_MODES`, default ``defaults.SAMPLER_COMPILE``) runs every step through
    ``torch.compile`` (:func:`euler_step`; with guidance terms the guided velocity, the terms staying eager): one
    graph of the whole step, both CFG branches in one batched forward, no value read back to the host. With
    ``"reduce-overhead"`` on CUDA the step is replayed as a CUDA graph; each step's output is copied out of the
    graph's buffers before the next replay. The first call of a batch shape compiles (tens of seconds).

    Raises
    ------
    ConfigError
        ``steps`` < 1, ``t_start`` outside (0, 1] or an unknown ``compile_mode``.
    """
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    if not 0.0 < t_start <= 1.0:
        raise ConfigError(f"t_start must lie in (0, 1], got {t_start}")
    step_fn = compiled(euler_step, compile_mode)
    velocity_fn = compiled(guided_velocity, compile_mode)
    graphs = compile_mode == "reduce-overhead" and torch.device(device or cond.present.device).type == "cuda"
    if device is None:
        device = cond.present.device
    cond = cond.to(device)
    x = noise.to(device) if noise is not None else torch.randn((len(cond), *shape), generator=generator, device=device)
    times = torch.linspace(float(t_start), 0.0, steps + 1, device=device)
    dts = times[1:] - times[:-1]
    # what does not change over the steps is computed once: the guided pass's conditions, and the model's
    # condition tokens and pooled-condition term where it offers them (MMDiT.condition_context); no value is read
    # back to the host inside the loop (guidance terms read t, see apply_guidance_terms)
    both = None if guidance == 1.0 else guidance_batch(cond)
    encode = getattr(model, "condition_context", None)
    context = None if encode is None else encode(cond if both is None else both)
    for i in tqdm(range(steps), disable=not progress, desc="sampling"):
        t = times[i].expand(x.shape[0])
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        if guidance_terms:
            v = velocity_fn(model, x, t, cond, guidance, both, context)
            v = apply_guidance_terms(guidance_terms, x, t, v.clone() if graphs else v)
            x = x + dts[i] * v.to(x.dtype)
        else:
            x = step_fn(model, x, t, dts[i], cond, guidance, both, context)
            if graphs:
                x = x.clone()  # the graph's output buffer is overwritten by the next replay
    return x
