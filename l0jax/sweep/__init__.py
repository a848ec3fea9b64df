"""Sweeps of main.py runs and their results (`python -m l0jax.sweep`, see __main__.py).

`planning` makes the members, `running` runs them, `reporting` reads their
results into the table and the front. The results scripts call these:
"""

from l0jax.sweep.reporting import (FRONT_FILE, RESULTS_FILE, TABLE_FILE, is_finished, measured,
                                   summarise, write_results)

__all__ = ["FRONT_FILE", "RESULTS_FILE", "TABLE_FILE", "is_finished", "measured", "summarise",
           "write_results"]
