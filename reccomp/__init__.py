"""reccomp: recommender models with compressed TorchRec embedding tables.

The top-level names load lazily, so ``import reccomp.serving`` stays free of Lightning and
training code::

    >>> import reccomp
    >>> reccomp.EmbeddingSpec(method="qr", budget=0.25).method
    'qr'
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it
_EXPORTS = {
    "RecDataModule": "reccomp.data.datamodule",
    "EmbeddingSpec": "reccomp.modules.embedding",
    "RatingTask": "reccomp.tasks",
    "CTRTask": "reccomp.tasks",
    "RetrievalTask": "reccomp.tasks",
    "make_trainer": "reccomp.api",
    "models": "reccomp.models",
    "compress": "reccomp.compress",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'reccomp' has no attribute {name!r}")
    mod = importlib.import_module(module)
    return mod if module.endswith("." + name) else getattr(mod, name)
