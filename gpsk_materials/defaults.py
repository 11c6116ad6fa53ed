"""One default per knob, used by the Python API, the ``gpsk`` commands and the docs alike.

Each value says why it is what it is; change it here and every entry point follows.
"""

from __future__ import annotations

#: Classifier-free guidance scale of the sampler. 1 is the conditional prediction alone (the unconditional branch is
#: not evaluated, so a sampler step costs half as much); of the scales 1, 2 and 3 it gave the most decodable samples
#: with the shipped model (docs/generator.md).
GUIDANCE = 1.0

#: Flow time at which a sample re-enters the flow after the decoder has projected it onto the requested atoms
#: (``GenerationRequest.projection``; 0 = off). Off until measured on enough targets: on 40 MP-20 test targets
#: (2-core CPU, 2026-12-02) re-entering at t = 0.2 or 0.4 decoded 20 samples against 17 without, and matched 0-1
#: against 0, too few to choose a default (docs/generator.md, "Projection").
PROJECTION_TIME = 0.0

#: Euler steps of the rectified-flow sampler: the step count the shipped model's benchmarks (decode rate, known
#: crystals, generation speed) were measured with; fewer steps trade sample quality for time linearly.
SAMPLER_STEPS = 50

#: Force threshold of every relaxation, eV/A: the Materials Project / MatterGen convention, used by the hull's
#: reference energies too (energies compare only between relaxations stopped at one threshold).
FMAX = 0.05

#: Maximum FIRE steps of the ``"relax"`` post-check (``CrystalGenerator``, ``gpsk check --relax``,
#: ``Potential.relax``): the few kept structures of a request, already scored, at ~0.07 s per step on 2 CPU cores,
#: so at most ~15 s per structure; pool structures stop after 17-20 steps on average (docs/benchmarks.md).
RELAX_STEPS = 200

#: Maximum FIRE steps of the reference energies of the hull (``ReferenceHull(mode="relax")``): the pool structures
#: start from their DFT-relaxed geometries, and the shipped reference energies (40,183 structures,
#: docs/results/reference_energies_tensornet_relax.json) were built with this bound; the cache does not record the
#: bound, so it must not change under an existing cache.
REFERENCE_RELAX_STEPS = 100

#: Maximum FIRE steps of the stability evaluation (``gpsk evaluate --stability``): generated structures start far
#: from a minimum (only 53 % of the de novo set converged within 300 steps, docs/benchmarks.md); an unconverged
#: structure is scored at its last energy, an upper bound, so the evaluation allows more steps than the checks.
EVALUATION_RELAX_STEPS = 500

#: Structures per forward pass of the batched FIRE relaxation (a stopped structure makes room for the next): the
#: batch measured for both backends on an H200 (docs/benchmarks.md). Each structure keeps its own FIRE state, so
#: the batch bounds memory and throughput, not where a relaxation ends.
RELAX_BATCH = 256

#: Smallest distance (A) between two sites that the featurizers accept, periodic images included: the CDVAE/DiffCSP
#: structural-validity bound that the decoder (``min_distance``) and ``ValidityCheck`` apply too, below the shortest
#: bond of any ordered crystal (H-H 0.74 A). Closer sites are duplicates, and the grid cannot tell them from one atom.
MIN_SITE_DISTANCE = 0.5

#: Widest accepted distance of a requested band gap, formation energy or energy above hull from the training labels'
#: mean, in their standard deviations: with the shipped statistics formation energies in [-9.0, 7.0] eV/atom, band
#: gaps up to 10.5 eV and energies above hull up to 1.16 eV/atom, wider than any Materials Project entry's, while
#: a value the model has never come near (formation_energy=1e9) is refused rather than normalised into noise.
CONDITION_MAX_SIGMA = 8.0

#: Numerical tolerance of "on the hull" (eV/atom): a structure whose energy above the hull is at most this counts as
#: stable. A phase on the hull comes out a fraction of a meV/atom above it from the relaxation's force threshold
#: (FMAX) and the hull construction's floating point (experimental NaCl: +0.00036 eV/atom), far below the
#: potentials' own error (~30 meV/atom), so 1 meV/atom separates noise from a real distance above the hull.
HULL_TOLERANCE = 1e-3

#: A novelty reference with fewer entries than this gets a warning in every report: mp20/train.csv here holds 2,573
#: rows of the 27,136 of MP-20's train split (45,229 materials in all), so "novel" against it mostly means "not in
#: this sample". 10,000 is below every complete MP-20 split used for novelty (train 27,136) and above the samples.
SMALL_NOVELTY_REFERENCE = 10_000

#: "Near the hull" for the known ground state of a composition (eV/atom above the Materials Project hull): the
#: window of ``shared/data/reference/mp20_near_hull_dft.parquet`` (its largest e_above_hull is 0.025), used by the
#: thin-hull warning of the stability evaluation.
NEAR_HULL = 0.025

__all__ = [
    "CONDITION_MAX_SIGMA",
    "EVALUATION_RELAX_STEPS",
    "FMAX",
    "GUIDANCE",
    "HULL_TOLERANCE",
    "MIN_SITE_DISTANCE",
    "NEAR_HULL",
    "PIPELINE",
    "REFERENCE_RELAX_STEPS",
    "RELAX_BATCH",
    "RELAX_STEPS",
    "SAMPLER_COMPILE",
    "SAMPLER_STEPS",
    "SAMPLING_PRECISION",
    "SMALL_NOVELTY_REFERENCE",
]

#: sampling precision of the MMDiT and the VAE decoder (``"fp32"`` or ``"bf16"`` autocast): float32 unless asked,
#: because bf16 gives other samples for the same seed (issue 15; docs/benchmarks.md)
SAMPLING_PRECISION = "fp32"

#: ``torch.compile`` mode of the sampler's Euler step (``"none"``, ``"default"``, ``"reduce-overhead"`` = inductor
#: + CUDA graphs on CUDA, ``"max-autotune"``): off unless asked, because compiling costs tens of seconds on the
#: first call of every batch shape (16 s for a one-line function on the 2-core CPU) and pays only over many batches;
#: the compiled step equals the eager one within float rounding (tests/test_decoder_speed_paths.py; issue 15)
SAMPLER_COMPILE = "none"

#: ``CrystalGenerator(pipeline=)``: decode sampler batch i on a worker thread while batch i + 1 is sampled. Off: on
#: the 2-core CPU both stages already use both cores, and on one H200 it lost in every configuration (0.78-0.98x of
#: the same run unpipelined, 3 x 1,024 structures, 2026-12-02): the worker and the sampler contend for the Python
#: interpreter and the GPU (docs/benchmarks.md, "The same code on one H200"; issue 15)
PIPELINE = False
