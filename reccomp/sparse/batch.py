"""Batch types: dense features, a KeyedJaggedTensor of sparse features, and labels.

Example::

    >>> import torch
    >>> from torchrec import KeyedJaggedTensor
    >>> kjt = KeyedJaggedTensor.from_lengths_sync(
    ...     keys=["user"], values=torch.tensor([3, 5]), lengths=torch.tensor([1, 1]))
    >>> b = Batch(dense=torch.zeros(2, 0), sparse=kjt, labels=torch.tensor([1.0, 0.0]))
    >>> len(b)
    2
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor


@dataclass
class Batch:
    """One training / evaluation batch.

    Attributes:
        dense: (B, D) float32, D may be 0.
        sparse: KeyedJaggedTensor with one key per sparse field, stride B.
        labels: (B,) float32 (rating or click).
        pad: trailing rows that repeat the last one, so that every rank's share of an
            evaluation batch has one size (TorchRec's row-wise sharding needs that);
            evaluation drops their outputs. 0 in one process.
    """

    dense: torch.Tensor
    sparse: KeyedJaggedTensor
    labels: torch.Tensor
    pad: int = 0

    def __len__(self) -> int:
        return self.labels.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(
            self.dense.to(device, non_blocking=non_blocking),
            self.sparse.to(torch.device(device), non_blocking=non_blocking),
            self.labels.to(device, non_blocking=non_blocking),
            self.pad,
        )

    def pin_memory(self) -> Batch:
        return Batch(self.dense.pin_memory(), self.sparse.pin(), self.labels.pin_memory(), self.pad)


@dataclass
class RetrievalBatch:
    """A batch of users to rank all items for (retrieval evaluation).

    Attributes:
        sparse: KeyedJaggedTensor holding the users' rows under the user key (other keys
            empty), stride B.
        target: (B, I) bool, the held-out positive items of each user.
        exclude: (B, I) bool, items to leave out of the ranking (seen in training, or in
            validation when testing).
        pad: trailing rows repeating the last user (see :class:`Batch`).
    """

    sparse: KeyedJaggedTensor
    target: torch.Tensor
    exclude: torch.Tensor
    pad: int = 0

    def __len__(self) -> int:
        return self.target.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> RetrievalBatch:
        return RetrievalBatch(
            self.sparse.to(torch.device(device), non_blocking=non_blocking),
            self.target.to(device, non_blocking=non_blocking),
            self.exclude.to(device, non_blocking=non_blocking),
            self.pad,
        )
