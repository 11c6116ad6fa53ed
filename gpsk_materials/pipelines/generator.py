"""CrystalGenerator: the GPSK-300 pipeline from conditions to checked pymatgen Structures.

Stages of :meth:`CrystalGenerator.run` (a pipeline in the diffusers / TRELLIS sense):

1. requests are validated (:mod:`gpsk_materials.pipelines.requests`) and the number of formula units of each
   candidate of a reduced formula is drawn from the training prior (:mod:`gpsk_materials.pipelines.formula_units`);
   a bad request becomes a result carrying its error, the others go on;
2. every candidate latent of every request goes through the model's own sampling chain
   (:meth:`GPSKModel.sample_grids`: rectified-flow sampler, then VAE decoder) in fixed-size batches of mixed
   conditions;
3. the closed-form decoder turns all grids into Structures in one batched pass (with exactly the cell content the
   candidate was conditioned on, or an inferred composition when the request left the composition free); a grid
   that does not decode is a failed candidate, never returned;
4. the post-checks (``checks=``, :func:`gpsk_materials.checks.post.post_checks`) score the candidates and the best
   ``n`` of ``n * best_of`` are kept: sound candidates first (strict check passed, sane energy, no isolated atom;
   :func:`gpsk_materials.checks.scoring.rank_key`), then by score. A kept structure the checks cannot vouch for
   (e.g. failing the strict check because no candidate passed it) is named in ``properties["gpsk"]["checks"]
   ["flags"]``, in the table's flags column and in a logged warning.

Reproducibility: the noise of request ``i`` comes from its own ``torch.Generator`` seeded with ``seed + i`` (or the
request's own seed), and the sampler always runs batches of exactly ``batch_size`` latents (padded), because CPU
kernels (GEMV vs GEMM, oneDNN convolution algorithms) give results that depend on the batch size in the last bits.
Decoding and checks run per request. Hence on the CPU a batched run equals the requests run one by one, bit for bit.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monty.json import MSONable
from torch import Tensor
from tqdm.auto import tqdm

from gpsk_materials import provenance
from gpsk_materials.checks.post import DEFAULT_CHECKS, make_scorer, parse_checks, post_checks, result_flags
from gpsk_materials.defaults import (FMAX, GUIDANCE, PIPELINE, RELAX_STEPS, SAMPLER_COMPILE, SAMPLER_STEPS,
                                     SAMPLING_PRECISION)
from gpsk_materials.errors import CheckpointError, ConditioningError, ConfigError, DataError, GPSKError
from gpsk_materials.models.generative import PRECISIONS, GPSKModel
from gpsk_materials.models.io import folder_hash, tensor_hash
from gpsk_materials.pipelines.formula_units import FormulaUnitPrior
from gpsk_materials.pipelines.requests import GenerationRequest, ResolvedRequest, resolve_request
from gpsk_materials.vocabulary import formula_string

logger = logging.getLogger(__name__)
#: attribute of the log records of rejected requests (a caller that reports ``GenerationResult.error`` itself, as
#: ``gpsk generate`` does, filters them out instead of showing each rejection twice)
REQUEST_ERROR = "gpsk_request_error"

#: cells a model folder is assumed to support when its config.json does not say (the default training cache)
DEFAULT_MAX_SITES = 20
#: sampler batch when none is set: small on the CPU (a lone request pays for a whole padded batch), large on GPUs
CPU_BATCH_SIZE = 8
GPU_BATCH_SIZE = 64
#: grids per closed-form decoder chunk on CUDA: the batched decoder is launch-bound there, so a chunk costs nearly the
#: same time at 64 and 256 grids (one H200, 1,024 MP-20 test grids, composition given: 228 grids/s at 64, 729 at 256,
#: 755 at 1,024; docs/benchmarks.md, "Decoder chunk size on the GPU"); 256 keeps the chunk's memory modest
GPU_DECODE_BATCH_SIZE = 256
#: the same on the CPU, where the batched decoder's time grows with the chunk
CPU_DECODE_BATCH_SIZE = 16
#: residual bound of the default decoder: a generated grid is a sample, not an exact featurization (0.3 is the
#: bound for exact grids); candidates are ranked by it and the checks after decoding judge the structure
GENERATED_MAX_RESIDUAL = 0.5
_GRID_PREFIX = re.compile(r"^grid \d+: ")


def _decode_chunk(device: torch.device | str) -> int:
    """Grids per decoder chunk of the generator's own decoder on ``device``."""
    return GPU_DECODE_BATCH_SIZE if torch.device(device).type == "cuda" else CPU_DECODE_BATCH_SIZE


def default_model_dir() -> Path:
    """Folder of the model shipped in the package (``gpsk_materials/weights/default``)."""
    from importlib.resources import files

    return Path(str(files("gpsk_materials"))) / "weights" / "default"


@dataclass
class GenerationResult:
    """Outcome of one request of :meth:`CrystalGenerator.run`.

    ``structures`` (pymatgen Structures or ASE Atoms) are the kept candidates, best first when ``best_of > 1``;
    ``error`` is the request's validation error (then nothing was generated); ``candidates`` / ``decoded`` count
    the grids sampled and those that decoded; ``failures`` holds the decoder's reasons for the others;
    ``projected`` the candidates that re-entered the flow after the decoder's projection (``request.projection``).
    """

    index: int
    request: GenerationRequest
    structures: list = field(default_factory=list)
    error: GPSKError | None = None
    seed: int | None = None
    candidates: int = 0
    decoded: int = 0
    failures: list[str] = field(default_factory=list)
    projected: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def failed(self) -> int:
        """Candidates that did not decode."""
        return self.candidates - self.decoded

    def raise_for_error(self) -> GenerationResult:
        """Raise the request's error, if any; return self."""
        if self.error is not None:
            raise self.error
        return self


