"""Check that PostgreSQL, RabbitMQ and Redis answer, and create the database if it is missing.

Run by `make run` and `make test` so that a new user hears what is missing in one line.
"""

import os
import socket
import sys
from urllib.parse import urlparse

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "taskflow.settings")

import django

django.setup()

import psycopg  # noqa: E402
from django.conf import settings  # noqa: E402

HINTS = {
    "PostgreSQL": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    "RabbitMQ": "rabbitmq-server -detached",
    "Redis": 'redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no',
}


def reachable(name: str, host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError as exc:
        print(f"{name} is not reachable at {host}:{port} ({exc}). Start it with: {HINTS[name]}")
        return False


def ensure_database() -> None:
    db = settings.DATABASES["default"]
    with psycopg.connect(
        host=db.get("HOST") or "127.0.0.1",
        port=int(db.get("PORT") or 5432),
        user=db.get("USER") or "postgres",
        password=db.get("PASSWORD") or None,
        dbname="postgres",
        autocommit=True,
    ) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [db["NAME"]]
        ).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{db["NAME"]}"')
            print(f"Created database {db['NAME']}.")


def main() -> int:
    db = settings.DATABASES["default"]
    broker = urlparse(settings.CELERY_BROKER_URL)
    redis = urlparse(settings.REDIS_URL)
    ok = all(
        [
            reachable("PostgreSQL", db.get("HOST") or "127.0.0.1", int(db.get("PORT") or 5432)),
            reachable("RabbitMQ", broker.hostname or "127.0.0.1", broker.port or 5672),
            reachable("Redis", redis.hostname or "127.0.0.1", redis.port or 6379),
        ]
    )
    if not ok:
        return 1
    ensure_database()
    return 0


if __name__ == "__main__":
    sys.exit(main())
