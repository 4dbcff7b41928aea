"""Adapting a pretrained vanilla LM from YAML (configs/lm/adapt_*.yaml): the base stays frozen,
the export holds the unchanged base plus adapter weights only, and they load back."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import zoo
from zoo.cli import main
from zoo.nn.adapters import ADAPTER_CONFIG_FILE, ADAPTER_FILE

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def base_export(tmp_path_factory):
    rng = random.Random(0)
    words = "the king queen speaks to a fool and his horse in thy house".split()
    corpus = tmp_path_factory.mktemp("c") / "c.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(words) for _ in range(10)) for _ in range(200)))
    root = tmp_path_factory.mktemp("base")
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        main(["fit", "--config", "configs/lm/shakespeare_char_vanilla.yaml", f"--data.init_args.train_path={corpus}",
              "--data.init_args.block_size=32", "--data.init_args.batch_size=4",
              "--model.init_args.model_args", "{dim: 32, n_layers: 2, n_heads: 4, max_seq_len: 64}",
              "--trainer.max_steps=2", "--trainer.limit_val_batches=1", "--trainer.val_check_interval=2",
              f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false"])
    finally:
        os.chdir(cwd)
    return root / "lightning_logs" / "version_0" / "export", corpus


@pytest.mark.parametrize("method", ["dex", "difflora", "opamp"])
def test_adapt_from_yaml_exports_adapter_only(method, base_export, tmp_path, monkeypatch):
    src, corpus = base_export
    monkeypatch.chdir(ROOT)
    main(["fit", "--config", f"configs/lm/adapt_{method}.yaml", f"--model.init_args.pretrained={src}",
          f"--data.init_args.train_path={corpus}", "--data.init_args.block_size=32", "--data.init_args.batch_size=4",
          "--trainer.max_steps=3", "--trainer.limit_val_batches=1", "--trainer.val_check_interval=3",
          "--model.init_args.warmup_steps=1", "--model.init_args.lr=0.05",
          f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false"])
    out = tmp_path / "lightning_logs" / "version_0" / "export"
    assert (out / ADAPTER_FILE).is_file() and (out / ADAPTER_CONFIG_FILE).is_file()
    base_w, out_w = load_file(str(src / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert base_w.keys() == out_w.keys()
    for k in base_w:  # the base did not train
        assert torch.equal(base_w[k], out_w[k]), k
    adapter_w = load_file(str(out / ADAPTER_FILE))
    assert adapter_w and all(".adapter." in k for k in adapter_w)
    base = zoo.load_pretrained(out, adapter=False)  # the adapter is a separate file
    adapted = zoo.load_pretrained(out)
    assert adapted.adapter_config["method"] == method
    ids = torch.randint(0, 259, (1, 16))
    with torch.no_grad():
        assert not torch.allclose(adapted(ids), base(ids))  # the adapter trained and changed the function
    if method == "dex":
        assert float(adapter_w["layers.0.attn.adapter.anneal"]) > 0  # annealed away from 0
    from zoo.tasks import LanguageModelTask

    # fine-tuning from the adapted export trains its base: said, not silent
    with pytest.warns(UserWarning, match="holds an adapter .* does not load it"):
        task = LanguageModelTask(pretrained=str(out))
    assert getattr(task.model, "adapter_config", None) is None
    with torch.no_grad():
        assert torch.equal(task.model(ids), base(ids))


def test_adapter_without_method_is_explained(base_export):
    from zoo.tasks import LanguageModelTask

    with pytest.raises(ValueError, match="adapter needs a method"):
        LanguageModelTask(pretrained=str(base_export[0]), adapter={"rank": 4})


def _fit_difflora(base, corpus, root, steps: int, *extra: str) -> None:
    """A tiny `configs/lm/adapt_difflora.yaml` fit of ``base`` on ``corpus`` under ``root`` (a checkpoint at the end)."""
    main(["fit", "--config", "configs/lm/adapt_difflora.yaml", f"--model.init_args.pretrained={base}",
          f"--data.init_args.train_path={corpus}", "--data.init_args.block_size=32", "--data.init_args.batch_size=4",
          f"--trainer.max_steps={steps}", "--trainer.limit_val_batches=1", f"--trainer.val_check_interval={steps}",
          f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false", *extra])


def test_adapted_checkpoint_exports_without_its_base_folder(base_export, tmp_path, monkeypatch):
    """The .ckpt holds the base, the adapter and the adapter's record of its base: exporting it after the
    base folder is gone gives the same files as the run's own export."""
    import json
    import shutil

    src, corpus = base_export
    base = shutil.copytree(src, tmp_path / "base")
    monkeypatch.chdir(ROOT)
    _fit_difflora(base, corpus, tmp_path, steps=2)
    run = tmp_path / "lightning_logs" / "version_0"
    ckpt = next((run / "checkpoints").glob("*.ckpt"))
    shutil.rmtree(base)
    main(["export", str(ckpt), str(tmp_path / "again")])
    for name in ("model.safetensors", ADAPTER_FILE):
        a, b = load_file(str(run / "export" / name)), load_file(str(tmp_path / "again" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert json.loads((tmp_path / "again" / ADAPTER_CONFIG_FILE).read_text()) == \
        json.loads((run / "export" / ADAPTER_CONFIG_FILE).read_text())  # the base fingerprint included
    arch = json.loads((run / "export" / "config.json").read_text())["arch"]
    assert arch == json.loads((src / "config.json").read_text())["arch"] == "lm-vanilla-small"  # the base's name
    assert json.loads((tmp_path / "again" / "config.json").read_text())["arch"] == arch  # not the task's default


def test_fit_ckpt_path_last_of_an_adapted_run_resumes_without_its_base_folder(base_export, tmp_path, monkeypatch):
    """The checkpoint holds the base and the adapter: `fit --ckpt_path last` resumes after the base folder is gone, as
    `--ckpt_path <file>` does. The model only builds from its export (a difflora adapter refuses the config's diff
    attention), and the alias was resolved after a model build that read the folder: 'neither an exported model
    folder...'. (The data's tokenizer, which the config takes from that folder, is given: the base's is `byte`.)"""
    import shutil

    import lightning as L

    src, corpus = base_export
    base = shutil.copytree(src, tmp_path / "base")
    monkeypatch.chdir(ROOT)
    _fit_difflora(base, corpus, tmp_path, steps=2)
    ckpt = next((tmp_path / "lightning_logs" / "version_0" / "checkpoints").glob("*.ckpt"))
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    shutil.rmtree(base)
    seen = []
    monkeypatch.setattr(L.Callback, "on_train_start", lambda self, trainer, module: seen.append(
        (trainer.global_step, {k: v.detach().clone() for k, v in module.state_dict().items()})), raising=False)
    _fit_difflora(base, corpus, tmp_path, 3, "--data.init_args.tokenizer=byte", "--ckpt_path=last")
    assert seen and seen[0][0] == 2
    weights = seen[0][1]
    assert weights.keys() == saved.keys() and any(".adapter." in k for k in saved)
    assert all(torch.equal(weights[k], saved[k]) for k in saved)
    assert (tmp_path / "lightning_logs" / "version_1" / "checkpoints" / "epoch=0-step=3.ckpt").is_file()


def test_a_converted_tokenizer_with_tokens_past_the_embedding_is_named(tmp_path):
    """A Hugging Face tokenizer given a pad token the model's embedding was never resized for (322 tokens, 321 rows)
    stopped adapt / finetune configs with 'set data.tokenizer to the checkpoint folder' while data.tokenizer was that
    folder. The error names the added ids and the fix, as transformers' resize_token_embeddings does it."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    from zoo.data.tokenizers import HFTokenizer
    from zoo.hub import export_model
    from zoo.models.lm import DiffTransformerLM, LMConfig
    from zoo.tasks import LanguageModelTask

    backend = Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 321)}},
                                         unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens([AddedToken("<pad>", special=True)])  # id 321: no embedding row
    lm = DiffTransformerLM(LMConfig(vocab_size=321, dim=32, n_layers=1, n_heads=2, max_seq_len=32, attn_type="vanilla"))
    lm.tokenizer = HFTokenizer(backend, bos_id=1, eos_id=2, pad_id=321)
    export = export_model(lm, tmp_path / "export")
    with pytest.raises(ValueError, match=r"own tokenizer has 322 tokens but its embedding only 321 rows: ids 321\.\.321 "
                                         r".*resize_token_embeddings") as err:
        LanguageModelTask(pretrained=str(export), data_info={"kind": "text", "vocab_size": 322},
                          adapter={"method": "dex"})
    assert "set data.tokenizer" not in str(err.value)


def test_an_adapted_export_of_a_converted_model_keeps_where_it_came_from(tmp_path, monkeypatch):
    """``python -m zoo convert`` records the Hugging Face folder in the export (``extra.converted_from``), which the
    tokenizer error of a folder converted without tokenizer.json names. An adapted export holds that same base
    unchanged but dropped the record (the run's own export and ``python -m zoo export CKPT``): its tokenizer error
    then blamed 'a model trained on token ids (synthetic recall)'."""
    import json

    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    from zoo.convert import convert_hf
    from zoo.data.tokenizers import load_tokenizer
    from zoo.tasks import LanguageModelTask

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                   num_attention_heads=2, max_position_embeddings=64)
    hf = tmp_path / "hf"
    transformers.LlamaForCausalLM(cfg).save_pretrained(hf)
    with pytest.warns(UserWarning, match="no tokenizer.json"):
        convert_hf(hf, tmp_path / "bare")
    LanguageModelTask(pretrained=str(tmp_path / "bare"), adapter={"method": "dex"}).export(tmp_path / "bare_dex")
    with pytest.raises(FileNotFoundError, match=f"converted from {hf}.*no tokenizer.json"):
        load_tokenizer(tmp_path / "bare_dex")

    tok = Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 40)}},
                                     unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(hf / "tokenizer.json"))
    (hf / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    convert_hf(hf, tmp_path / "base")
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(" ".join(f"w{(7 * i + j) % 37 + 3}" for j in range(40)) for i in range(40)))
    monkeypatch.chdir(ROOT)
    _fit_difflora(tmp_path / 'base', corpus, tmp_path, steps=1)
    run = tmp_path / "lightning_logs" / "version_0"
    main(["export", str(next((run / "checkpoints").glob("*.ckpt"))), str(tmp_path / "again")])
    for out in (run / "export", tmp_path / "again"):
        extra = json.loads((out / "config.json").read_text())["extra"]
        assert extra == {"converted_from": str(hf), "adapter": "difflora"}, out


@pytest.mark.parametrize("method", ["dex", "difflora"])
def test_the_summary_names_the_adapter_and_what_it_trains(method, base_export):
    """An adapted run's summary said only the whole model's size (the frozen base included): it names the adapter,
    its layers and the trainable parameter count (the parameters that require grad, counted here)."""
    from zoo.tasks import LanguageModelTask

    task = LanguageModelTask(pretrained=str(base_export[0]), adapter={"method": method})
    trainable = sum(p.numel() for p in task.model.parameters() if p.requires_grad)
    assert 0 < trainable < task.model.num_params()
    line = task.summary_lines()[0]
    assert line.endswith(f"; {method} adapter on 2 layers, {trainable / 1e6:.4f}M trainable"), line
