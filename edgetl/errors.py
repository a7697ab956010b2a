"""Errors a user can cause. The CLI prints them as one line and exits with code 1.

Each message names what was received and what to do about it.
"""

from __future__ import annotations


class EdgetlError(Exception):
    """Base class: a problem with the user's input or environment, not a bug in edgetl."""


class DataError(EdgetlError):
    """The dataset folder cannot be used as given."""


class ModelNotFoundError(EdgetlError):
    """A model name that the registry does not know."""


class WeightsUnavailableError(EdgetlError):
    """Pretrained weights cannot be had (no network, missing file, unreadable file)."""


class ExportMismatchError(EdgetlError):
    """An exported file disagrees with its source model beyond the declared tolerance."""


class OutputExistsError(EdgetlError):
    """The output folder already holds files that would be overwritten."""


class ModelFileError(EdgetlError):
    """A model file that cannot be loaded or run (missing, truncated, not a model)."""


class UnsafeModelError(ModelFileError):
    """A model file that would run code from itself when loaded (a Lambda layer, marshalled
    bytecode, a module import, a file-writing graph op); refused unless the user trusts it."""


class MetadataError(EdgetlError):
    """Metadata that cannot be written to (or read from) the given model."""


class ReportError(EdgetlError):
    """A build folder without a readable report.json."""


class SettingError(EdgetlError):
    """A compile setting (from the command line, a recipe or the Python API) of the wrong type or range."""


class OutputLocationError(EdgetlError):
    """--out cannot be used: a file, below a file, unwritable, inside DATA, or out of space."""


class OutputInUseError(EdgetlError):
    """Another compile holds the lock of the same --out."""


class ResourceError(EdgetlError):
    """The work asked for cannot fit this machine (e.g. decoded images larger than its memory)."""


class RuntimeUnavailableError(EdgetlError):
    """A runtime that cannot run here (no GPU, GPU package or provider missing).

    `edgetl bench` turns it into a "skipped: ..." row; elsewhere it is a one-line user error.
    """


class TargetConstraintError(EdgetlError):
    """A deployed file that the target's runtime would not run as intended."""


class BenchSettingsError(EdgetlError):
    """A bench option that cannot be used as given."""
