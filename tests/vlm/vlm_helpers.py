"""Tiny vision-language models and scene batches shared by the VLM tests (imported by them)."""

import torch

from zoo.data import scenes as sc
from zoo.data.vlm import SyntheticVLMDataModule, VLMTokenizer, read_function_words, to_tensor
from zoo.models.vlm import VisionLanguageModel, VLMConfig

TINY = dict(image_size=32, patch_size=8, vit_dim=32, vit_depth=1, vit_heads=2, text_dim=32, text_layers=1,
            text_heads=2, text_mlp=48, fusion_layers=2, fusion_heads=4, fusion_mlp=48, embed_dim=16, max_text_len=24)


def scene_tokenizer() -> VLMTokenizer:
    words = sc.vocabulary() + sorted(set(read_function_words("en")) - set(sc.vocabulary()))
    return VLMTokenizer.word_level(words)


def tiny_model(seed: int = 0, **over) -> VisionLanguageModel:
    torch.manual_seed(seed)
    tok = scene_tokenizer()
    m = VisionLanguageModel(VLMConfig(**{**TINY, "vocab_size": tok.vocab_size, **over}))
    m.set_tokenizer(tok)
    with torch.no_grad():  # LayerNorms start at identity; perturb them so their use is checked
        for mod in m.modules():
            if isinstance(mod, torch.nn.LayerNorm) and mod.weight is not None:
                mod.weight.normal_(1.0, 0.2)
                mod.bias.normal_(0.0, 0.2)
    return m.eval()


def scene_batch(n: int = 6, size: int = 32, seed: int = 5):
    scenes = sc.make_scenes(seed, 0, n, unique=True)
    images = torch.stack([to_tensor(sc.render(s, size)) for s in scenes])
    return images, [s.caption() for s in scenes]


__all__ = ["SyntheticVLMDataModule", "TINY", "scene_batch", "scene_tokenizer", "tiny_model"]
