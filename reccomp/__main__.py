"""``python -m reccomp``: the same as the ``reccomp`` command (e.g. under torchrun)."""

from reccomp.cli import main

main()
