"""Reshaping a trained GridVAE into a deeper one, one with fewer latent channels, or one with sub-voxel branches, so
training continues from it.

A VAE config that differs from a trained one only in ``blocks_per_level`` (more residual blocks at every level of
the encoder and the decoder) can start from the trained weights: every block that exists in both is copied, and
each added :class:`~gpsk_materials.models.vae.ResBlock3d` starts with its second convolution at zero, so it adds
nothing (``x + 0``) and the grown VAE reproduces the trained one exactly until training moves the new weights.
This is the identity-initialised deepening of Net2Net (Chen, Goodfellow & Shlens, "Net2Net: accelerating learning
via knowledge transfer", ICLR 2016, section 2.3), with the zero-initialised last layer of a residual branch as in
Goyal et al., "Accurate, large minibatch SGD" (2017), section 5.1.

A VAE config that differs from a trained one only in fewer ``latent_channels`` (and, optionally, ``kl_weight``)
starts from the trained weights restricted to the top principal directions of the trained latent's channels
(:func:`channel_pca` over training latents, :func:`compress_vae`): the new code is y = P^T (z - m) for the channel
mean m and the top-k eigenvectors P, and the decoder receives z = m + P y, folded exactly into its first
convolution and the metric head (the decoder's convolutions pad periodically, so a constant channel offset is a
constant bias). Until training moves the weights, the compressed VAE decodes y as the trained one decodes z
projected onto those k directions; ``benchmarks/latent_channels.py`` measures what that projection keeps.

A VAE config that differs from a trained one only in ``subvoxel`` (False -> True) gains the sub-voxel branches of
:mod:`gpsk_materials.models.vae` with their last convolutions at zero (:func:`add_subvoxel`): the grown VAE encodes
and decodes exactly as the trained one until training moves the new weights, so its latent, and an MMDiT trained
on it, stay valid.
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


def can_compress(source: VAEConfig, target: VAEConfig) -> bool:
    """True when ``target`` equals ``source`` except for fewer ``latent_channels`` (``kl_weight`` may differ too)
    and the VAE pads periodically (``domain="real"``), which :func:`compress_vae` needs to fold the channel mean."""
    same = all(getattr(source, f.name) == getattr(target, f.name) for f in fields(VAEConfig)
               if f.name not in ("latent_channels", "kl_weight"))
    return same and source.domain == "real" and target.latent_channels < source.latent_channels


def channel_pca(latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Principal directions of the channels of latents (B, C, n, n, n).

    Returns
    -------
    mean : Tensor (C,)
        Channel mean over every voxel of every latent (float64).
    eigenvalues : Tensor (C,)
        Of the C x C channel covariance over every voxel of every latent, descending (float64).
    eigenvectors : Tensor (C, C)
        The matching unit eigenvectors as columns (float64).
    """
    x = latents.detach().double().transpose(0, 1).flatten(1)
    mean = x.mean(1)
    xc = x - mean[:, None]
    vals, vecs = torch.linalg.eigh(xc @ xc.T / max(xc.shape[1], 1))
    order = vals.argsort(descending=True)
    return mean, vals[order], vecs[:, order]


