from reccomp.sparse.batch import Batch, RetrievalBatch

__all__ = ["Batch", "RetrievalBatch"]
