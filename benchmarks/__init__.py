"""phonehome's benchmarks: each `bench_*.py` module has `run(quick: bool) -> None`.

Run them with `python -m benchmarks [--quick] [NAME...]`. Every figure is a ratio against a
baseline measured in the same run, never an absolute target for the machine.
"""
