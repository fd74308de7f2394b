"""Serving exported models: :func:`load` an artifact of ``reccomp export`` and predict from raw
values (:class:`Predictor`), or serve it over HTTP (``reccomp serve``, :mod:`.server`).

This package imports neither Lightning nor reccomp's training or data modules.
"""

from reccomp.serving.encode import RequestError
from reccomp.serving.predictor import FORMAT_VERSION, ArtifactError, Predictor, load

__all__ = ["FORMAT_VERSION", "ArtifactError", "Predictor", "RequestError", "load"]
