"""Importers from other formats: Hugging Face Llama / Mistral / Qwen2 decoders and BERT / RoBERTa
encoders (see ``zoo.convert.hf``)."""

from zoo.convert.hf import (
    bert_weight_map,
    convert_hf,
    from_hf,
    from_hf_bert,
    from_hf_llama,
    llama_weight_map,
    read_hf_config,
    read_hf_weights,
    to_hf_bert,
    to_hf_llama,
)

__all__ = [
    "bert_weight_map", "convert_hf", "from_hf", "from_hf_bert", "from_hf_llama", "llama_weight_map", "read_hf_config",
    "read_hf_weights", "to_hf_bert", "to_hf_llama",
]
