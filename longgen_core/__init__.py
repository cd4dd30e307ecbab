"""longgen_core: the small tested library behind the LongGen notebooks.

Modules: ``patterns`` (sparse patterns, block layouts, budgets), ``attention`` (dense
reference and Triton kernels), ``plots`` (mask pictures and their text twins).
"""

__version__ = "0.1.0"
