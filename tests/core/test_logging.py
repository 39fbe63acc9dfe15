"""Log records that libraries write, as our logging configuration shapes them."""

import logging

from django_redis.cache import RedisCache


def test_an_ignored_redis_error_is_one_warning_line_without_a_traceback(caplog):
    # The real client against a port nobody listens on: the cache fails open, as in production.
    cache = RedisCache(
        "redis://127.0.0.1:1/0",
        {"OPTIONS": {"IGNORE_EXCEPTIONS": True, "SOCKET_CONNECT_TIMEOUT": 0.5}},
    )
    with caplog.at_level(logging.INFO, logger="django_redis.cache"):
        assert cache.get("anything", default="fallback") == "fallback"

    records = [r for r in caplog.records if r.name == "django_redis.cache"]
    assert len(records) == 1
    (record,) = records
    assert record.levelname == "WARNING"
    assert record.exc_info is None and not record.exc_text
    assert record.getMessage().startswith("Redis unavailable, going on without the cache: ")
    assert "ConnectionError" in record.getMessage()
