"""Once a web worker or a pool process has loaded the application, its objects are frozen out of
the collector's full collections (taskflow/startup.py)."""

import json
import subprocess
import sys

from django.conf import settings

PROBE = """
import gc, json, runpy, django
django.setup()
hook = sys.argv[1]
before = gc.get_freeze_count()
if hook == "gunicorn":
    runpy.run_path("taskflow/gunicorn.conf.py")["post_worker_init"](None)
else:
    from celery.signals import worker_process_init
    from taskflow.celery import app  # noqa: F401  (connects the receiver)
    worker_process_init.send(sender=None)
print(json.dumps({"before": before, "frozen": gc.get_freeze_count(),
                  "tracked": len(gc.get_objects())}))
"""


def _probe(hook: str) -> dict[str, int]:
    result = subprocess.run(
        [sys.executable, "-c", "import sys\n" + PROBE, hook],
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_gunicorn_worker_freezes_what_it_loaded():
    counts = _probe("gunicorn")
    assert counts["before"] == 0
    # Django, DRF, Celery and the apps: tens of thousands of objects; few are left to walk.
    assert counts["frozen"] > 20_000
    assert counts["tracked"] < counts["frozen"] / 10


def test_a_celery_pool_process_freezes_what_it_loaded():
    counts = _probe("celery")
    assert counts["before"] == 0
    assert counts["frozen"] > 20_000
    assert counts["tracked"] < counts["frozen"] / 10


def test_gunicorn_worker_exit_in_the_arbiter_does_nothing():
    """gunicorn calls worker_exit in the arbiter too (for a worker it found gone), where neither
    the application nor Django was loaded: the hook must not import them (it would raise there)."""
    probe = (
        "import runpy, sys\n"
        "runpy.run_path('taskflow/gunicorn.conf.py')['worker_exit'](None, None)\n"
        "print('django' in sys.modules and 'apps.tasks.publisher' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PROMETHEUS_MULTIPROC_DIR": "", "HOME": "/tmp"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


# beat's own handler (celery.apps.beat: save the schedule, raise SystemExit), wrapped as the
# beat_init receiver wraps it; SIGTERM then falls while a finalizer runs, which swallows the
# SystemExit. The process must exit all the same.
FINALIZER_PROBE = """
import os, signal, sys, time
sys.path.insert(0, os.getcwd())
from taskflow.startup import exit_even_if_a_finalizer_swallows_it

def beats_handler(signum, frame):
    raise SystemExit()

signal.signal(signal.SIGTERM, beats_handler)
if sys.argv[1] == "wrapped":
    exit_even_if_a_finalizer_swallows_it()

class Collected:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs in here: its exit is dropped
        for _ in range(1000):
            pass

Collected()
print("still running", flush=True)
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    time.sleep(0.05)
print("ran to the end", flush=True)
"""


def _finalizer_probe(mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", FINALIZER_PROBE, mode],
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_a_term_a_finalizer_swallowed_still_ends_beat():
    # Without the wrapper the exit is lost (the probe shows the scenario is real) ...
    lost = _finalizer_probe("bare")
    assert "Exception ignored" in lost.stderr
    assert "ran to the end" in lost.stdout
    # ... with it, the process exits a moment later, with status 0.
    done = _finalizer_probe("wrapped")
    assert "Exception ignored" in done.stderr
    assert "still running" in done.stdout
    assert "ran to the end" not in done.stdout
    assert done.returncode == 0, done.stderr
