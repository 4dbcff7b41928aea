"""Importers from other formats: Hugging Face Llama decoders and BERT encoders (see ``zoo.convert.hf``)."""

from zoo.convert.hf import (
    bert_weight_map,
    from_hf_bert,
    from_hf_llama,
    llama_weight_map,
    read_hf_config,
    read_hf_weights,
    to_hf_bert,
    to_hf_llama,
)

__all__ = [
    "bert_weight_map", "from_hf_bert", "from_hf_llama", "llama_weight_map", "read_hf_config",
    "read_hf_weights", "to_hf_bert", "to_hf_llama",
]
