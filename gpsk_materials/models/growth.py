"""Growing a trained GridVAE into a deeper one that computes the same function, so training continues from it.

A VAE config that differs from a trained one only in ``blocks_per_level`` (more residual blocks at every level of
the encoder and the decoder) can start from the trained weights: every block that exists in both is copied, and
each added :class:`~gpsk_materials.models.vae.ResBlock3d` starts with its second convolution at zero, so it adds
nothing (``x + 0``) and the grown VAE reproduces the trained one exactly until training moves the new weights.
This is the identity-initialised deepening of Net2Net (Chen, Goodfellow & Shlens, "Net2Net: accelerating learning
via knowledge transfer", ICLR 2016, section 2.3), with the zero-initialised last layer of a residual branch as in
Goyal et al., "Accurate, large minibatch SGD" (2017), section 5.1.
"""

from __future__ import annotations

from dataclasses import fields

import torch
from torch import nn

from gpsk_materials.errors import CheckpointError
from gpsk_materials.models.configs import VAEConfig
from gpsk_materials.models.vae import GridVAE, ResBlock3d


def can_deepen(source: VAEConfig, target: VAEConfig) -> bool:
    """True when ``target`` equals ``source`` except for at least as many ``blocks_per_level``."""
    same = all(getattr(source, f.name) == getattr(target, f.name) for f in fields(VAEConfig)
               if f.name != "blocks_per_level")
    return same and target.blocks_per_level >= source.blocks_per_level


def _copy(dst: nn.Module, src: nn.Module, where: str) -> None:
    own = dst.state_dict()
    theirs = src.state_dict()
    if set(own) != set(theirs) or any(own[k].shape != theirs[k].shape for k in own):
        raise CheckpointError(f"cannot grow the VAE: {where} differs in more than depth")
    dst.load_state_dict({k: v.to(own[k].dtype) for k, v in theirs.items()})


def _identity_block(block: ResBlock3d) -> None:
    with torch.no_grad():
        block.conv2.weight.zero_()
        if block.conv2.bias is not None:
            block.conv2.bias.zero_()


def _grow_sequence(dst: nn.Sequential, src: nn.Sequential, where: str) -> int:
    """Copy ``src`` into ``dst``, where ``dst`` may hold more ResBlock3d between the same other layers; the extra
    blocks become identities. Returns the number of blocks added."""
    i = added = 0
    for j, module in enumerate(dst):
        old = src[i] if i < len(src) else None
        if isinstance(module, ResBlock3d) and not isinstance(old, ResBlock3d):
            _identity_block(module)
            added += 1
            continue
        if old is None or type(old) is not type(module):
            raise CheckpointError(f"cannot grow the VAE: {where}[{j}] is {type(module).__name__}, the trained VAE has "
                                  f"{type(old).__name__ if old is not None else 'nothing'} there")
        _copy(module, old, f"{where}[{j}]")
        i += 1
    if i != len(src):
        raise CheckpointError(f"cannot grow the VAE: {where} of the trained VAE has layers the new one lacks")
    return added


def deepen_vae(source: GridVAE, config: VAEConfig) -> GridVAE:
    """A new :class:`GridVAE` of ``config`` that computes what ``source`` computes (see the module docstring).

    Parameters
    ----------
    source : GridVAE
        The trained VAE.
    config : VAEConfig
        Its config with ``blocks_per_level`` >= the source's (every other field equal).

    Returns
    -------
    GridVAE
        On the source's device and dtype; encode and decode agree with the source's to floating-point rounding.

    Raises
    ------
    CheckpointError
        If ``config`` differs from the source's config in anything but a larger ``blocks_per_level``.
    """
    if not can_deepen(source.config, config):
        raise CheckpointError(f"cannot grow a VAE of {source.config} into {config}: only blocks_per_level may grow")
    p = next(source.parameters())
    grown = GridVAE(config).to(device=p.device, dtype=p.dtype)
    for name, child in grown.named_children():
        old = getattr(source, name)
        if isinstance(child, nn.Sequential) and name in ("encoder", "decoder"):
            _grow_sequence(child, old, name)
        else:
            _copy(child, old, name)
    return grown.train(source.training)
