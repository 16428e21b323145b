"""Peers for ``benchmarks/compare.py --peers``: other projects' servers speaking the benchmark protocol.

Nothing here is a dependency of trio_channels; ``compare.py --peers`` installs what it needs.
"""
