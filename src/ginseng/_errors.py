"""Exceptions raised by ginseng.

Every error a user can trigger with bad input is a :class:`GinsengError`, so
``except ginseng.GinsengError`` catches all of them, and the message names the
offending key, path or count.
"""


class GinsengError(Exception):
    """Base class of every error ginseng raises on purpose."""


class InputError(GinsengError, ValueError):
    """The input data, a parameter or a key does not fit the request."""


class GeneMismatchError(InputError):
    """Too few of the model's genes could be found in the query."""


class StoreError(GinsengError):
    """A GinsengDataset store is missing, foreign, truncated or from another version."""


class ModelFormatError(GinsengError):
    """A model file is not a readable ginseng model of a supported version."""


class DownloadError(InputError):
    """A URL could not be fetched."""


class WriteError(GinsengError, OSError):
    """Writing one of ginseng's outputs failed (a full disk, a quota, permissions).

    An :class:`OSError` too, so ``except OSError`` keeps working; the message names the
    path, what was being written and, for a lack of space, how much the step needs.
    """