class CrystalGenerator(MSONable):
    """Generate crystals with a GPSK model: ``CrystalGenerator.from_pretrained().generate("Fe2O3", n=4)``.

    Parameters
    ----------
    model
        A loaded :class:`~gpsk_materials.models.generative.GPSKModel` (VAE + MMDiT).
    model_path
        The model folder it was loaded from (None: the packaged default, or an in-memory model when
        ``model_hash`` is also None); :meth:`as_dict` points at it.
    max_sites
        Largest cell the model generates (the training cells' limit); compositions beyond it are refused.
    batch_size
        Latents per sampler call (None: 8 on the CPU, 64 on a GPU). Part of the reproducibility key.
    decoder
        A configured :class:`~gpsk_materials.representations.decoding.ReciprocalGridDecoder` (default: one with
        ``max_residual=GENERATED_MAX_RESIDUAL``).
    potential
        Interatomic potential of the energy checks: None (the default TensorNet-MatPES), a name/spec accepted by
        :func:`~gpsk_materials.checks.potentials.resolve_potential`, or a loaded Potential. Loaded on first use.
    symprec
        spglib tolerance of the symmetry check, Angstrom.
    relax_steps, fmax
        Settings of the ``"relax"`` check.
    reference_hull
        A :class:`~gpsk_materials.checks.hull.ReferenceHull` for the ``"hull"`` check (on the potential's energy
        scale); None builds the pool hull of ``potential`` on first use. Not part of :meth:`as_dict`.
    model_hash
        Identity of the weights (computed from the model folder's indices by :meth:`from_pretrained`).
    precision
        ``"fp32"`` (default) or ``"bf16"``: sampling (MMDiT and VAE decoder) under bfloat16 autocast
        (:data:`gpsk_materials.models.generative.PRECISIONS`); faster on GPUs and on CPUs with bf16 instructions,
        other samples than float32. Part of the reproducibility key.
    compile_mode
        ``torch.compile`` mode of the sampler's Euler step (:data:`gpsk_materials.models.rectified_flow.
        COMPILE_MODES`; default ``defaults.SAMPLER_COMPILE``, ``"none"``): ``"reduce-overhead"`` replays the step
        as a CUDA graph on CUDA. Compiling costs tens of seconds per batch shape; the samples equal the eager ones
        up to float rounding.
    pipeline
        Decode sampler batch i on a worker thread (its own CUDA stream on a GPU) while batch i + 1 is sampled
        (default ``defaults.PIPELINE``); without it every grid is sampled, then all are decoded. The same
        candidates decode either way; the decoder's chunks then hold one sampler batch's grids, so positions can
        differ by float rounding (< 1e-9 A). Runs with ``projection`` requests are never pipelined.
    formula_unit_prior
        Path of a formula-unit table (as written by ``benchmarks/build_formula_unit_prior.py``) from which the
        number of formula units of a reduced formula is drawn; None: the model folder's ``formula_units.json.gz``
        when :meth:`from_pretrained` finds one, else the table shipped in the package (counted on the default
        model's training pool).

    Raises
    ------
    DataError
        ``formula_unit_prior`` cannot be read.
    """

    def __init__(
        self,
        model: GPSKModel,
        *,
        model_path: str | Path | None = None,
        max_sites: int = DEFAULT_MAX_SITES,
        batch_size: int | None = None,
        decoder: Any = None,
        potential: Any = None,
        symprec: float = 0.1,
        relax_steps: int = RELAX_STEPS,
        fmax: float = FMAX,
        reference_hull: Any = None,
        model_hash: str | None = None,
        formula_unit_prior: str | Path | None = None,
        precision: str = SAMPLING_PRECISION,
        compile_mode: str = SAMPLER_COMPILE,
        pipeline: bool = PIPELINE,
    ) -> None:
        from gpsk_materials.models.rectified_flow import COMPILE_MODES
        from gpsk_materials.checks.potentials import Potential
        from gpsk_materials.representations.decoding import ReciprocalGridDecoder

        if model.mmdit is None:
            raise CheckpointError("the model holds no MMDiT weights (a VAE-only folder cannot generate)")
        if isinstance(max_sites, bool) or not isinstance(max_sites, (int, np.integer)) or max_sites < 1:
            raise ConditioningError(f"max_sites must be a positive integer, got {max_sites!r}")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise ConditioningError(f"batch_size must be a positive integer or None, got {batch_size!r}")
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if compile_mode not in COMPILE_MODES:
            raise ConfigError(f"compile_mode must be one of {COMPILE_MODES}, got {compile_mode!r}")
        self.precision = precision
        self.compile_mode = compile_mode
        self.pipeline = bool(pipeline)
        self.model = model
        self.model_path = None if model_path is None else Path(model_path)
        self.max_sites = int(max_sites)
        self.batch_size = batch_size
        # a generated grid is judged by the checks after decoding: a decode the decoder cannot vouch for (low
        # confidence of an inferred composition, implausibly close atoms) is kept, marked low_confidence, and named
        # in the results table's flags column
        self._own_decoder = decoder is None  # its chunk size then follows the device (see ``to``)
        self.decoder = decoder if decoder is not None else ReciprocalGridDecoder(
            max_sites=self.max_sites, max_residual=GENERATED_MAX_RESIDUAL, keep_low_confidence=True,
            batch_size=_decode_chunk(self.device))
        self.decoder.to(str(self.device))
        self._potential = potential if isinstance(potential, Potential) else None
        self.potential_spec = potential.spec if isinstance(potential, Potential) else potential
        self.symprec = float(symprec)
        self.relax_steps = int(relax_steps)
        self.fmax = float(fmax)
        self.model_hash = model_hash if model_hash is not None else tensor_hash(model)
        self._in_memory = model_hash is None
        self._scorers: dict[frozenset[str], Any] = {}
        self._hull = reference_hull
        self._prototype_substitutor = None  # loaded on first use (prototype_substitutor)
        self.formula_unit_prior_path = None if formula_unit_prior is None else Path(formula_unit_prior)
        self.formula_unit_prior = FormulaUnitPrior.from_file(self.formula_unit_prior_path)

    # ------------------------------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls, path: str | Path | None = None, device: str | torch.device = "cpu", **kwargs: Any
    ) -> CrystalGenerator:
        """Load a model folder (as written by :func:`~gpsk_materials.models.io.save_model_folder`); None loads the
        model shipped in the package. Keyword arguments go to the constructor (``max_sites`` overrides the
        folder's own value)."""
        from gpsk_materials.models.io import load_model_folder, read_json, torch_device

        device = torch_device(device)
        if path is None:
            folder = default_model_dir()
            if not (folder / "config.json").is_file():
                raise CheckpointError(
                    f"the default GPSK model is not installed: {folder} holds no model (config.json missing). "
                    "Pass the folder of a trained model, CrystalGenerator.from_pretrained('path/to/model'), "
                    "or `gpsk generate --model PATH`."
                )
        else:
            folder = Path(path).expanduser()
            if not folder.is_dir():
                raise CheckpointError(f"model folder {folder} does not exist")
        model = load_model_folder(folder, device)
        meta = read_json(folder / "config.json")
        if "max_sites" not in kwargs:
            trained = meta.get("trained_on") if isinstance(meta.get("trained_on"), Mapping) else {}
            kwargs["max_sites"] = int(meta.get("max_sites") or trained.get("max_sites") or DEFAULT_MAX_SITES)
        if kwargs.get("formula_unit_prior") is None and (folder / "formula_units.json.gz").is_file():
            kwargs["formula_unit_prior"] = folder / "formula_units.json.gz"  # a model's own training prior
        return cls(model, model_path=None if path is None else folder.resolve(), model_hash=folder_hash(folder), **kwargs)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def to(self, device: str | torch.device) -> CrystalGenerator:
        """Move the model, the decoder and a loaded potential to ``device``; returns self.

        Raises
        ------
        ConfigError
            ``device`` is not a device torch knows, or a CUDA device on a machine or torch build without CUDA.
        """
        from gpsk_materials.models.io import torch_device

        device = torch_device(device)
        self.model.vae.to(device)
        self.model.mmdit.to(device)
        self.decoder.to(str(device))
        if self._own_decoder:
            self.decoder.batch_size = _decode_chunk(device)
        if self._potential is not None:
            self._potential.to(device)
        return self

    def as_dict(self) -> dict:
        """Configuration and a pointer to the weights (folder path, None for the packaged model, and hash)."""
        if self._in_memory:
            raise CheckpointError(
                "this generator wraps an in-memory model; save it with save_model_folder and load it with "
                "CrystalGenerator.from_pretrained(path) to serialise the generator"
            )
        potential = self.potential_spec if not isinstance(self.potential_spec, Path) else str(self.potential_spec)
        return {
            "@module": type(self).__module__,
            "@class": type(self).__name__,
            "model_path": None if self.model_path is None else str(self.model_path),
            "model_hash": self.model_hash,
            "device": str(self.device),
            "max_sites": self.max_sites,
            "batch_size": self.batch_size,
            "precision": self.precision,
            "compile_mode": self.compile_mode,
            "pipeline": self.pipeline,
            "decoder": self.decoder.as_dict(),
            "potential": potential,
            "symprec": self.symprec,
            "relax_steps": self.relax_steps,
            "fmax": self.fmax,
            "formula_unit_prior": None if self.formula_unit_prior_path is None else str(self.formula_unit_prior_path),
        }

    @classmethod
    def from_dict(cls, d: dict) -> CrystalGenerator:
        """Reload the weights ``d`` points at; :class:`CheckpointError` if they changed since."""
        from gpsk_materials.representations.decoding import ReciprocalGridDecoder

        gen = cls.from_pretrained(
            d.get("model_path"),
            device=d.get("device", "cpu"),
            max_sites=d["max_sites"],
            batch_size=d.get("batch_size"),
            precision=d.get("precision", SAMPLING_PRECISION),
            compile_mode=d.get("compile_mode", SAMPLER_COMPILE),
            pipeline=d.get("pipeline", PIPELINE),
            decoder=ReciprocalGridDecoder.from_dict(d["decoder"]),
            symprec=d.get("symprec", 0.1),
            relax_steps=d.get("relax_steps", RELAX_STEPS),
            fmax=d.get("fmax", FMAX),
            potential=d.get("potential"),
            formula_unit_prior=d.get("formula_unit_prior"),
        )
        expected = d.get("model_hash")
        if expected is not None and expected != gen.model_hash:
            raise CheckpointError(
                f"the weights at {d.get('model_path') or default_model_dir()} changed since this generator was "
                f"serialised (hash {gen.model_hash[:12]}, expected {expected[:12]})"
            )
        return gen

    def __repr__(self) -> str:
        where = "packaged default" if self.model_path is None else str(self.model_path)
        return (f"CrystalGenerator(model={self.model.config.name!r} from {where}, device={self.device}, "
                f"max_sites={self.max_sites})")

    # ------------------------------------------------------------------------------------------ lazy checkers
    @property
    def potential(self):
        """The interatomic potential of the energy checks, loaded on first use and kept."""
        if self._potential is None:
            from gpsk_materials.checks.potentials import load_potential, resolve_potential

            spec = self.potential_spec
            self._potential = load_potential(**spec) if isinstance(spec, Mapping) else resolve_potential(spec)
            if self.device.type != "cpu":
                self._potential.to(self.device)
        return self._potential

    def _scorer(self, flags: frozenset[str]):
        key = flags & {"energy", "volume_scan"}
        if key not in self._scorers:
            self._scorers[key] = make_scorer(key, self.potential if "energy" in key else None, self.symprec)
        return self._scorers[key]

    def _reference_hull(self):
        from gpsk_materials.checks.hull import ReferenceHull

        if self._hull is None:
            hull = ReferenceHull(self.potential)
            if not hull.pool_path.is_file():
                raise DataError(f"the 'hull' check needs the reference pool {hull.pool_path} (set $GPSK_SHARED_DIR)")
            self._hull = hull
        return self._hull

    # ------------------------------------------------------------------------------------------ public verbs
    def generate(
        self,
        composition: Any,
        n: int = 1,
        *,
        guidance: float = GUIDANCE,
        steps: int = SAMPLER_STEPS,
        seed: int | None = None,
        best_of: int = 1,
        formula_units: int | None = None,
        prototypes: int = 0,
        checks: str | Iterable[str] | None = DEFAULT_CHECKS,
        output: str = "structure",
        progress: bool | None = None,
        diffraction: Any = None,
        wavelength: Any = None,
        pattern_guidance: float = 0.0,
        guidance_terms: Sequence[Any] | None = None,
        **conditions: Any,
    ) -> list:
        """Generate ``n`` structures of one composition; raise the request's error if it is invalid.

        ``conditions`` are the other fields of :class:`~gpsk_materials.models.conditioning.Conditions`
        (``crystal_system``, ``space_group``, ``band_gap``, ``formation_energy``, ``e_above_hull``,
        ``magnetic_ordering``). A reduced formula (``"TiO2"``) lets each candidate's number of formula units be
        drawn from the training prior among those the space group allows; a cell content (``"Ti2O4"``) or
        ``formula_units=Z`` fixes it (:mod:`gpsk_materials.pipelines.formula_units`).

        ``gen.generate(c, n, seed=s)`` is ``gen.run([{"composition": c, "n": n}], seed=s)[0].structures``: the same
        defaults (:mod:`gpsk_materials.defaults`), the same structures.

        Returns pymatgen Structures (``output="ase"``: ASE Atoms) with their provenance in
        ``properties["gpsk"]``; fewer than ``n`` when not enough candidates decoded (the count of failures is in
        the provenance, and a warning is logged).

        ``diffraction`` (a powder pattern: pymatgen ``DiffractionPattern``, ``(two_theta, intensity)``, a
        :class:`~gpsk_materials.diffraction.PowderPattern` or a ``.xy`` file; ``wavelength`` in Angstrom or a line
        name, default Cu Ka) solves the structure from it: all
        ``n * best_of`` candidates are refined against the pattern and the ``n`` of lowest Rwp returned, each with
        its refinement in ``properties["gpsk"]["diffraction"]``; ``pattern_guidance`` > 0 also guides the sampler
        toward the pattern (:func:`gpsk_materials.diffraction.solve.solve_pattern`, docs/diffraction.md).
        ``guidance_terms`` are further sampler guidance terms (:mod:`gpsk_materials.diffraction.guidance`).

        ``prototypes=K`` adds the K nearest known crystals of the composition, their elements substituted
        (:mod:`gpsk_materials.prototypes`), to the model's candidates; all are ranked by the checks together
        (``GenerationRequest.prototypes``, docs/generator.md "Prototypes"); with ``diffraction`` they are refined
        against the pattern and ranked by Rwp beside the model's candidates.
        """
        if diffraction is not None:
            from gpsk_materials.diffraction.solve import solve_pattern

            return solve_pattern(self, composition, diffraction, n, wavelength=wavelength, guidance=guidance,
                                 steps=steps, seed=seed, best_of=best_of, checks=checks, progress=progress,
                                 pattern_guidance=pattern_guidance, guidance_terms=guidance_terms, output=output,
                                 formula_units=formula_units, prototypes=prototypes, **conditions).structures
        request = GenerationRequest(composition, n, guidance=guidance, steps=steps, best_of=best_of,
                                    formula_units=formula_units, prototypes=prototypes, **conditions)
        result = self.run([request], seed=seed, checks=checks, output=output, progress=progress,
                          guidance_terms=guidance_terms)[0]
        return result.raise_for_error().structures

    def generate_many(
        self,
        requests: Sequence[Any],
        *,
        seed: int | None = None,
        checks: str | Iterable[str] | None = DEFAULT_CHECKS,
        output: str = "structure",
        progress: bool | None = None,
        **defaults: Any,
    ) -> list[GenerationResult]:
        """Batched generation for screening loops: ``requests`` are compositions, dicts of request fields or
        :class:`GenerationRequest` s; ``defaults`` (``n``, ``space_group``, ``best_of``, ...) fill what each
        request leaves unset. See :meth:`run`."""
        GenerationRequest.coerce(None, **defaults)  # unknown default fields fail the whole call
        built: list[Any] = []
        for r in requests:
            try:
                built.append(GenerationRequest.coerce(r, **defaults))
            except (ConditioningError, TypeError):
                built.append(r)  # run() reports it as that request's error
        return self.run(built, seed=seed, checks=checks, output=output, progress=progress)

    def run(
        self,
        requests: Sequence[GenerationRequest | Mapping[str, Any] | Any],
        *,
        seed: int | None = None,
        checks: str | Iterable[str] | None = DEFAULT_CHECKS,
        output: str = "structure",
        progress: bool | None = None,
        guidance_terms: Sequence[Any] | None = None,
    ) -> list[GenerationResult]:
        """Run many requests at once; one :class:`GenerationResult` per request, in order.

        Parameters
        ----------
        requests
            :class:`GenerationRequest` s, mappings of their fields, or bare compositions (a lone request is
            taken as a list of one).
        seed
            Base seed; request ``i`` uses ``seed + i`` unless it sets its own. None draws one from torch's global
            generator (recorded in the results).
        checks
            ``"none"``, ``"validity_symmetry"`` (validity, symmetry, connectivity; the default; ``"basic"`` is its
            old name), ``"energy"`` (+ potential energy),
            ``"volume_scan"`` (+ GPSK-05 volume scan, the returned cells are rescaled), ``"relax"`` (+ relaxation
            of the kept structures), ``"hull"`` (+ energy above the reference hull); combine with commas.
        output
            ``"structure"`` (pymatgen) or ``"ase"``.
        progress
            tqdm bars; None shows them for runs longer than one sampler batch.
        guidance_terms
            Sampler guidance terms (:mod:`gpsk_materials.diffraction.guidance`) applied to every request's samples.

        Notes
        -----
        A request that fails validation gets its error in its result; the other requests still run.
        """
        if isinstance(requests, (str, Mapping, GenerationRequest)) or not isinstance(requests, Iterable):
            requests = [requests]
        if output not in ("structure", "ase"):
            raise ConditioningError(f"output must be 'structure' or 'ase', got {output!r}")
        flags = parse_checks(checks)
        if "energy" in flags:
            self.potential  # noqa: B018 -- a missing potential fails here, before any sampling
        if "hull" in flags:
            self._reference_hull()
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
        elif isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConditioningError(f"seed must be a non-negative integer, got {seed!r}")
        results: list[GenerationResult] = []
        resolved: list[ResolvedRequest] = []
        for i, raw in enumerate(requests):
            try:
                req = GenerationRequest.coerce(raw)
            except (ConditioningError, TypeError) as exc:
                err = ConditioningError(f"request {i}: {exc}")
                results.append(GenerationResult(i, GenerationRequest(), error=err))
                logger.warning("%s", err, extra={REQUEST_ERROR: True})
                continue
            try:
                r = resolve_request(req, i, int(seed), self.max_sites, self.model.config.mmdit.max_elements,
                                    self.formula_unit_prior)
            except ConditioningError as exc:
                results.append(GenerationResult(i, req, error=exc))
                logger.warning("%s", exc, extra={REQUEST_ERROR: True})
                continue
            resolved.append(r)
            results.append(GenerationResult(i, r.request, seed=r.seed, candidates=r.candidates))
        if not resolved:
            return results
        if progress is None:
            progress = sum(r.candidates for r in resolved) > self._batch_size()
        if self.pipeline and not any(r.request.projection > 0 for r in resolved):
            grids, decoded = self._sample_and_decode(resolved, progress, guidance_terms)
        else:
            grids = self._sample_grids(resolved, progress, guidance_terms)
            if any(r.request.projection > 0 for r in resolved):
                grids = self._project(resolved, grids, results, progress)
            decoded = self._decode(resolved, grids, progress)
        if any(r.request.prototypes for r in resolved):
            decoded = self._add_prototypes(resolved, decoded)
        for r, g, d in tqdm(list(zip(resolved, grids, decoded)), desc="checks", unit="request",
                            disable=not progress or len(resolved) < 2 or flags == frozenset()):
            res = results[r.index]
            self._finish_request(r, g, flags, res, d)
            if output == "ase":
                from pymatgen.io.ase import AseAtomsAdaptor

                res.structures = [AseAtomsAdaptor.get_atoms(s) for s in res.structures]
        return results

    # ------------------------------------------------------------------------------------------ stages
    def _batch_size(self) -> int:
        if self.batch_size is not None:
            return self.batch_size
        return CPU_BATCH_SIZE if self.device.type == "cpu" else GPU_BATCH_SIZE

    @torch.no_grad()
    def sample_grids(self, requests: Sequence[Any], seed: int | None = None, progress: bool = False) -> list[Tensor]:
        """Stage 2 alone: the raw grids (candidates, 3, 32, 32, 32) of each request (``n * best_of`` each);
        raises the first invalid request's error."""
        seed = int(torch.randint(0, 2**31 - 1, ()).item()) if seed is None else seed
        resolved = [
            resolve_request(GenerationRequest.coerce(r), i, seed, self.max_sites, self.model.config.mmdit.max_elements,
                            self.formula_unit_prior)
            for i, r in enumerate(requests)
        ]
        return self._sample_grids(resolved, progress)

    @torch.no_grad()
    def _sample_grids(self, resolved: list[ResolvedRequest], progress: bool,
                      guidance_terms: Sequence[Any] | None = None) -> list[Tensor]:
        out = None
        for out, _, _ in self._sampler_batches(resolved, progress, guidance_terms):
            pass
        return out

    def _sampler_batches(self, resolved: list[ResolvedRequest], progress: bool,
                         guidance_terms: Sequence[Any] | None = None):
        """Stage 2, one sampler batch at a time: yields ``(out, chunk, grids)`` after each batch, ``out`` the
        grids (candidates, 3, n, n, n) of every request (filled so far), ``chunk`` the (request, candidate) pairs of
        the batch and ``grids`` (len(chunk), 3, n, n, n) their grids. Batches hold exactly ``batch_size`` latents
        (the last one padded) of one (guidance, steps) pair."""
        size = self.model.config.vae.grid_size
        device = self.device
        batch = self._batch_size()
        noise = [self._initial_noise(r) for r in resolved]
        # one row of conditions per candidate: the candidates of a reduced formula differ in their cell content
        cond_all = self.model.condition_batch(
            [r.candidate_conditions(j) for r in resolved for j in range(r.candidates)])
        first = np.cumsum([0] + [r.candidates for r in resolved])
        out = [torch.empty((r.candidates, 3, size, size, size), device=device) for r in resolved]
        groups: dict[tuple[float, int], list[tuple[int, int]]] = {}
        for k, r in enumerate(resolved):
            key = (float(r.request.guidance), int(r.request.steps))
            groups.setdefault(key, []).extend((k, j) for j in range(r.candidates))
        with tqdm(total=sum(r.candidates for r in resolved), desc="sampling", unit="sample", disable=not progress) as bar:
            for (guidance, steps), rows in groups.items():
                for start in range(0, len(rows), batch):
                    chunk = rows[start : start + batch]
                    padded = chunk + [chunk[-1]] * (batch - len(chunk))
                    cond = cond_all.index(torch.tensor([first[k] + j for k, j in padded], device=cond_all.present.device))
                    x1 = torch.stack([noise[k][j] for k, j in padded]).to(device)
                    g = self.model.sample_grids(cond, steps, guidance, noise=x1, guidance_terms=guidance_terms,
                                                precision=self.precision, compile_mode=self.compile_mode)
                    for (k, j), grid in zip(chunk, g[: len(chunk)]):
                        out[k][j] = grid
                    bar.update(len(chunk))
                    yield out, chunk, g[: len(chunk)]

    @torch.no_grad()
    def _sample_and_decode(self, resolved: list[ResolvedRequest], progress: bool,
                           guidance_terms: Sequence[Any] | None = None) -> tuple[list[Tensor], list]:
        """Stages 2 and 3 pipelined (``pipeline=True``): each sampler batch is handed to one worker thread that
        decodes it while the next batch is sampled. On CUDA the worker runs on its own stream, which waits for an
        event recorded after the batch's grids (no host synchronisation of the sampler). Returns what
        :meth:`_sample_grids` and :meth:`_decode` return: the grids of every request, and per request the
        decoded Structures (None where a grid failed) with the reasons of the failures.

        Raises
        ------
        Whatever the decoder raises outside its own per-grid failures (re-raised here, after the sampler stops).
        """
        from concurrent.futures import ThreadPoolExecutor

        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(device=self.device) if cuda else None
        decoded: list[tuple[list, list]] = [([None] * r.candidates, [None] * r.candidates) for r in resolved]

        @torch.no_grad()  # grad mode is per thread
        def work(chunk: list[tuple[int, int]], grids: Tensor, ready) -> None:
            if stream is None:
                return self._decode_rows(resolved, chunk, grids, decoded)
            with torch.cuda.stream(stream):
                stream.wait_event(ready)
                grids.record_stream(stream)  # the sampler's allocator must not reuse these until the worker is done
                self._decode_rows(resolved, chunk, grids, decoded)

        out: list[Tensor] = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpsk-decode") as pool:
            jobs = []
            for out, chunk, grids in self._sampler_batches(resolved, progress, guidance_terms):
                ready = None
                if cuda:
                    ready = torch.cuda.Event()
                    ready.record()
                jobs.append(pool.submit(work, chunk, grids, ready))
            for job in jobs:
                job.result()
        return out, decoded

    def _decode_rows(self, resolved: Sequence[ResolvedRequest], chunk: Sequence[tuple[int, int]], grids: Tensor,
                     decoded: list[tuple[list, list]]) -> None:
        """Decode the grids (len(chunk), 3, n, n, n) of the (request, candidate) pairs ``chunk`` into
        ``decoded[request]`` = (structures, reasons), given cell contents and free compositions apart, as
        :meth:`_decode` does for all grids at once."""
        for exact in (True, False):
            rows = [i for i, (k, _) in enumerate(chunk) if (resolved[k].reduced is not None) == exact]
            if not rows:
                continue
            comps = [resolved[chunk[i][0]].cell(chunk[i][1]) for i in rows]
            sel = grids if len(rows) == len(chunk) else grids[torch.as_tensor(rows, device=grids.device)]
            structures, reasons = self.decoder.decode_many(sel, comps, return_errors=True, pbar=False,
                                                           exact_counts=exact, warn_kept=False)
            for i, s, e in zip(rows, structures, reasons):
                k, j = chunk[i]
                decoded[k][0][j], decoded[k][1][j] = s, e

    def _initial_noise(self, r: ResolvedRequest) -> Tensor:
        """The initial noise (candidates, C, n, n, n) of a request's candidates: drawn on the CPU from the request's
        own generator, so the same on every device and in every batch."""
        cfg = self.model.config.mmdit
        shape = (cfg.latent_channels, cfg.latent_size, cfg.latent_size, cfg.latent_size)
        return torch.randn((r.candidates, *shape), generator=torch.Generator().manual_seed(r.seed))

    @torch.no_grad()
    def _project(self, resolved: list[ResolvedRequest], grids: list[Tensor], results: list[GenerationResult],
                 progress: bool) -> list[Tensor]:
        """Stage 2b, for requests with ``projection`` t > 0 (issue 14 item 3): each sampled grid is decoded with
        no residual bound (the nearest arrangement of the requested atoms the decoder finds: a projection onto
        crystals), featurized, encoded (posterior mean), noised back to time t with the candidate's own initial
        noise (x_t = (1 - t) z + t eps) and integrated to t = 0 again in ``round(steps * t)`` steps. A candidate
        the projection cannot place keeps its first grid. Returns the grids; records the projected candidates in
        ``results[i].projected``."""
        import copy

        from gpsk_materials.representations.reciprocal import ReciprocalGridFeaturizer

        todo = [k for k, r in enumerate(resolved) if r.request.projection > 0]
        projector = copy.copy(self.decoder)
        projector.max_residual, projector.min_confidence, projector.min_distance_ratio = float("inf"), 0.0, 0.0
        placed = self._decode([resolved[k] for k in todo], [grids[k] for k in todo], progress, projector)
        rows = [(k, j, s) for k, (structures, _) in zip(todo, placed) for j, s in enumerate(structures) if s is not None]
        if not rows:
            return grids
        feat = ReciprocalGridFeaturizer(backend="torch", device=str(self.device))
        new, reasons = feat.featurize_many([s for _, _, s in rows], return_errors=True, pbar=progress)
        rows = [(k, j, g) for (k, j, _), g, e in zip(rows, torch.as_tensor(new), reasons) if e is None]
        noise = {k: self._initial_noise(resolved[k]) for k in {k for k, _, _ in rows}}
        out = [g.clone() for g in grids]
        groups: dict[tuple[float, int, float], list[tuple[int, int, Tensor]]] = {}
        for k, j, g in rows:
            req = resolved[k].request
            groups.setdefault((float(req.guidance), int(req.steps), float(req.projection)), []).append((k, j, g))
        batch = self._batch_size()
        for (guidance, steps, t), group in groups.items():
            for start in range(0, len(group), batch):
                chunk = group[start : start + batch]
                z = self.model.normalize_latents(
                    self.model.vae.encode(torch.stack([g for _, _, g in chunk]).to(self.device)).mean)
                # the same initial noise the candidate was drawn from (_sample_grids), so re-entry is reproducible
                eps = torch.stack([noise[k][j] for k, j, _ in chunk]).to(self.device)
                cond = self.model.condition_batch([resolved[k].candidate_conditions(j) for k, j, _ in chunk])
                g = self.model.sample_grids(cond, max(1, round(steps * t)), guidance, noise=(1 - t) * z + t * eps,
                                            precision=self.precision,
                                            t_start=t)
                for (k, j, _), grid in zip(chunk, g):
                    out[k][j] = grid
                    results[resolved[k].index].projected.append(j)
        return out

    @property
    def prototype_substitutor(self):
        """The :class:`~gpsk_materials.prototypes.PrototypeSubstitutor` of ``request.prototypes``: by default the
        shipped library (the model's training crystals and the held-out MP-20 test materials), loaded on first use;
        assign another (e.g. ``PrototypeSubstitutor(PrototypeLibrary.load().without_holdout())`` for a benchmark on
        those test materials, or one of your own crystals)."""
        if self._prototype_substitutor is None:
            from gpsk_materials.prototypes import PrototypeSubstitutor

            self._prototype_substitutor = PrototypeSubstitutor()
        return self._prototype_substitutor

    @prototype_substitutor.setter
    def prototype_substitutor(self, substitutor) -> None:
        from gpsk_materials.prototypes import PrototypeSubstitutor

        if not isinstance(substitutor, PrototypeSubstitutor):
            raise ConditioningError(f"prototype_substitutor must be a PrototypeSubstitutor, got {type(substitutor).__name__}")
        self._prototype_substitutor = substitutor

    def _add_prototypes(self, resolved: Sequence[ResolvedRequest], decoded: list) -> list:
        """Stage 3b: each request's ``prototypes`` substituted known crystals appended to its decoded candidates, so
        candidate j >= ``candidates`` is prototype j - ``candidates``. A fixed cell content (``formula_units`` or an
        explicit cell) is kept; a reduced formula takes the template's own number of formula units, within
        ``max_sites``; a requested space group puts the templates of that group first."""
        out = []
        for r, (structures, reasons) in zip(resolved, decoded):
            if r.request.prototypes:
                extra = self.prototype_candidates(r, r.request.prototypes)
                structures, reasons = list(structures) + extra, list(reasons) + [None] * len(extra)
            out.append((structures, reasons))
        return out

    def prototype_candidates(self, r: ResolvedRequest, k: int) -> list:
        """Up to ``k`` substituted known crystals for one resolved request (the generator's and the powder
        solver's prototype candidates): a fixed cell content (``formula_units`` or an explicit cell) is kept, a
        reduced formula takes the template's own number of formula units within ``max_sites``, a requested space
        group puts the templates of that group first (:meth:`PrototypeSubstitutor.get_structures`)."""
        fixed = (r.cell_choice or {}).get("chosen_by") in ("formula_units", "explicit cell content")
        extra = self.prototype_substitutor.get_structures(
            r.reduced, n=k, formula_units=r.formula_units[0] if fixed else None, space_group=r.conditions.space_group)
        return [s for s in extra if len(s) <= self.max_sites]

    def _decode(self, resolved: Sequence[ResolvedRequest], grids: Sequence[Tensor], progress: bool,
                decoder: Any = None) -> list:
        """Stage 3 for all requests at once (the decoder batches across requests): per request, the decoded
        Structures (None where a grid failed) and the reasons of the failures. ``decoder`` replaces the
        generator's own."""
        decoder = self.decoder if decoder is None else decoder
        out = []
        for exact in (True, False):  # given cell contents / free compositions
            todo = [k for k, r in enumerate(resolved) if (r.reduced is not None) == exact]
            if not todo:
                continue
            comps = [resolved[k].cell(j) for k in todo for j in range(len(grids[k]))]
            flat = torch.cat([grids[k] for k in todo])
            # candidates kept below the decoder's acceptance are judged by the checks, and a returned one is
            # flagged there (result_flags), so the decoder's own warning about them would only be noise
            structures, reasons = decoder.decode_many(flat, comps, return_errors=True, pbar=progress,
                                                      exact_counts=exact, warn_kept=False)
            start = 0
            for k in todo:
                n = len(grids[k])
                out.append((k, structures[start : start + n], reasons[start : start + n]))
                start += n
        return [(d, e) for _, d, e in sorted(out, key=lambda t: t[0])]

    def _finish_request(self, r: ResolvedRequest, grids: Tensor, flags: frozenset[str], res: GenerationResult,
                        decoded_reasons: tuple[list, list]) -> None:
        """Stage 4 for one request: check and select (:func:`~gpsk_materials.checks.post.post_checks`), then
        write the provenance (fills ``res``)."""
        decoded, reasons = decoded_reasons
        cands = [(j, s) for j, s in enumerate(decoded) if s is not None]
        res.decoded = sum(j < r.candidates for j, _ in cands)  # prototype candidates (j >= candidates) were not sampled
        res.failures = [f"sample {j}: {_GRID_PREFIX.sub('', e)}" for j, e in enumerate(reasons) if e is not None]
        want = r.request.n
        if len(cands) < want:
            logger.warning(
                "request %d (%s): %d of %d candidates decoded, %d structures wanted",
                r.index, r.formula, len(cands), len(grids), want,
            )
        structures = [s for _, s in cands]
        records = post_checks(
            structures, r.conditions, flags,
            # the checks' total first; among equal totals (and without checks) the candidate whose grid its
            # decoded structure explains best
            keep=want if r.request.best_of > 1 or r.request.prototypes else None,
            tie_break=[provenance.read(s, "decode", {}).get("relative_residual", 0.0) for s in structures],
            scorer=self._scorer(flags) if DEFAULT_CHECKS in flags else None,
            potential=self.potential if "energy" in flags else None,
            hull=self._reference_hull() if "hull" in flags else None,
            symprec=self.symprec, relax_steps=self.relax_steps, fmax=self.fmax,
        )[:want]
        res.structures = []
        for rank, rec in enumerate(records):
            j, decoded_s = cands[rec.index]
            s = rec.structure
            for section, value in self._provenance(r, decoded_s, j, rank, rec, flags, res).items():
                provenance.write(s, section, value)
            if flagged := result_flags(rec.checks, provenance.read(decoded_s, "decode", {})):
                logger.warning(
                    "request %d (%s): returned structure %d: %s%s; see properties['gpsk']['checks']", r.index,
                    r.formula, rank, flagged,
                    "" if rec.checks.get("sound", True)
                    else f"; the {res.decoded} decoded candidates"
                    + (f" and {len(cands) - res.decoded} prototypes" if len(cands) > res.decoded else "")
                    + " held no sound one to take its place",
                )
            res.structures.append(s)

    def _provenance(self, r: ResolvedRequest, decoded, sample: int, rank: int, rec, flags: frozenset[str],
                    res: GenerationResult) -> dict[str, Any]:
        """The ``gpsk`` sections of one kept structure (see :mod:`gpsk_materials.provenance`). A prototype candidate
        (``sample`` >= ``r.candidates``) has no sample index and keeps its ``prototype`` section instead of
        ``decode``."""
        units = None
        if r.reduced is not None:
            units = len(decoded) // max(1, sum(r.reduced.values()))
        if sample >= r.candidates:
            cell = {el: v * units for el, v in r.reduced.items()}
            conditions = replace(r.conditions, composition={el: float(cell[el]) for el in r.conditions.composition})
            source = {"conditions": asdict(conditions), "sample_index": None,
                      "prototype_index": sample - r.candidates,
                      "cell": {"composition": formula_string(cell), "formula_units": units, "chosen_by": "prototype"}}
        else:
            source = {"conditions": asdict(r.candidate_conditions(sample)), "sample_index": sample,
                      "cell": None if r.reduced is None else {
                          "composition": formula_string(r.cell(sample)), "formula_units": r.formula_units[sample],
                          **r.cell_choice}}
        return provenance.plain({
            "request": {
                **r.request.to_dict(),
                "index": r.index,
                **source,
                "rank": rank,
                "batch_size": self._batch_size(),
                "precision": self.precision,
                "compile_mode": self.compile_mode,
                "candidates": {"drawn": res.candidates, "decoded": res.decoded, "failed": res.failed,
                               "projected": len(res.projected)},
                "projected": sample in res.projected,
            },
            "model": {
                "name": self.model.config.name,
                "path": None if self.model_path is None else str(self.model_path),
                "hash": self.model_hash,
                "device": str(self.device),
            },
            **({"prototype": provenance.read(decoded, "prototype")} if sample >= r.candidates else
               {"decode": {**provenance.read(decoded, "decode", {}), "formula_units": units}}),
            "scores": rec.scores,
            "checks": {"run": sorted(flags), "results": rec.checks,
                       "flags": result_flags(rec.checks, provenance.read(decoded, "decode", {}))},
        })