def compress_vae(source: GridVAE, config: VAEConfig, mean: torch.Tensor, basis: torch.Tensor,
                 logvar: float = -10.0) -> GridVAE:
    """A :class:`GridVAE` of ``config`` whose latent is the source's projected onto ``basis`` (module docstring).

    Parameters
    ----------
    source : GridVAE
        The trained VAE (C latent channels, ``domain="real"``).
    config : VAEConfig
        The source's config with k < C ``latent_channels`` (``kl_weight`` may differ).
    mean : Tensor (C,)
        Channel mean m of the source's latents (:func:`channel_pca`).
    basis : Tensor (C, k)
        Orthonormal columns P, e.g. the top k eigenvectors of :func:`channel_pca`.
    logvar : float
        Posterior log-variance the new encoder starts with (its log-variance weights start at zero).

    Returns
    -------
    GridVAE
        On the source's device and dtype: ``encode(g).mean`` = P^T (source mean - m), ``decode(y)`` =
        source ``decode(m + P y)`` to rounding.

    Raises
    ------
    CheckpointError
        If ``config`` differs from the source's in more than fewer latent channels and the KL weight, or the
        shapes of ``mean`` / ``basis`` do not fit.
    """
    c, k = source.config.latent_channels, config.latent_channels
    if not can_compress(source.config, config):
        raise CheckpointError(f"cannot compress a VAE of {source.config} into {config}: only latent_channels may "
                              "shrink (and kl_weight change), with periodic padding (domain='real')")
    if tuple(mean.shape) != (c,) or tuple(basis.shape) != (c, k):
        raise CheckpointError(f"compress_vae needs mean ({c},) and basis ({c}, {k}), got {tuple(mean.shape)} and "
                              f"{tuple(basis.shape)}")
    p = next(source.parameters())
    new = GridVAE(config).to(device=p.device, dtype=p.dtype)
    for name in ("enc_in", "encoder", "decoder", "dec_norm", "dec_out"):
        _copy(getattr(new, name), getattr(source, name), name)
    P = basis.to(device=p.device, dtype=torch.float64)
    m = mean.to(device=p.device, dtype=torch.float64)
    with torch.no_grad():
        # encoder head: GroupNorm, SiLU as before; the last convolution's mean rows become P^T (W z + b - m)
        _copy(new.enc_out[0], source.enc_out[0], "enc_out[0]")
        src_conv, dst_conv = _conv(source.enc_out[2]), _conv(new.enc_out[2])
        w, b = src_conv.weight.double(), src_conv.bias.double()
        dst_conv.weight.zero_()
        dst_conv.weight[:k] = torch.einsum("ck,c...->k...", P, w[:c]).to(dst_conv.weight.dtype)
        dst_conv.bias[:k] = (P.T @ (b[:c] - m)).to(dst_conv.bias.dtype)
        dst_conv.bias[k:] = logvar
        # decoder input: W (m + P y) + b = (W P) y + (b + sum over taps of W m)
        src_in, dst_in = _conv(source.dec_in), _conv(new.dec_in)
        w, b = src_in.weight.double(), src_in.bias.double()
        dst_in.weight.copy_(torch.einsum("oc...,ck->ok...", w, P).to(dst_in.weight.dtype))
        dst_in.bias.copy_((b + torch.einsum("oc...,c->o", w, m)).to(dst_in.bias.dtype))
        # metric head on the pooled latent: mean(m + P y) = m + P mean(y)
        lin_s, lin_d = source.metric_head[0], new.metric_head[0]
        lin_d.weight.copy_((lin_s.weight.double() @ P).to(lin_d.weight.dtype))
        lin_d.bias.copy_((lin_s.bias.double() + lin_s.weight.double() @ m).to(lin_d.bias.dtype))
        _copy(new.metric_head[2], source.metric_head[2], "metric_head[2]")
    return new.train(source.training)


def _conv(module: nn.Module) -> nn.Conv3d:
    """The Conv3d inside a periodic-padding wrapper (or the module itself)."""
    if isinstance(module, nn.Conv3d):
        return module
    inner = [m for m in module.modules() if isinstance(m, nn.Conv3d)]
    if len(inner) != 1:
        raise CheckpointError(f"expected one Conv3d in {type(module).__name__}, found {len(inner)}")
    return inner[0]


def can_add_subvoxel(source: VAEConfig, target: VAEConfig) -> bool:
    """True when ``target`` equals ``source`` except that it has the sub-voxel branches and the source has not."""
    same = all(getattr(source, f.name) == getattr(target, f.name) for f in fields(VAEConfig) if f.name != "subvoxel")
    return same and target.subvoxel and not source.subvoxel


def add_subvoxel(source: GridVAE, config: VAEConfig) -> GridVAE:
    """A new :class:`GridVAE` of ``config`` (the source's with ``subvoxel=True``) holding every weight of ``source``;
    the added branches start at zero, so encode and decode agree with the source's exactly (module docstring).

    Raises
    ------
    CheckpointError
        If ``config`` differs from the source's config in anything but ``subvoxel`` turned on.
    """
    if not can_add_subvoxel(source.config, config):
        raise CheckpointError(f"cannot add sub-voxel branches to a VAE of {source.config} to get {config}")
    p = next(source.parameters())
    grown = GridVAE(config).to(device=p.device, dtype=p.dtype)
    missing, unexpected = grown.load_state_dict(source.state_dict(), strict=False)
    if unexpected or any(not k.startswith(("enc_subvoxel.", "dec_subvoxel.")) for k in missing):
        raise CheckpointError(f"cannot add sub-voxel branches: weights differ beyond them ({missing + unexpected})")
    return grown.train(source.training)
