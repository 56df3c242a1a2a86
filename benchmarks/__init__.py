"""DreamLake benchmarks: ``python -m benchmarks`` (see ``benchmarks/__main__.py``).

Not part of the test run. Layout: ``workloads.py`` (the six workloads, the
floor and the DreamLake system), ``peers/`` (W&B, MLflow, tensorboardX, Rerun
mapped onto the same workloads), ``_stats.py`` (percentiles, RSS, bytes),
``_report.py`` (the table).
"""
