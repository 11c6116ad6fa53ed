"""The one namespace of what gpsk_materials writes on a structure: ``structure.properties["gpsk"]``.

Sections (each a plain JSON dictionary):

=========== ===============================================================================================
``decode``  the closed-form decoder: ``method``, ``relative_residual``, ``composition`` (given / inferred),
            ``scale``, ``confidence`` (and ``formula_units`` for a generated structure)
``scores``  the :class:`~gpsk_materials.checks.scoring.CandidateScorer` breakdown (``total``, ...)
``checks``  the post-checks of a generated structure: ``run`` (the checks run) and ``results``
``request`` the generation request as asked and how the structure was drawn (seed, sample, rank, candidates)
``model``   the weights that generated it (``name``, ``path``, ``hash``) and the ``device``
``prototype`` a candidate substituted from a known crystal (:mod:`gpsk_materials.prototypes`): the template's
            ``material_id`` and ``formula``, the ``pettifor_distance``, the element ``mapping``, ``volume``
``diffraction`` a structure solved from a powder pattern: ``rwp``, ``rp``, ``agreement``, the refined
            parameters and lattice, ``rank`` (:mod:`gpsk_materials.diffraction.solve`)
=========== ===============================================================================================

Per-site arrays of the decoder (``decode_occupancy``, ``decode_element_margin``, ``decode_radial_misfit``, ``decode_confidence``,
``decode_peak_height``) stay in ``site_properties``, where pymatgen keeps them aligned with the sites. ASE Atoms
carry the same dictionary in ``atoms.info["gpsk"]``.
"""

from __future__ import annotations

from typing import Any

KEY = "gpsk"
SECTIONS = ("request", "model", "decode", "scores", "checks", "prototype", "diffraction")


def _props(obj: Any) -> dict:
    props = getattr(obj, "properties", None)
    if props is None:
        props = getattr(obj, "info", None)
    return props or {}


def read(obj: Any, section: str | None = None, default: Any = None) -> Any:
    """The ``gpsk`` provenance of a Structure (or ASE Atoms), or one of its sections."""
    ns = _props(obj).get(KEY) or {}
    return ns if section is None else ns.get(section, default)


def plain(obj: Any) -> Any:
    """JSON-ready copy of ``obj``: monty's ``jsanitize`` (NumPy arrays and scalars to Python, tuples to lists,
    keys to strings, MSONable objects to their ``as_dict``, anything else to its ``str``), then NaN and
    infinities to None (JSON has no such numbers; ``json.loads`` ``parse_constant`` maps Python's ``NaN`` /
    ``Infinity`` tokens)."""
    import json

    from monty.json import jsanitize

    return json.loads(json.dumps(jsanitize(obj, recursive_msonable=True)), parse_constant=lambda _: None)


def write(structure: Any, section: str, value: Any) -> None:
    """Set one section of a Structure's ``gpsk`` provenance (the other sections and properties are kept)."""
    props = dict(structure.properties or {})
    props[KEY] = {**(props.get(KEY) or {}), section: value}
    structure.properties = props


__all__ = ["KEY", "SECTIONS", "plain", "read", "write"]
