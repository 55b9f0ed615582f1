"""jobsched: a distributed job scheduler on PostgreSQL, RabbitMQ and ZooKeeper."""

from jobsched.tasks import TaskContext, task

__version__ = "0.1.0"
__all__ = ["TaskContext", "__version__", "task"]
