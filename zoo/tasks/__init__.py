"""One LightningModule per domain."""

from zoo.tasks.base import ZooTask
from zoo.tasks.lm import LanguageModelTask
from zoo.tasks.ts import ForecastTask

__all__ = ["ForecastTask", "LanguageModelTask", "ZooTask"]
