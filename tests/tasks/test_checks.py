from apps.tasks.checks import rate_limits_without_redis_is_known, time_limits_under_consumer_timeout


def test_default_time_limits_pass():
    assert time_limits_under_consumer_timeout(None) == []


def test_a_hard_limit_over_the_consumer_timeout_is_an_error(settings):
    settings.CELERY_TASK_TIME_LIMIT = 4000
    errors = time_limits_under_consumer_timeout(None)
    assert [e.id for e in errors] == ["tasks.E001"]


def test_a_task_type_limit_over_the_consumer_timeout_is_an_error(settings):
    settings.TASKFLOW = {**settings.TASKFLOW, "RABBITMQ_CONSUMER_TIMEOUT_SECONDS": 600}
    settings.CELERY_TASK_SOFT_TIME_LIMIT = 100
    settings.CELERY_TASK_TIME_LIMIT = 200
    errors = time_limits_under_consumer_timeout(None)
    assert "long_computation" in " ".join(e.msg for e in errors)
    assert {e.id for e in errors} == {"tasks.E002"}


def test_an_unknown_rate_limits_without_redis_mode_is_an_error(settings):
    settings.TASKFLOW = {**settings.TASKFLOW, "RATE_LIMITS_WITHOUT_REDIS": "shut"}
    errors = rate_limits_without_redis_is_known(None)
    assert [e.id for e in errors] == ["tasks.E003"]
    assert "open or closed, not 'shut'" in errors[0].msg
    settings.TASKFLOW = {**settings.TASKFLOW, "RATE_LIMITS_WITHOUT_REDIS": "closed"}
    assert rate_limits_without_redis_is_known(None) == []
