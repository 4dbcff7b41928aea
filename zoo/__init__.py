"""zoo: a Lightning model zoo built around differential attention."""

__version__ = "0.1.0"

from zoo.hub import create_model, export_model, list_models, load_pretrained  # noqa: E402

__all__ = ["__version__", "create_model", "export_model", "list_models", "load_pretrained"]
