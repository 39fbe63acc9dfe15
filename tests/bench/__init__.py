"""`make bench`: TaskFlow's benchmark, beside bare Celery on the same broker (docs/benchmarks.md).

Not a test suite: no module here is named test_*, so pytest never collects it.
"""
