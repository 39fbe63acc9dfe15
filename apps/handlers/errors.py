"""Exceptions a handler raises to say how its attempt ended."""


class HandlerError(Exception):
    """Base of the errors a handler raises on purpose."""


class PermanentError(HandlerError):
    """Retrying cannot help (bad input, a refused recipient): the task fails at once."""


class RetryableError(HandlerError):
    """A transient failure: the attempt fails and the task is retried with backoff.

    `retry_after` (seconds) replaces the backoff for this retry, e.g. from a Retry-After header.
    """

    def __init__(self, message: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TaskCancelled(HandlerError):
    """Raised by a handler (or by `ctx.raise_if_cancelled()`) once it notices a cancel request."""
