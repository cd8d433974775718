"""The benchmark suite behind ``make bench`` (``python -m bench.run``): see ``bench/README.md``."""
