"""Exit statuses of the `terramesh-stac` commands."""

EXIT_OK = 0
EXIT_FAILED = 1  # stopped: e.g. an unreachable database, a busy port, a failed write
EXIT_USAGE = 2  # refused before any work: an unknown option value, a malformed path or URL
EXIT_PARTIAL = 3  # done, but some samples or shards had problems (listed in the report)
