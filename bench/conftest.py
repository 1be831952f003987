"""Benchmarks: ``python -m pytest bench`` (see README). Each suite times fastlm beside a baseline measured in
the same run, because absolute times drift on shared machines; ``bench/report.py`` turns the saved run into
a table of ratios."""
