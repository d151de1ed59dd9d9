"""Full-track separation, written once for every family and for the reference methods.

* :mod:`.overlap_add` -- chunked inference with cross-faded overlap-add (bounded model memory).
* :mod:`.wiener` -- the multichannel Wiener post-filter.
* :mod:`.separators` -- a trained model, the mixture, and the oracle masks as one ``Separator``.
* :mod:`.audio` -- reading any input file, resampling, writing estimates atomically.
* :mod:`.command` -- ``lightning-sep separate``.
"""

from lightning_sep.separation.overlap_add import overlap_add
from lightning_sep.separation.separators import (
    REFERENCE_METHODS,
    MixtureSeparator,
    ModelSeparator,
    OracleSeparator,
    Separator,
    reference_separator,
    separate_track,
)
from lightning_sep.separation.wiener import wiener

__all__ = [
    "REFERENCE_METHODS", "MixtureSeparator", "ModelSeparator", "OracleSeparator", "Separator",
    "overlap_add", "reference_separator", "separate_track", "wiener",
]
