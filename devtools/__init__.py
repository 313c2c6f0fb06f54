"""Tools for running omnirec on one machine, not part of training or serving: throw-away
redis-servers and a local Redis Cluster (``redis_server``, for tests, benches and the
stack), the stack ``make up`` leaves running (``stack``) and ``make demo`` (``demo``).
``python -m training up | down | demo`` are their commands."""
