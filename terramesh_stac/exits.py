"""Exit statuses of the `terramesh-stac` commands."""

EXIT_OK = 0
EXIT_FAILED = 1  # nothing done: bad input, a missing source, an unreachable database
EXIT_PARTIAL = 3  # done, but some samples or shards had problems (listed in the report)
