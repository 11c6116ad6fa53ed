"""Exception types raised by gpsk_materials.

Every error the library raises on bad input derives from :class:`GPSKError`; most also derive from
``ValueError`` so that generic handlers keep working.
"""


class GPSKError(Exception):
    """Base class of every error raised by gpsk_materials."""


class InvalidStructureError(GPSKError, ValueError):
    """A structure cannot be represented (empty, NaN/inf coordinates, dummy species, ...)."""


class UnknownElementError(InvalidStructureError):
    """An element has no X-ray form factor (or is not a real element)."""


class DisorderError(InvalidStructureError):
    """A structure has partial occupancies that the requested operation does not support."""


class DegenerateLatticeError(InvalidStructureError):
    """A lattice is singular, too small, or too large for the 32^3 grid (aliasing)."""


class ResolutionError(InvalidStructureError):
    """A structure has more sites, or sites closer together, than the grid can resolve."""


class GridError(GPSKError, ValueError):
    """A grid has the wrong shape, dtype, or non-finite values."""


class DecodingError(GPSKError, RuntimeError):
    """A grid could not be decoded into a trustworthy structure."""


class ConditioningError(GPSKError, ValueError):
    """A generation or training condition is invalid (unknown element, space group out of range, ...)."""


class ConfigError(GPSKError, ValueError):
    """A model or training configuration is unknown, or one of its fields has the wrong type or value (the message
    names the field)."""


class UnknownConfigError(ConfigError, KeyError):
    """No named model configuration has this name (a ``KeyError`` too, as ``get_config`` raised before)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(GPSKError, RuntimeError):
    """A checkpoint is missing, truncated, or belongs to another configuration."""


class DataError(GPSKError, ValueError):
    """A dataset file or record cannot be read."""


class DiffractionError(GPSKError, ValueError):
    """A powder diffraction pattern cannot be used (arrays of different length, negative or non-finite intensities,
    2theta outside (0, 180) degrees or not increasing, an unknown wavelength, an unreadable pattern file)."""


class PotentialError(CheckpointError, ValueError):
    """An interatomic potential cannot be found or loaded (unknown name or backend, missing or unreadable weights)."""
