"""Sharded training on TorchRec's DistributedModelParallel (``--trainer.strategy torchrec``).

- :mod:`~reccomp.distributed.plan`: sharding plans of the storage tables (auto or by type);
- :mod:`~reccomp.distributed.state`: full state into shards, shards back into an ordinary
  checkpoint, and DCP checkpoints;
- :mod:`~reccomp.distributed.strategy`: the Lightning strategy (registered as ``torchrec``).
"""
