"""Building blocks shared by the models: an MLP and the glue from a pooled ``KeyedTensor``.

Every model receives an embedding collection (a TorchRec ``EmbeddingBagCollection`` or any
compressed drop-in) and reads its feature names and widths from
``embedding_bag_configs()`` once, in the constructor (:class:`FeatureLayout`). On the hot
path the collection's output ``KeyedTensor`` is turned into one ``(B, sum of dims)`` tensor
in that fixed feature order; when the collection already emits that order (TorchRec's own
collections do) this is free, otherwise one fused permute reorders it.

Example:
    >>> mlp = MLP(8, [16, 4], last_activation=False)
    >>> mlp(torch.randn(2, 8)).shape
    torch.Size([2, 4])
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torchrec.modules.embedding_modules import EmbeddingBagCollectionInterface
from torchrec.sparse.jagged_tensor import KeyedTensor

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}


class MLP(nn.Sequential):
    """Stack of ``Linear -> activation -> dropout`` blocks.

    Args:
        in_dim: input width.
        sizes: output width of each layer; empty means the identity (``out_dim == in_dim``).
        activation: one of ``relu``, ``gelu``, ``silu``, ``tanh``, ``sigmoid``, ``identity``.
        dropout: dropout probability after each activation (0 disables it).
        last_activation: if False the last layer is a bare ``Linear`` (no activation, no
            dropout), e.g. for a logit or a projection.

    Shapes: ``(B, in_dim) -> (B, out_dim)``.

    Example:
        >>> MLP(3, [5, 1], last_activation=False)(torch.zeros(4, 3)).shape
        torch.Size([4, 1])
    """

    def __init__(
        self,
        in_dim: int,
        sizes: Sequence[int],
        activation: str = "relu",
        dropout: float = 0.0,
        last_activation: bool = True,
    ) -> None:
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {list(_ACTIVATIONS)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if in_dim < 0 or any(s <= 0 for s in sizes):
            raise ValueError(f"MLP widths must be positive, got in_dim={in_dim}, sizes={sizes}")
        layers: list[nn.Module] = []
        width = in_dim
        for i, size in enumerate(sizes):
            layers.append(nn.Linear(width, size))
            if last_activation or i < len(sizes) - 1:
                layers.append(_ACTIVATIONS[activation]())
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
            width = size
        super().__init__(*layers)
        self.in_dim = in_dim
        self.out_dim = width


class FeatureLayout:
    """Feature names and pooled widths of an embedding collection, in config order.

    Attributes:
        keys: feature names, in the order of ``embedding_bag_configs()`` (table order, then
            each table's ``feature_names``).
        dims: pooled width of each feature (its table's ``embedding_dim``).
        offsets: start column of each feature in the ``(B, sum(dims))`` values.
        total_dim: ``sum(dims)``.

    Example:
        >>> layout = FeatureLayout(ebc)            # ebc: EmbeddingBagCollectionInterface
        >>> x = layout.values(ebc(kjt))            # (B, layout.total_dim)
    """

    def __init__(self, embeddings: EmbeddingBagCollectionInterface) -> None:
        keys: list[str] = []
        dims: list[int] = []
        for config in embeddings.embedding_bag_configs():
            for name in config.feature_names:
                keys.append(name)
                dims.append(int(config.embedding_dim))
        if not keys:
            raise ValueError("the embedding collection has no features")
        if len(set(keys)) != len(keys):
            raise ValueError(f"feature names must be unique, got {keys}")
        self.keys = keys
        self.dims = dims
        self.offsets = [sum(dims[:i]) for i in range(len(dims))]
        self.total_dim = sum(dims)

    @property
    def num_features(self) -> int:
        return len(self.keys)

    def uniform_dim(self) -> int | None:
        """The common embedding width if all features share it, else None."""
        return self.dims[0] if len(set(self.dims)) == 1 else None

    def index(self, key: str) -> int:
        """Position of ``key``; a ValueError names the known features otherwise."""
        if key not in self.keys:
            raise ValueError(f"feature {key!r} not in the embedding collection {self.keys}")
        return self.keys.index(key)

    def values(self, kt: KeyedTensor) -> Tensor:
        """Pooled embeddings ``(B, total_dim)`` in this layout's key order.

        Free when the collection emits exactly these keys in this order; otherwise (another
        order, or extra keys) one regroup copies the needed columns.
        """
        if kt.keys() == self.keys:
            return kt.values()  # (B, total_dim)
        return KeyedTensor.regroup([kt], [self.keys])[0]  # (B, total_dim)

    def describe(self) -> str:
        return ", ".join(f"{k}:{d}" for k, d in zip(self.keys, self.dims, strict=True))


def check_num_dense(num_dense: int) -> int:
    """Validate ``num_dense`` (0 means the model has no dense input) and return it."""
    if num_dense < 0:
        raise ValueError(f"num_dense must be >= 0, got {num_dense}")
    return num_dense


__all__ = ["MLP", "FeatureLayout", "check_num_dense"]
