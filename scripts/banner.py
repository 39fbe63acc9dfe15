"""What `make run` prints before it starts the processes: where to look."""

import os

port = os.environ.get("PORT", "8000")
base = f"http://127.0.0.1:{port}"
print(
    f"""
TaskFlow is starting (Ctrl-C stops every process).
  API            {base}/api/
  API docs       {base}/api/docs/      (OpenAPI schema: {base}/api/schema/)
  Admin          {base}/admin/
  Dashboard      {base}/admin/dashboard/   (staff; metrics: {base}/metrics)
  Health         {base}/health   readiness: {base}/ready
Admin login: in another terminal run `make superuser` (or
  .venv/bin/python manage.py createsuperuser --email you@example.com).
Processes: web (gunicorn), worker (default, cpu, maintenance queues), worker-io (io queue,
  autoscaled between IO_WORKER_MIN and IO_WORKER_MAX processes), beat (releases postponed tasks
  and retry waits), deadletters (dead-letter consumer).
"""
)
