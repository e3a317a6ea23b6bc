"""The FineTuneJob API (the typed model that the CRD, operator and trainer share).

``describe(ValidationError)`` turns pydantic errors into ``spec.freeze.topK: <problem>`` lines,
the way the API server names fields (``kubegraft validate`` and ``kubegraft run`` print those).
"""

from kubegraft.api.errors import describe
from kubegraft.api.v1alpha1 import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    FineTuneJob,
    FineTuneJobSpec,
    FineTuneJobStatus,
)

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "FineTuneJob",
    "FineTuneJobSpec",
    "FineTuneJobStatus",
    "describe",
]
