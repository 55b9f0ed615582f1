"""The API's routes, one module per resource; each lists its ``OPERATIONS``, from which the
router and the OpenAPI document are both built (``jobsched.api.app``)."""

from jobsched.api.openapi import Operation
from jobsched.api.routes import executions, jobs, schedules, secrets, system, webhooks

OPERATIONS: tuple[Operation, ...] = (
    *jobs.OPERATIONS, *executions.OPERATIONS, *schedules.OPERATIONS, *secrets.OPERATIONS,
    *system.OPERATIONS, *webhooks.OPERATIONS,
)

__all__ = ["OPERATIONS"]
