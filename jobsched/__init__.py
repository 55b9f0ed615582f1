"""jobsched: a distributed job scheduler on PostgreSQL, RabbitMQ and ZooKeeper."""

from jobsched.client import ApiError, Client, ConnectionFailed, SyncClient, Workflow
from jobsched.tasks import TaskContext, task

__version__ = "0.1.0"
__all__ = [
    "ApiError",
    "Client",
    "ConnectionFailed",
    "SyncClient",
    "TaskContext",
    "Workflow",
    "__version__",
    "task",
]
