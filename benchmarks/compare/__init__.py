"""The same workloads on LangGraph and DBOS Transact, measured in the same run as phaseledger.

Installed with the ``compare`` extra (``pip install -e ".[compare]"``); without it these
benchmarks are skipped. See :mod:`benchmarks.compare.bench_compare`.
"""
