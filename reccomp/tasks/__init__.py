from reccomp.tasks.base import RecTask
from reccomp.tasks.ctr import CTRTask
from reccomp.tasks.rating import RatingTask
from reccomp.tasks.retrieval import RetrievalTask

__all__ = ["CTRTask", "RatingTask", "RecTask", "RetrievalTask"]
