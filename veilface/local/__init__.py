"""Local tooling: the whole stack as child processes (``stack``), the demo run on it, and the
private backing services (Redis, MariaDB databases) that tests and benchmarks start (``services``)."""
