"""One LightningModule per domain."""

from zoo.tasks.base import ZooTask
from zoo.tasks.lm import LanguageModelTask

__all__ = ["LanguageModelTask", "ZooTask"]
