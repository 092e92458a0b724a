"""phaseledger's benchmarks: what durability costs, against physical floors and against peers.

Run ``python -m benchmarks`` (or ``make bench``). Every figure is printed as a ratio to a
floor measured in the same process, back to back, with the median, minimum and maximum
over repeated runs, and written as JSON under ``benchmarks/results/``.
"""
