"""The shipped checkpoint loads by name (offline) and retrieves far above chance on held-out scenes."""

import torch

import zoo
from zoo.data.vlm import SyntheticVLMDataModule
from zoo.hub import PRETRAINED_DIR
from zoo.tasks.vlm import evaluate_retrieval


def test_shipped_vlm_fda_tiny():
    folder = PRETRAINED_DIR / "vlm-fda-tiny"
    assert folder.is_dir(), "zoo/pretrained/vlm-fda-tiny is missing: run scripts/bench_fda.py --export"
    size_mb = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
    assert size_mb < 8, f"shipped checkpoint is {size_mb:.1f} MB"
    assert "vlm-fda-tiny" in zoo.list_models(pretrained=True)
    m = zoo.load_pretrained("vlm-fda-tiny")
    assert m.config.fda and m.tokenizer is not None
    ds = SyntheticVLMDataModule(n_train=1, n_val=64, n_test=64).splits()["test"]
    items = [ds[i] for i in range(64)]
    res = evaluate_retrieval(m, torch.stack([it["image"] for it in items]), [it["captions"] for it in items], k=8)
    # chance R@1 with 64 candidates is 1.6 %
    assert res["itm/i2t_r1"] > 30 and res["itm/t2i_r1"] > 30, res
