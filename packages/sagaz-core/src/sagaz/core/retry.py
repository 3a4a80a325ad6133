"""Retry policies for steps and compensations."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often, how soon and on which exceptions a step is tried again.

    ``max_attempts`` counts the first try (1 means no retry). The delay before attempt
    ``n + 1`` is ``min(backoff_max, backoff_base * multiplier ** (n - 1))``, scaled by a
    random factor in ``[1 - jitter, 1]`` when ``jitter`` is above zero. Only exceptions
    that are instances of ``retry_on`` are retried.
    """

    max_attempts: int = 1
    backoff_base: float = 0.1
    backoff_max: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.5
    retry_on: tuple[type[BaseException], ...] = field(default=(Exception,))

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"RetryPolicy.max_attempts must be >= 1, got {self.max_attempts}")
        if self.backoff_base < 0 or self.backoff_max < 0:
            raise ValueError("RetryPolicy backoff_base and backoff_max must be >= 0")
        if self.multiplier < 1:
            raise ValueError(f"RetryPolicy.multiplier must be >= 1, got {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"RetryPolicy.jitter must be within [0, 1], got {self.jitter}")

    def should_retry(self, attempt: int, error: BaseException) -> bool:
        """Whether a failure on ``attempt`` (1-based) gets another attempt."""
        return attempt < self.max_attempts and isinstance(error, self.retry_on)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed ``attempt`` (1-based) before the next one."""
        base = min(self.backoff_max, self.backoff_base * self.multiplier ** (attempt - 1))
        if self.jitter:
            base *= 1 - self.jitter * random.random()  # noqa: S311 - jitter, not crypto  # nosec B311
        return base


NO_RETRY = RetryPolicy()
