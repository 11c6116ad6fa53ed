"""The one vocabulary of the ``gpsk`` subcommands: each concept has one option name, one meaning and one help text.

=================== ==========================================================================================
option              meaning (wherever it appears)
=================== ==========================================================================================
``--model``         the model: a model folder (default: the one shipped in the package); ``gpsk train --model``
                    names the configuration a new model is built from
``--device``        torch device (``cpu``, ``cuda``)
``--seed``          base random seed
``--out``           output folder
``-n`` / ``--n``    structures per request
``--workers``       worker processes
``--guidance``      classifier-free guidance scale of the flow sampler
``--steps``         Euler steps of the flow sampler (never relaxation steps)
``--space-group``   space-group number 1-230 (requested, or compared with)
``--crystal-system`` crystal system triclinic ... cubic (requested)
``--best-of``       candidates drawn per kept structure; the best are kept
``--prototypes K``  also take the K nearest known crystals of the stoichiometry, elements substituted, as candidates
``--checks``        post-checks of the candidates (``validity_symmetry``, the default; ``basic`` its old name)
``--potential``     interatomic potential of the energy checks
``--fmax``          relaxation force tolerance, eV/A
``--relax-steps``   maximum relaxation (FIRE) steps
``--relax-batch``   structures per forward pass of the batched relaxation
``--hull [KIND]``   energy above the convex hull, against KIND (``self``: the potential's own hull of the
                    reference pool ``shared/data/pool.csv.gz``, the default when ``--hull`` is given alone)
``--no-progress``   hide the progress bars
``--fail-fast``     stop at the first item that fails instead of reporting it and going on
=================== ==========================================================================================

Old spellings that scripts may hold (``gpsk check --steps`` for the relaxation steps, ``gpsk evaluate --quiet``)
are kept as hidden aliases that warn on stderr (:class:`DeprecatedAlias`). Defaults come from
:mod:`gpsk_materials.defaults`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gpsk_materials.checks.post import DEFAULT_CHECKS
from gpsk_materials.defaults import FMAX, GUIDANCE, RELAX_BATCH, RELAX_STEPS, SAMPLER_STEPS

#: the kinds of hull ``--hull`` takes (``self`` when given alone)
HULLS = ("self", "mp-dft", "both")

#: name -> (flags, argparse keywords); a subcommand may override the keywords (a default, a longer help)
OPTIONS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "model": (("--model",), dict(type=Path, default=None,
                                 help="model folder (default: the model shipped in the package)")),
    "device": (("--device",), dict(default="cpu", help="torch device (cpu, cuda; default %(default)s)")),
    "seed": (("--seed",), dict(type=int, default=None, help="base random seed")),
    "out": (("--out",), dict(type=Path, help="output folder")),
    "n": (("-n", "--n"), dict(type=int, default=1, help="structures per request (default %(default)s)")),
    "workers": (("--workers",), dict(type=int, default=1, help="worker processes (default %(default)s)")),
    "guidance": (("--guidance",), dict(type=float, default=GUIDANCE,
                                       help=f"classifier-free guidance scale (default {GUIDANCE:g})")),
    "steps": (("--steps",), dict(type=int, default=SAMPLER_STEPS,
                                 help=f"Euler steps of the flow sampler (default {SAMPLER_STEPS})")),
    "space_group": (("--space-group",), dict(type=int, default=None, help="space-group number 1-230")),
    "crystal_system": (("--crystal-system",), dict(default=None, help="triclinic ... cubic")),
    "best_of": (("--best-of",), dict(type=int, default=1,
                                     help="candidates per wanted structure; the best are kept (default %(default)s)")),
    "prototypes": (("--prototypes",), dict(type=int, default=0, metavar="K",
                                           help="also take the K nearest known crystals of the same stoichiometry, "
                                                "their elements substituted (gpsk_materials.prototypes), as "
                                                "candidates ranked with the model's (default 0)")),
    "checks": (("--checks",), dict(default=DEFAULT_CHECKS,
                                   help=f"comma-separated post-checks: none, {DEFAULT_CHECKS} (validity, symmetry, "
                                        "connectivity; the default; 'basic' is its old name), energy, volume_scan, "
                                        "relax, hull")),
    "potential": (("--potential",), dict(default=None, help="interatomic potential: a matgl model name or folder, "
                                         "or 'chgnet[:version]' (default: the shared TensorNet-MatPES)")),
    "fmax": (("--fmax",), dict(type=float, default=FMAX,
                               help=f"relaxation force tolerance, eV/A (default {FMAX})")),
    "relax_steps": (("--relax-steps",), dict(type=int, default=RELAX_STEPS,
                                             help="maximum relaxation steps (default %(default)s)")),
    "relax_batch": (("--relax-batch",), dict(type=int, default=RELAX_BATCH,
                                             help="structures per forward pass of the relaxation (default %(default)s)")),
    "hull": (("--hull",), dict(nargs="?", const="self", default=None, choices=HULLS, metavar="KIND",
                               help="energy above the convex hull against KIND: self (the potential's own hull of "
                                    "shared/data/pool.csv.gz; the default when --hull is given alone), mp-dft "
                                    "(Materials Project DFT) or both")),
    "no_progress": (("--no-progress",), dict(action="store_true", help="hide the progress bars")),
    "fail_fast": (("--fail-fast",), dict(action="store_true",
                                         help="stop at the first item that fails (default: report it and go on)")),
}


class DeprecatedAlias(argparse.Action):
    """An old spelling of an option, kept for scripts: hidden from ``--help``, it stores into the new option's
    ``dest`` and warns on stderr that the new spelling is ``new``."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: warning: {option_string} is deprecated, use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, True if self.nargs == 0 else values)


def add(parser: argparse.ArgumentParser, *names: str, **overrides: dict[str, Any]) -> None:
    """Add the options ``names`` of :data:`OPTIONS` to ``parser``; ``overrides[name]`` replaces keywords of one
    (e.g. ``out=dict(default=Path("results"))``).

    Raises
    ------
    KeyError
        A name that is not in :data:`OPTIONS` (a programming error, not user input).
    """
    for name in names:
        flags, kwargs = OPTIONS[name]
        parser.add_argument(*flags, **{**kwargs, **overrides.get(name, {})})


def alias(parser: argparse.ArgumentParser, old: str, name: str, **kwargs: Any) -> None:
    """Keep ``old`` as a hidden, deprecated spelling of the option ``name`` of :data:`OPTIONS` (``kwargs``: its
    ``type``, or ``nargs=0`` for a flag)."""
    flags, _ = OPTIONS[name]
    parser.add_argument(old, dest=name, action=DeprecatedAlias, new=flags[-1], help=argparse.SUPPRESS,
                        default=argparse.SUPPRESS, **kwargs)
