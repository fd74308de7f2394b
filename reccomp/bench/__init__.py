"""``reccomp bench``: methods x budgets x seeds on one data set and model, in one table.

See :mod:`reccomp.bench.config` for the grid's config, :mod:`.runner` for running it
(resumable, one subprocess per cell), :mod:`.report` for the tables and the plot.
"""
