"""The API's routes, one module per resource; each lists its ``OPERATIONS``, from which the
router and the OpenAPI document are both built (``jobsched.api.app``)."""

from jobsched.api.openapi import Operation
from jobsched.api.routes import (
    executions,
    explain,
    jobs,
    schedules,
    secrets,
    system,
    webhooks,
    workflows,
)

OPERATIONS: tuple[Operation, ...] = (
    *jobs.OPERATIONS, *explain.OPERATIONS, *executions.OPERATIONS, *schedules.OPERATIONS,
    *secrets.OPERATIONS, *workflows.OPERATIONS, *system.OPERATIONS, *webhooks.OPERATIONS,
)

__all__ = ["OPERATIONS"]
