"""Recommender models over an embedding collection (plain ``nn.Module``s, no training loop).

Every model is built as ``Model(embeddings, num_dense, **hyperparameters)``: ``embeddings``
is a TorchRec ``EmbeddingBagCollection`` or any compressed drop-in (same keys and widths,
``embedding_bag_configs()``), stored as ``model.embeddings``; ``num_dense`` may be 0. All
other hyperparameters are keyword-only with defaults, so a config can say
``class_path: reccomp.models.DLRM``. ``forward(dense (B, num_dense), sparse KJT) -> (B,)``.
"""

from reccomp.models.dcn import DCNv2
from reccomp.models.deepfm import DeepFM
from reccomp.models.dlrm import DLRM
from reccomp.models.layers import MLP, FeatureLayout
from reccomp.models.logreg import LogisticRegression
from reccomp.models.mf import MatrixFactorization, MFOutput

__all__ = [
    "DLRM",
    "MLP",
    "DCNv2",
    "DeepFM",
    "FeatureLayout",
    "LogisticRegression",
    "MFOutput",
    "MatrixFactorization",
]
