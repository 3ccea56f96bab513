"""Benchmarks and data scripts beside the daemon, run from the repository root as modules:
``python -m tools.bench_detection``. Not part of the installed daemon."""
