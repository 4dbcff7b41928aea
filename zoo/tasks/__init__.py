"""One LightningModule per domain."""

from zoo.tasks.base import ZooTask
from zoo.tasks.lm import LanguageModelTask
from zoo.tasks.ts import ForecastTask
from zoo.tasks.str import RecognitionTask
from zoo.tasks.vlm import VLMTask

__all__ = ["ForecastTask", "LanguageModelTask", "RecognitionTask", "VLMTask", "ZooTask"]
