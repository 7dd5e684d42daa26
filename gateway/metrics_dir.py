"""The workers' shared metrics directory (prometheus-client's multiprocess mode), as the
supervisor of ``serve --workers N`` keeps it: made or emptied at start, a dead worker's live
gauges dropped, removed at exit. Standard library only (the supervisor stays lean:
gateway/supervisor.py)."""

from __future__ import annotations

import os

#: The variable prometheus-client reads: each worker writes its samples to files there.
PROMETHEUS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_metrics_dir(env: dict[str, str]) -> tuple[str, bool]:
    """The multiprocess metrics directory, emptied (values left by an earlier run would be summed),
    and whether we created it (and so remove it at exit)."""
    path = env.get(PROMETHEUS_DIR_ENV)
    if path:
        os.makedirs(path, exist_ok=True)
        for name in os.listdir(path):
            if name.endswith(".db"):
                os.unlink(os.path.join(path, name))
        return path, False
    base = next((env[v] for v in ("TMPDIR", "TEMP", "TMP") if env.get(v)), "/tmp")
    for _ in range(100):  # as tempfile.mkdtemp does, without importing it
        path = os.path.join(base, "opengateway-metrics-" + os.urandom(6).hex())
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        return path, True
    raise FileExistsError(f"no free name for the metrics directory in {base}")


def remove_metrics_dir(path: str) -> None:
    """The directory we created: only the workers' flat ``.db`` files are in it."""
    try:
        for name in os.listdir(path):
            os.unlink(os.path.join(path, name))
        os.rmdir(path)
    except OSError:
        pass


def mark_process_dead(pid: int, metrics_dir: str) -> None:
    """What ``prometheus_client.multiprocess.mark_process_dead`` does, without importing it: a dead
    worker's live gauges (the multiprocess modes named ``live...``: its in-flight requests) stop
    counting, so its ``gauge_live<mode>_<pid>.db`` files are removed. Its counters, histograms
    and other gauges stay: the totals keep what it counted. (tests/test_supervisor.py checks that
    both remove the same files.)"""
    suffix = f"_{pid}.db"
    try:
        names = os.listdir(metrics_dir)
    except OSError:
        return
    for name in names:
        if name.startswith("gauge_live") and name.endswith(suffix) and "_" not in name[6:-len(suffix)]:
            try:
                os.unlink(os.path.join(metrics_dir, name))
            except FileNotFoundError:
                pass
