"""The one error every unusable weights file or folder raises."""

from __future__ import annotations


class WeightsError(ValueError):
    """A weights file or folder cannot be loaded as a Wan2.1 T2V DiT.

    The message names the file, says what it looks like, what was expected and how to fix it.
    """
