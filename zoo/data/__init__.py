"""Datamodules (one per domain) and dataset readers. Datamodules know nothing of models: they
publish facts about the data in ``data_info`` (vocab size, variables, charset...)."""

from zoo.data.retrieval import RetrievalDataModule, make_mqar, make_needles
from zoo.data.text import TextDataModule
from zoo.data.str import STRDataModule
from zoo.data.ts import CSVTSDataModule, SyntheticTSDataModule, make_synthetic_frame
from zoo.data.vlm import ImageCaptionDataModule, SyntheticVLMDataModule, VLMTokenizer
from zoo.data.tokenizers import BPETokenizer, ByteTokenizer, build_tokenizer, load_tokenizer

__all__ = [
    "BPETokenizer", "STRDataModule", "ByteTokenizer", "CSVTSDataModule", "SyntheticTSDataModule", "make_synthetic_frame", "RetrievalDataModule", "TextDataModule", "build_tokenizer",
    "load_tokenizer", "make_mqar", "make_needles",
    "ImageCaptionDataModule", "SyntheticVLMDataModule", "VLMTokenizer",
]
