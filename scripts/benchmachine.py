"""What every benchmark records about the machine it ran on (imported by the scripts in this folder)."""

from __future__ import annotations

import itertools
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """CPU, core count, torch threads, library versions and the accelerator in use."""
    import lightning as L

    return {
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }


class RunLog:
    """Each finished run appended as one JSON line to ``path`` as soon as it ends, so a benchmark that stops
    early (a crash, a killed job) keeps what it measured; :meth:`done` removes the file once the full
    result is written. A log left by an earlier run is kept aside (``.prev``; ``.prev2``, ``.prev3``... when an
    older one is there already), not overwritten."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = Path(path)
        if self.path.exists():
            # two stopped runs in a row: the second must not replace the first one's log
            for k in itertools.count(1):
                aside = self.path.with_name(self.path.name + (".prev" if k == 1 else f".prev{k}"))
                if not aside.exists():
                    break
            self.path.replace(aside)
        self.path.write_text(json.dumps({"header": header}) + "\n")

    def add(self, label: str, run: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"label": label, "run": run}, default=str) + "\n")

    def done(self) -> None:
        self.path.unlink(missing_ok=True)
