"""Exporting trained or compressed models for serving (``reccomp export``).

:mod:`.program`: the whole model as a tensor-only ``torch.export`` program, optionally with
quantized storage tables; :mod:`.fields`: how raw values become rows; :mod:`.artifact`: the
artifact directory and its manifest. :mod:`reccomp.serving` loads what this writes.
"""
