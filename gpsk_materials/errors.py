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


def batch_policy(
    ignore_errors: bool, return_errors: bool, pbar: bool, errors: str | None = None, progress: bool | None = None,
    where: str = "decode_many",
) -> tuple[bool, bool, bool]:
    """``(ignore_errors, return_errors, pbar)`` of a batch call (``featurize_many``, ``decode_many``).

    The convention is matminer's ``BaseFeaturizer.featurize_many(entries, ignore_errors, return_errors, pbar)``
    (Ward et al., Comput. Mater. Sci. 152, 60 (2018)): ``ignore_errors`` puts a placeholder (None, or NaN values)
    where an item fails instead of raising; ``return_errors`` also returns the reasons. Here a call with
    ``return_errors=True`` ignores errors too (the reason is returned, not raised), where matminer asks for both.
    The older keywords ``errors={"raise", "none"}`` and ``progress`` are accepted with a ``DeprecationWarning``.

    Raises
    ------
    ConfigError
        ``errors`` is neither ``"raise"`` nor ``"none"``.
    """
    import warnings

    if errors is not None:
        if errors not in ("raise", "none"):
            raise ConfigError(f"{where}: errors must be 'raise' or 'none', got {errors!r}")
        warnings.warn(f"{where}(errors=...) is deprecated: use ignore_errors=True (None in place of a failure) and "
                      "return_errors=True (the reasons returned)", DeprecationWarning, stacklevel=3)
        ignore_errors = ignore_errors or errors == "none"
    if progress is not None:
        warnings.warn(f"{where}(progress=...) is deprecated: use pbar=", DeprecationWarning, stacklevel=3)
        pbar = progress
    return bool(ignore_errors or return_errors), bool(return_errors), bool(pbar)


class DeprecatedLastErrors:
    """The ``last_errors`` attribute of the decoders, kept for older callers: the reasons of the last
    ``decode_many``, now returned by ``decode_many(..., return_errors=True)``."""

    _last_errors: list = []

    @property
    def last_errors(self) -> list:
        import warnings

        warnings.warn(f"{type(self).__name__}.last_errors is deprecated: use decode_many(..., return_errors=True)",
                      DeprecationWarning, stacklevel=2)
        return list(self._last_errors)
