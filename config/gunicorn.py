"""gunicorn settings for the web process: `gunicorn config.wsgi -c config/gunicorn.py`.

Threaded workers (gthread) because of the SSE streams (`/v1/agents/{id}/messages/stream`,
`/v1/runs/{id}/stream`, chat-completions with `stream=true`): a stream holds one thread for as long as the
model takes, not a whole process. The worker's main loop keeps beating the arbiter's heartbeat while its
threads serve requests, so a stream silent for minutes never trips `timeout` (a sync worker is killed
with WORKER TIMEOUT after `timeout` seconds of one request), and the other threads keep answering.

`workers x threads` is the number of requests served at once, open streams included: the next request
waits for a free thread. Each thread may keep one PostgreSQL connection open (`DATABASE_CONN_MAX_AGE`),
so size PostgreSQL's `max_connections` (or a pooler) for `workers x threads` per web host, plus the
Celery workers.
"""

import os

# Behind a reverse proxy, bind to 127.0.0.1 (or a unix socket) instead.
bind = [os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")]
worker_class = "gthread"
# Processes: about one per core (the GIL serialises Python work inside a process).
workers = int(os.environ.get("GUNICORN_WORKERS", "4"))
# Threads per process: bounds the open streams plus the requests served at the same moment.
threads = int(os.environ.get("GUNICORN_THREADS", "32"))
# Seconds a worker's main loop may stay silent before the arbiter kills it. With gthread this is not a
# limit on a request's duration (streams outlive it); it catches a worker that is truly stuck.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
# On SIGTERM or SIGHUP, seconds a worker has to finish its requests; an open stream is cut after it and
# the client resumes with `starting_after`.
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
# Seconds an idle kept-alive connection stays open; keep it above a load balancer's idle timeout to
# avoid racing its reuse of the connection.
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))
# One access-log line per request on stdout, with its duration (%(M)s, milliseconds) and X-Request-ID.
# Long filter queries (many comma-separated ids, metadata filters) fit in the request line: gunicorn's default
# of 4094 bytes answers them with an HTML 414 before Django runs. 8190 is gunicorn's largest allowed value.
limit_request_line = 8190
accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms "%(a)s" %({x-request-id}o)s'
errorlog = "-"
# gunicorn's control socket defaults to one path per user ($XDG_RUNTIME_DIR/gunicorn.ctl): a second
# instance on the same host would take it over. Nothing here uses gunicornc, so it stays off.
control_socket_disable = True


# Metrics of every worker in one scrape (config/metrics.py): with PROMETHEUS_MULTIPROC_DIR set, each worker writes
# its own files there. At start the files of processes that no longer exist are dropped; a worker that exits has
# its live gauges dropped (its counters stay in the sums until the next start).
def on_starting(server: object) -> None:
    from config.metrics import multiprocess_dir_prune

    multiprocess_dir_prune()


def child_exit(server: object, worker: object) -> None:
    from config.metrics import multiprocess_mark_dead

    multiprocess_mark_dead(worker.pid)
