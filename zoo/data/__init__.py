"""Datamodules (one per domain) and dataset readers. Datamodules know nothing of models: they
publish facts about the data in ``data_info`` (vocab size, variables, charset...).

The exports load on first use (PEP 562): the datamodules import Lightning, which inference
(``zoo.load_pretrained``, reaching :mod:`zoo.data.tokenizers`) does without."""

import importlib

_EXPORTS = {
    "RetrievalDataModule": "zoo.data.retrieval", "make_mqar": "zoo.data.retrieval", "make_needles": "zoo.data.retrieval",
    "TextDataModule": "zoo.data.text",
    "STRDataModule": "zoo.data.str",
    "CSVTSDataModule": "zoo.data.ts", "SyntheticTSDataModule": "zoo.data.ts", "make_synthetic_frame": "zoo.data.ts",
    "ImageCaptionDataModule": "zoo.data.vlm", "SyntheticVLMDataModule": "zoo.data.vlm", "VLMTokenizer": "zoo.data.vlm",
    "BPETokenizer": "zoo.data.tokenizers", "ByteTokenizer": "zoo.data.tokenizers", "build_tokenizer": "zoo.data.tokenizers",
    "load_tokenizer": "zoo.data.tokenizers",
}

__all__ = [
    "BPETokenizer", "STRDataModule", "ByteTokenizer", "CSVTSDataModule", "SyntheticTSDataModule", "make_synthetic_frame", "RetrievalDataModule", "TextDataModule", "build_tokenizer",
    "load_tokenizer", "make_mqar", "make_needles",
    "ImageCaptionDataModule", "SyntheticVLMDataModule", "VLMTokenizer",
]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later lookups do not come back here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
