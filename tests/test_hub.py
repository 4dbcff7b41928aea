"""Export / load_pretrained / create_model(pretrained=...) and their errors."""

import copy
import dataclasses
import json

import pytest
import torch

import zoo
from zoo.hub import export_model, load_pretrained


def _model(**kw):
    torch.manual_seed(0)
    return zoo.create_model("lm-diff-tiny", dim=32, n_layers=2, n_heads=2, vocab_size=40, **kw)


def test_export_load_roundtrip(tmp_path):
    m = _model()
    export_model(m, tmp_path / "exp", arch="lm-diff-tiny")
    files = sorted(p.name for p in (tmp_path / "exp").iterdir())
    assert files == ["config.json", "model.safetensors"]
    loaded = load_pretrained(tmp_path / "exp")
    assert not loaded.training
    x = torch.randint(0, 40, (2, 9))
    assert torch.equal(m.eval()(x), loaded(x))
    assert loaded.lm_head.weight is loaded.embed.weight  # tying survives
    again = zoo.create_model("lm-diff-tiny", pretrained=tmp_path / "exp", dim=32, n_layers=2, n_heads=2, vocab_size=40)
    assert torch.equal(again.eval()(x), loaded(x))


def test_an_export_of_bfloat16_weights_loads_as_float32(tmp_path):
    """A bf16-true run exports bf16 tensors; load_pretrained / create_model build the model in float32 and read them
    into it (timm's and transformers 4's default; transformers 5 loads the saved dtype unless dtype= is given):
    exactly the saved values, the precision the run trained in."""
    from safetensors.torch import load_file

    m = _model().to(torch.bfloat16)
    export_model(m, tmp_path / "exp", arch="lm-diff-tiny")
    assert {t.dtype for t in load_file(str(tmp_path / "exp" / "model.safetensors")).values()} == {torch.bfloat16}
    for loaded in (load_pretrained(tmp_path / "exp"), zoo.create_model(
            "lm-diff-tiny", pretrained=tmp_path / "exp", dim=32, n_layers=2, n_heads=2, vocab_size=40)):
        assert {t.dtype for t in loaded.state_dict().values() if t.is_floating_point()} == {torch.float32}
        assert torch.equal(loaded.embed.weight, m.embed.weight.float())


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_exported_weights_get_the_mode_every_other_written_file_gets(tmp_path, umask):
    # safetensors writes its file 0o600: a shared export's config.json was readable by all, its weights by nobody else
    import os
    import stat

    from zoo.nn.adapters import apply_adapter, save_adapter

    old = os.umask(umask)
    try:
        (tmp_path / "plain.txt").write_text("x")  # what any file the process writes gets
        export_model(_model(), tmp_path / "exp", arch="lm-diff-tiny")
        adapted = zoo.create_model("lm-vanilla-tiny", dim=32, n_layers=2, n_heads=2, vocab_size=40)
        apply_adapter(adapted, "difflora", rank=2)
        save_adapter(adapted, tmp_path / "ad")
    finally:
        os.umask(old)
    want = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert want == 0o666 & ~umask
    for f in [*(tmp_path / "exp").iterdir(), *(tmp_path / "ad").iterdir()]:
        assert stat.S_IMODE(f.stat().st_mode) == want, f.name


def test_export_refuses_to_overwrite(tmp_path):
    m = _model()
    export_model(m, tmp_path / "exp")
    before = (tmp_path / "exp" / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="not empty"):
        export_model(_model(dropout=0.1), tmp_path / "exp")
    assert (tmp_path / "exp" / "model.safetensors").read_bytes() == before


def test_overwrite_refuses_a_hugging_face_model_folder(tmp_path):
    """overwrite=True replaces an earlier zoo export; onto a Hugging Face model folder (`python -m zoo export CKPT
    hf_folder --overwrite`) it replaced the model's config.json and weights, leaving a folder transformers cannot
    load. Such a folder is refused and stays byte for byte as it was."""
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    (hf / "model.safetensors").write_bytes(b"weights")
    before = {p.name: p.read_bytes() for p in hf.iterdir()}
    with pytest.raises(FileExistsError, match=r"holds a Hugging Face model \(config.json model_type='llama'\)"):
        export_model(_model(), hf, overwrite=True)
    assert {p.name: p.read_bytes() for p in hf.iterdir()} == before


def test_architecture_mismatch_names_fields(tmp_path):
    export_model(_model(), tmp_path / "exp")
    with pytest.raises(ValueError, match=r"dim: checkpoint=32 config=64"):
        zoo.create_model("lm-diff-tiny", pretrained=tmp_path / "exp", dim=64, n_layers=2, n_heads=2, vocab_size=40)
    with pytest.raises(ValueError, match=r"attn_type: checkpoint='diff' config='vanilla'"):
        zoo.create_model(
            "lm-diff-tiny", pretrained=tmp_path / "exp", dim=32, n_layers=2, n_heads=2, vocab_size=40,
            attn_type="vanilla",
        )


def test_a_field_missing_from_an_older_export_counts_as_its_default(tmp_path):
    # An export written before a config field existed lacks it; load_pretrained builds the class
    # default there, so create_model must compare against that default, not accept any value.
    from zoo.models.lm import LMConfig

    export_model(_model(), tmp_path / "exp")
    cfg_path = tmp_path / "exp" / "config.json"
    meta = json.loads(cfg_path.read_text())
    default = LMConfig.__dataclass_fields__["norm_eps"].default
    del meta["config"]["norm_eps"]
    cfg_path.write_text(json.dumps(meta))
    assert load_pretrained(tmp_path / "exp").config.norm_eps == default
    args = dict(dim=32, n_layers=2, n_heads=2, vocab_size=40)
    zoo.create_model("lm-diff-tiny", pretrained=tmp_path / "exp", **args)  # the default: accepted
    with pytest.raises(ValueError, match=rf"norm_eps: checkpoint={default!r} config=0.5"):
        zoo.create_model("lm-diff-tiny", pretrained=tmp_path / "exp", norm_eps=0.5, **args)


def test_corrupt_and_missing_files(tmp_path):
    export_model(_model(), tmp_path / "exp")
    w = tmp_path / "exp" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_pretrained(tmp_path / "exp")
    w.unlink()
    with pytest.raises(FileNotFoundError, match="has no weights"):
        load_pretrained(tmp_path / "exp")
    with pytest.raises(FileNotFoundError, match="neither an exported model folder"):
        load_pretrained(tmp_path / "nowhere")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="not a zoo export"):
        load_pretrained(tmp_path / "hf")


def test_missing_and_misshaped_tensors_are_named(tmp_path):
    from safetensors.torch import load_file, save_file

    export_model(_model(), tmp_path / "exp")
    path = tmp_path / "exp" / "model.safetensors"
    state = load_file(str(path))
    del state["layers.1.attn.lambda_q1"]
    state["layers.0.attn.q_proj.weight"] = torch.zeros(3, 3)
    save_file(state, str(path))
    with pytest.raises(ValueError, match=r"missing tensors \['layers.1.attn.lambda_q1'\].*layers.0.attn.q_proj.weight"):
        load_pretrained(tmp_path / "exp")


def test_a_config_json_of_another_model_is_named_with_the_fix(tmp_path):
    """config.json copied from another export (weights of one model, config of another): the error names
    config.json as well as the weights file, and says what to do; a config.json whose "config" is not an
    object is named as not a zoo export (it failed as "TypeError: 'NoneType' object is not a mapping")."""
    export_model(_model(), tmp_path / "lm")
    export_model(zoo.create_model("ts-itransformer-diff-tiny", lookback=16, horizon=8), tmp_path / "ts")
    (tmp_path / "lm" / "config.json").write_text((tmp_path / "ts" / "config.json").read_text())
    cfg = str(tmp_path / "lm" / "config.json")
    with pytest.raises(ValueError, match=rf"do not fit ITransformer: missing tensors .*built from {cfg}.*re-export"):
        load_pretrained(tmp_path / "lm")
    meta = json.loads((tmp_path / "ts" / "config.json").read_text())
    meta["config"] = None
    (tmp_path / "ts" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"config.json is not a zoo export .*config object"):
        load_pretrained(tmp_path / "ts")
    # a model_class that names a zoo object which is no model class (it failed as an AttributeError)
    for name in ("zoo.hub.Path", "zoo.hub.load_pretrained"):
        meta["config"], meta["model_class"] = {}, name
        (tmp_path / "ts" / "config.json").write_text(json.dumps(meta))
        with pytest.raises(ValueError, match=rf"'{name}' named as model_class in config.json is not a zoo model class"):
            load_pretrained(tmp_path / "ts")


def test_load_pretrained_only_overrides_runtime_fields(tmp_path):
    export_model(_model(), tmp_path / "exp")
    m = load_pretrained(tmp_path / "exp", dropout=0.2, attn_backend="naive")
    assert m.config.dropout == 0.2
    with pytest.raises(ValueError, match="runtime fields"):
        load_pretrained(tmp_path / "exp", dim=64)


def test_an_encoders_max_seq_len_sizes_its_position_table_and_is_matched_by_name(tmp_path):
    """TextEncoder learns one position embedding per position (BERT): its max_seq_len is the shape of a weight, not
    a runtime setting. A checkpoint of another length is a named architecture mismatch (as any other field), not
    a 'config.json and model.safetensors come from different models' error."""
    torch.manual_seed(0)
    m = zoo.create_model("encoder-tiny", max_seq_len=64).eval()
    assert tuple(m.pos_embed.weight.shape) == (64, 64)  # BERT's table: max_position_embeddings x hidden
    m.save_pretrained(tmp_path / "enc")
    with pytest.raises(ValueError, match=r"max_seq_len: checkpoint=64 config=128") as exc:
        zoo.create_model("encoder-tiny", pretrained=tmp_path / "enc")  # the registered length: 128
    assert "different models" not in str(exc.value)
    with pytest.raises(ValueError, match=r"runtime fields.*\['max_seq_len'\]"):
        load_pretrained(tmp_path / "enc", max_seq_len=100)
    again = zoo.create_model("encoder-tiny", pretrained=tmp_path / "enc", max_seq_len=64)
    ids = torch.randint(0, 1000, (2, 10))
    assert torch.equal(again.eval()(ids), m(ids))


def test_list_models_filters():
    names = zoo.list_models("lm-*")
    assert "lm-diff-tiny" in names and "lm-vanilla-1.4b" in names
    assert zoo.list_models("lm-vanilla-*") == sorted(n for n in names if n.startswith("lm-vanilla-"))
    # timm's conventions: a list of patterns (any matches) and patterns to leave out
    every = zoo.list_models()
    both = zoo.list_models(["ts-patchtst-*", "str-*"])
    assert both == sorted(n for n in every if n.startswith(("ts-patchtst-", "str-"))) and both
    no_vanilla = zoo.list_models("ts-*", exclude=["*vanilla*", "*-large"])
    assert no_vanilla == sorted(n for n in every if n.startswith("ts-") and "vanilla" not in n
                                and not n.endswith("-large")) and no_vanilla
    with pytest.raises(TypeError, match="glob strings"):
        zoo.list_models(["lm-*", 3])


def test_list_models_with_an_empty_filter_lists_every_model():
    """timm.list_models('') and timm.list_models([]) list every model (no filter: timm's default is ''); zoo's
    returned [] for both, silently, as if nothing were registered."""
    import timm

    every = zoo.list_models()
    assert len(every) > 30 and len(timm.list_models("")) == len(timm.list_models()) == len(timm.list_models([]))
    assert zoo.list_models("") == every and zoo.list_models([]) == every
    assert zoo.list_models("", family="ts") == zoo.list_models("*", family="ts") == zoo.list_models("ts-*")
    assert zoo.list_models("", exclude="lm-*") == [n for n in every if not n.startswith("lm-")]


def test_every_shipped_model_builds_by_name_with_its_weights():
    # create_model(name, pretrained=name) must give the same model as load_pretrained(name); fields the
    # training data fixed (charset / max length, tokenizer vocabulary) come from the checkpoint
    shipped = zoo.list_models(pretrained=True)
    assert {"str-diff-tiny", "vlm-fda-tiny"} <= set(shipped)
    for name in shipped:
        built = zoo.create_model(name, pretrained=name)
        ref = load_pretrained(name)
        runtime = built.runtime_fields
        arch = lambda m: {k: v for k, v in dataclasses.asdict(m.config).items() if k not in runtime}  # noqa: E731
        assert arch(built) == arch(ref), name
        ref_state = ref.state_dict()
        assert all(torch.equal(t, ref_state[k]) for k, t in built.state_dict().items()), name


def test_every_shipped_export_states_every_config_field():
    """A field missing from an export's config.json takes the config class's default when loaded (older exports);
    the shipped weights must not depend on that: a changed default (lambda_init, diff_subln) would change what the
    shipped models compute without a word. Each shipped config.json names every field of its config class."""
    from zoo.hub import PRETRAINED_DIR, _import_class

    folders = sorted(p for p in PRETRAINED_DIR.iterdir() if (p / "config.json").is_file())
    assert len(folders) == len(zoo.list_models(pretrained=True))
    for folder in folders:
        meta = json.loads((folder / "config.json").read_text())
        fields = {f.name for f in dataclasses.fields(_import_class(meta["model_class"]).config_class)}
        assert fields - set(meta["config"]) == set(), folder.name


def test_data_fields_passed_explicitly_still_must_match():
    with pytest.raises(ValueError, match=r"max_length: checkpoint=6 config=25.*drop the overrides \['max_length'\]"):
        zoo.create_model("str-diff-tiny", pretrained="str-diff-tiny", max_length=25)


def test_an_lm_takes_its_vocabulary_size_from_the_checkpoint(tmp_path):
    """README: the tokenizer's vocabulary size comes from the checkpoint (a BPE-trained model on a
    registered shape loads by its registered name)."""
    torch.manual_seed(0)
    m = zoo.create_model("lm-diff-tiny", vocab_size=300)
    export_model(m, tmp_path / "exp", arch="lm-diff-tiny")
    again = zoo.create_model("lm-diff-tiny", pretrained=tmp_path / "exp")
    assert again.config.vocab_size == 300
    x = torch.randint(0, 300, (1, 7))
    assert torch.equal(again.eval()(x), m.eval()(x))


def test_mismatch_with_the_registered_architecture_says_so(tmp_path):
    export_model(_model(), tmp_path / "exp")  # dim 32, 2 layers: not lm-diff-tiny's registered shape
    with pytest.raises(ValueError, match=r"registered 'lm-diff-tiny' values: the checkpoint is another architecture"):
        zoo.create_model("lm-diff-tiny", pretrained=tmp_path / "exp", vocab_size=40)


def test_overwrite_removes_what_the_previous_export_wrote_and_keeps_other_files(tmp_path):
    from zoo.data.tokenizers import ByteTokenizer
    from zoo.nn.adapters import apply_adapter, remove_adapters, save_adapter

    folder = tmp_path / "exp"
    old = zoo.create_model("lm-vanilla-tiny", dim=32, n_layers=2, n_heads=4, max_seq_len=64)
    old.tokenizer = ByteTokenizer()
    apply_adapter(old, "opamp")
    export_model(remove_adapters(copy.deepcopy(old)), folder)
    save_adapter(old, folder)
    (folder / "NOTES.md").write_text("my notes")  # not written by the zoo: must survive
    assert {"adapter.safetensors", "adapter_config.json", "tokenizer_config.json"} <= {p.name for p in folder.iterdir()}

    new = _model()  # no tokenizer, no adapter, another vocabulary
    export_model(new, folder, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["NOTES.md", "config.json", "model.safetensors"]
    loaded = load_pretrained(folder)
    assert loaded.tokenizer is None and getattr(loaded, "adapter_config", None) is None
    x = torch.randint(0, 40, (1, 7))
    assert torch.equal(loaded(x), new.eval()(x))


def test_overwrite_of_an_export_without_an_asset_record_refuses_leftovers(tmp_path):
    from zoo.data.tokenizers import ByteTokenizer

    folder = tmp_path / "exp"
    old = zoo.create_model("lm-diff-tiny", dim=32, n_layers=2, n_heads=2)
    old.tokenizer = ByteTokenizer()
    export_model(old, folder)
    cfg = folder / "config.json"
    meta = json.loads(cfg.read_text())
    del meta["assets"]  # as an older zoo wrote it
    cfg.write_text(json.dumps(meta))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(FileExistsError, match=r"older zoo .*\['tokenizer_config.json'\]"):
        export_model(_model(), folder, overwrite=True)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # untouched


def test_a_config_json_that_is_not_a_json_object_is_named_corrupt(tmp_path):
    export_model(_model(), tmp_path / "exp")
    cfg = tmp_path / "exp" / "config.json"
    cfg.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"config.json is not a zoo export"):
        load_pretrained(tmp_path / "exp")
    cfg.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match=r"config.json is not valid JSON.*corrupt"):
        load_pretrained(tmp_path / "exp")


def test_create_model_takes_timm_style_pretrained_flags():
    """timm's pretrained=True loads the weights shipped under the name; False builds it untrained."""
    ref = load_pretrained("str-diff-tiny")
    built = zoo.create_model("str-diff-tiny", pretrained=True)
    ref_state = ref.state_dict()
    assert all(torch.equal(t, ref_state[k]) for k, t in built.state_dict().items())
    assert isinstance(zoo.create_model("lm-diff-tiny", pretrained=False), torch.nn.Module)
    with pytest.raises(ValueError, match=r"'lm-diff-tiny' has no shipped weights"):
        zoo.create_model("lm-diff-tiny", pretrained=True)


def test_timm_create_model_keywords_are_named_with_the_zoos_way():
    """timm's ``create_model(name, checkpoint_path=..., drop_rate=..., drop_path_rate=..., num_classes=...)`` (its own
    keywords: a timm model takes every one) met only "unknown config field(s)" and the list of fields, which says
    neither that a checkpoint is ``pretrained=`` nor which field is dropout. Each is named with the zoo's way, per
    model (a scene-text reader has drop_path, an LM has none); as timm's, the created model is in train mode."""
    import inspect

    import timm

    built = timm.create_model("resnet10t", drop_rate=0.1, drop_path_rate=0.1, num_classes=3)
    assert built.num_classes == 3 and built.training
    assert "checkpoint_path" in inspect.signature(timm.create_model).parameters
    with pytest.raises(ValueError, match=r"timm keyword\(s\) \['checkpoint_path'\].*pass pretrained="):
        zoo.create_model("lm-diff-tiny", checkpoint_path="model.pth")
    with pytest.raises(ValueError, match=r"\['drop_path_rate', 'drop_rate'\].*drop_path_rate: DiffTransformerLM has no "
                                         r"drop_path; drop_rate: the field is dropout"):
        zoo.create_model("lm-diff-tiny", drop_rate=0.1, drop_path_rate=0.1)
    with pytest.raises(ValueError, match=r"drop_path_rate: the field is drop_path"):
        zoo.create_model("str-diff-tiny", drop_path_rate=0.1)
    with pytest.raises(ValueError, match=r"num_classes: zoo models have no classifier.*charset"):
        zoo.create_model("str-diff-tiny", pretrained=True, num_classes=10)
    assert zoo.create_model("str-diff-tiny", drop_path=0.1, pretrained=True).training


def test_an_asset_file_missing_from_the_export_is_named(tmp_path):
    """config.json lists the export's asset files: one deleted must not load as a model without a tokenizer."""
    from zoo.data.tokenizers import ByteTokenizer

    m = _model()
    m.tokenizer = ByteTokenizer()
    export_model(m, tmp_path / "exp")
    assets = json.loads((tmp_path / "exp" / "config.json").read_text())["assets"]
    assert assets
    (tmp_path / "exp" / assets[0]).unlink()
    with pytest.raises(FileNotFoundError, match=rf"\['{assets[0]}'\].*missing"):
        load_pretrained(tmp_path / "exp")
    with pytest.raises(FileNotFoundError, match=rf"\['{assets[0]}'\].*missing"):
        zoo.create_model("lm-diff-tiny", pretrained=tmp_path / "exp", dim=32, n_layers=2, n_heads=2)


@pytest.mark.parametrize("name", ["lm-diff-tiny", "encoder-tiny", "vlm-tiny", "str-diff-tiny", "ts-itransformer-diff-small"])
def test_a_misspelt_create_model_keyword_is_named_in_every_domain(name):
    # the LM, encoder and VLM configs raised a bare dataclass TypeError; every domain names the field and the known ones
    import zoo

    with pytest.raises(ValueError, match=r"unknown \w+ config field\(s\) \['dimm'\]; known: \[.*'"):
        zoo.create_model(name, dimm=64)


@pytest.mark.parametrize("module, cls, field", [
    ("zoo.models.lm", "LMConfig", "n_heads"), ("zoo.models.lm", "LMConfig", "n_kv_heads"),
    ("zoo.models.lm", "LMConfig", "dim"), ("zoo.models.encoder", "EncoderConfig", "n_heads"),
    ("zoo.models.str", "STRConfig", "dec_depth"), ("zoo.models.ts", "ITransformerConfig", "n_layers"),
    ("zoo.models.ts", "PatchTSTConfig", "stride"), ("zoo.models.vlm", "VLMConfig", "fusion_layers"),
])
@pytest.mark.parametrize("bad", [0, -2, True, 4.0, "4"])
def test_every_config_names_a_size_that_is_no_positive_integer(module, cls, field, bad):
    """A size of 0 divided by zero in LMConfig / EncoderConfig (n_heads) and True or 4.0 passed unchecked in
    some configs; every config now names the field."""
    import importlib

    config_class = getattr(importlib.import_module(module), cls)
    config_class()  # the defaults are valid
    with pytest.raises(ValueError, match=f"^{field} must be a positive integer, got {bad!r}"):
        config_class(**{field: bad})


def test_a_numpy_integer_size_is_named_by_its_type():
    """np.int64(64) prints as a whole number: 'dim must be a positive integer, got np.int64(64)' alone reads as a
    contradiction, so the message names the type and the fix (LMConfig took it before; the JSON export then failed)."""
    import numpy as np

    from zoo.models.lm import LMConfig

    with pytest.raises(ValueError, match=r"^dim must be a positive integer, got .*64.* of type numpy\.int64; pass a Python int"):
        LMConfig(dim=np.int64(64))
    with pytest.raises(ValueError, match=r"^dim must be a positive integer, got 0$"):  # a plain int: no type note
        LMConfig(dim=0)


def test_create_model_from_an_adapted_export_applies_its_adapter(tmp_path):
    """create_model(name, pretrained=folder) gives the model load_pretrained(folder) gives (as timm / Hugging Face
    load a checkpoint whole): an export's adapter is applied, not silently dropped; adapter=False gives the base."""
    from zoo.nn import adapters as A

    m = _model()
    A.apply_adapter(m, "dex", lambda_max=0.5, anneal_steps=1)
    A.step_adapters(m, 1)
    with torch.no_grad():  # move the adapter off its identity start so that dropping it shows
        for name, p in m.named_parameters():
            if ".adapter." in name:
                p.add_(0.5 * torch.randn_like(p))
    export_model(m, tmp_path / "exp", arch="lm-diff-tiny")
    x = torch.randint(0, 40, (2, 9))
    with torch.no_grad():
        want = m.eval()(x)
        built = zoo.create_model("lm-diff-tiny", pretrained=tmp_path / "exp", dim=32, n_layers=2, n_heads=2).eval()
        assert built.adapter_config["method"] == "dex"
        assert torch.allclose(built(x), want, atol=1e-6)
        base = zoo.create_model("lm-diff-tiny", pretrained=tmp_path / "exp", adapter=False, dim=32, n_layers=2,
                                n_heads=2).eval()
        assert not getattr(base, "adapter_config", None)
        assert torch.equal(base(x), load_pretrained(tmp_path / "exp", adapter=False)(x))
        assert not torch.allclose(base(x), want, atol=1e-3)


def test_a_misspelt_model_name_suggests_the_registered_one():
    with pytest.raises(ValueError, match=r"unknown model 'lm-diff-tinyy'\. Similar: \['lm-diff-tiny'"):
        zoo.create_model("lm-diff-tinyy")
    with pytest.raises(ValueError, match=r"Similar: \['vlm-fda-tiny'"):
        zoo.create_model("vlm-fda-tiy")


def test_hugging_face_save_pretrained_and_from_pretrained(tmp_path):
    """model.save_pretrained(folder) / ModelClass.from_pretrained(folder_or_name), as Hugging Face users call them:
    the same export (tokenizer included) that reads back to the same outputs; a created or loaded model saved keeps
    its registered name (not a loaded export's notes); a non-empty folder is refused; a class asked for another kind of model is named."""
    from zoo.data.tokenizers import ByteTokenizer
    from zoo.models.lm import DiffTransformerLM
    from zoo.models.str import SceneTextRecognizer
    from zoo.models.ts import Forecaster
    from zoo.models.vlm import VisionLanguageModel

    torch.manual_seed(0)
    m = zoo.create_model("lm-diff-tiny", dim=32, n_layers=2, n_heads=2, vocab_size=259).eval()
    m.tokenizer = ByteTokenizer()
    folder = m.save_pretrained(tmp_path / "a")  # create_model's name is the export's arch
    assert json.loads((folder / "config.json").read_text())["arch"] == "lm-diff-tiny"
    loaded = DiffTransformerLM.from_pretrained(folder)
    x = torch.randint(0, 259, (2, 7))
    assert torch.equal(m(x), loaded(x)) and not loaded.training
    assert loaded.tokenizer.encode("hi") == m.tokenizer.encode("hi")
    loaded.save_pretrained(tmp_path / "b")
    assert json.loads((tmp_path / "b" / "config.json").read_text())["arch"] == "lm-diff-tiny"
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        m.save_pretrained(tmp_path / "a")
    with pytest.raises(TypeError, match=r"holds a zoo\.models\.lm\.DiffTransformerLM, not a SceneTextRecognizer"):
        SceneTextRecognizer.from_pretrained(folder)
    shipped = SceneTextRecognizer.from_pretrained("str-diff-tiny")
    assert shipped.pretrained_meta["extra"]  # the shipped export's notes (its measured accuracy...)
    meta = json.loads((shipped.save_pretrained(tmp_path / "str") / "config.json").read_text())
    assert meta["arch"] == "str-diff-tiny" and meta["extra"] == {}  # not copied: the weights may have changed since
    for cls, name in ((SceneTextRecognizer, "str-diff-tiny"), (Forecaster, "ts-itransformer-diff-etth1"),
                      (VisionLanguageModel, "vlm-fda-tiny")):
        got, ref = cls.from_pretrained(name), load_pretrained(name)
        assert isinstance(got, cls) and type(got) is type(ref) and got.state_dict().keys() == ref.state_dict().keys()
        assert all(torch.equal(a, b) for a, b in zip(got.state_dict().values(), ref.state_dict().values()))


def test_save_pretrained_expands_a_home_folder_as_from_pretrained_does(tmp_path, monkeypatch):
    """save_pretrained("~/m") wrote into a folder literally named "~" under the working directory, while
    from_pretrained("~/m") (resolve_pretrained) reads the user's home: the saved model was not found again."""
    from zoo.models.lm import DiffTransformerLM

    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir(), cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    m = _model().eval()
    assert m.save_pretrained("~/m") == home / "m"
    assert not (cwd / "~").exists() and (home / "m" / "config.json").is_file()
    x = torch.randint(0, 40, (2, 5))
    assert torch.equal(DiffTransformerLM.from_pretrained("~/m")(x), m(x))
    export_model(m, "~/m", overwrite=True)  # the function itself too
    assert not (cwd / "~").exists()


def test_export_of_a_torch_compiled_model_is_the_export_of_the_model(tmp_path):
    """export_model(torch.compile(model)) wrote model_class torch._dynamo...OptimizedModule and `_orig_mod.`-prefixed
    tensor names: an export that load_pretrained refused ("refusing to import model class"). It unwraps the
    compiled module as Lightning / Hugging Face do: the same files as exporting the model itself."""
    m = _model().eval()
    compiled = torch.compile(m, backend="eager")
    export_model(m, tmp_path / "plain")
    export_model(compiled, tmp_path / "compiled")
    ref = json.loads((tmp_path / "plain" / "config.json").read_text())
    got = json.loads((tmp_path / "compiled" / "config.json").read_text())
    assert got["model_class"] == "zoo.models.lm.DiffTransformerLM" and got == ref
    loaded = load_pretrained(tmp_path / "compiled")
    assert loaded.state_dict().keys() == m.state_dict().keys()
    x = torch.randint(0, 40, (2, 5))
    assert torch.equal(loaded(x), m(x))


def _fit_and_save(task, dm, ckpt, **trainer_kw):
    """Fit ``task`` on ``dm`` quietly on the CPU and save its Lightning checkpoint to ``ckpt`` (as from Python)."""
    import lightning as L

    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, default_root_dir=ckpt.parent, **trainer_kw)
    trainer.fit(task, datamodule=dm)
    trainer.save_checkpoint(ckpt)
    return ckpt


def test_load_pretrained_reads_a_fit_checkpoint(tmp_path):
    """zoo.load_pretrained (and from_pretrained) take the Lightning .ckpt of a zoo task: it said "neither an exported
    model folder nor a model name". Reference: the trained task's own model in memory (weights and the scaler
    statistics a forecaster needs), no reload involved."""
    import numpy as np
    import pandas as pd

    from zoo.data.ts import CSVTSDataModule
    from zoo.models.lm import DiffTransformerLM
    from zoo.models.ts import Forecaster
    from zoo.tasks.ts import ForecastTask

    rng = np.random.default_rng(0)
    t = np.arange(300)
    df = pd.DataFrame({"date": pd.date_range("2023-01-01", periods=300, freq="h"),
                       "a": np.sin(t / 5) * 4 + 10, "b": rng.normal(size=300).cumsum()})
    df.to_csv(tmp_path / "s.csv", index=False)
    dm = CSVTSDataModule(str(tmp_path / "s.csv"), lookback=24, horizon=8, batch_size=16)
    torch.manual_seed(0)
    task = ForecastTask(arch="ts-itransformer-diff-tiny", data_info=dm.data_info, lr=3e-3)
    ckpt = _fit_and_save(task, dm, tmp_path / "run.ckpt", max_steps=3, limit_val_batches=1)

    fc = load_pretrained(str(ckpt))
    assert isinstance(fc, Forecaster) and not fc.training and fc.meta == task.model.meta
    want = task.model.eval().forecast(df)
    pd.testing.assert_frame_equal(fc.forecast(df), want)
    pd.testing.assert_frame_equal(Forecaster.from_pretrained(ckpt).forecast(df), want)
    assert load_pretrained(ckpt, dropout=0.3).config.dropout == 0.3
    with pytest.raises(ValueError, match="runtime fields"):
        load_pretrained(ckpt, dim=8)
    with pytest.raises(TypeError, match="not a DiffTransformerLM"):
        DiffTransformerLM.from_pretrained(ckpt)

    task.export(tmp_path / "exp")
    with pytest.raises(ValueError, match="one file of an exported model: give its folder"):
        load_pretrained(tmp_path / "exp" / "config.json")
    torch.save(torch.zeros(3), tmp_path / "tensor.ckpt")
    with pytest.raises(ValueError, match="not written by a zoo task"):
        load_pretrained(tmp_path / "tensor.ckpt")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="cannot read .*notes.txt.*Lightning checkpoint"):
        load_pretrained(tmp_path / "notes.txt")


def _user_lm_task_class():
    from zoo.tasks import LanguageModelTask

    global UserLMTask
    if "UserLMTask" not in globals():
        UserLMTask = type("UserLMTask", (LanguageModelTask,), {"__module__": __name__})
    return UserLMTask


def test_a_checkpoint_of_a_users_task_subclass_loads_and_exports(tmp_path):
    """A checkpoint written by the user's own subclass of a zoo task (zoo_task_class 'their_module.Class') was
    exported by `python -m zoo export` until load_pretrained's refactoring refused every class outside zoo.* ("no zoo
    task class of this version"). Reference: the trained task's own model in memory."""
    from zoo.cli import export_main
    from zoo.data import RetrievalDataModule

    cls = _user_lm_task_class()
    dm = RetrievalDataModule(task="mqar", seq_len=32, n_pairs=4, n_keys=16, n_values=16, train_size=16, val_size=16,
                             test_size=16, batch_size=8)
    torch.manual_seed(0)
    task = cls(model_args={"dim": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 64}, data_info=dm.data_info)
    ckpt = _fit_and_save(task, dm, tmp_path / "user.ckpt", max_steps=1, limit_val_batches=0)
    x = torch.randint(0, 30, (2, 7))
    want = task.model.eval()(x)
    assert torch.equal(load_pretrained(ckpt)(x), want)
    export_main([str(ckpt), str(tmp_path / "exp")])
    assert torch.equal(load_pretrained(tmp_path / "exp")(x), want)
    # a class that is not a zoo task stays refused by name
    bad = torch.load(ckpt, weights_only=False)
    bad["zoo_task_class"] = "collections.OrderedDict"
    torch.save(bad, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match="collections.OrderedDict.*no importable zoo task class"):
        load_pretrained(tmp_path / "bad.ckpt")


@pytest.mark.parametrize("name,data", [
    ("ts-itransformer-diff-small", {"lookback": 48, "horizon": 24, "n_time_features": 4}),
    ("ts-patchtst-diff-small", {"lookback": 48, "horizon": 24}),
    ("str-diff-tiny", {"img_size": [32, 96], "max_length": 8, "charset": "abc"}),
])
def test_create_model_takes_the_fields_the_data_fixes_from_the_checkpoint(tmp_path, name, data):
    """A forecaster trained on another lookback / horizon / calendar (or a recognizer on other crops) under its
    registered name: create_model(name, pretrained=export) refused it as another architecture ("n_time_features:
    checkpoint=4 config=0") where load_pretrained loads it. Reference: the exported model itself."""
    torch.manual_seed(0)
    model = zoo.create_model(name, **data).eval()
    export_model(model, tmp_path / "exp", arch=name)
    again = zoo.create_model(name, pretrained=tmp_path / "exp").eval()
    assert {k: getattr(again.config, k) for k in data} == {k: getattr(model.config, k) for k in data}
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


_INFERENCE_WITHOUT_LIGHTNING = r'''
import sys

import numpy as np
import pandas as pd
from PIL import Image

import zoo
from zoo.data.tokenizers import ByteTokenizer


def no_lightning(step):
    assert "lightning" not in sys.modules, f"{step} imported lightning"


no_lightning("import zoo")
r = zoo.load_pretrained("str-diff-tiny")
r.read([Image.new("RGB", (128, 32), "white")])
no_lightning("str: load_pretrained + read")
fc = zoo.load_pretrained("ts-itransformer-diff-etth1")
n = fc.config.lookback + 8  # a synthetic hourly frame with the model's columns (no data file needed)
frame = pd.DataFrame({fc.meta["date_col"]: pd.date_range("2016-07-01", periods=n, freq="h").astype(str),
                      **{c: np.sin(np.arange(n) / 7 + i) for i, c in enumerate(fc.meta["columns"])}})
assert len(fc.forecast(frame)) == fc.config.horizon
no_lightning("ts: load_pretrained + forecast")
v = zoo.load_pretrained("vlm-fda-tiny")
v.similarity([Image.new("RGB", (32, 32), "red")], ["a red circle"])
no_lightning("vlm: load_pretrained + similarity")
m = zoo.create_model("lm-diff-tiny", vocab_size=ByteTokenizer.vocab_size)
m.tokenizer = ByteTokenizer()
m.generate("hello", max_new_tokens=3, seed=0)
no_lightning("lm: create_model + generate")
print("ok")
'''


def test_inference_through_the_python_api_does_not_import_lightning():
    """Reading, forecasting, image-text scoring and generation need none of Lightning, whose import took ~5 s: every
    shipped kind of model loads and runs in a fresh process that never imports it (zoo.data loads its datamodules on
    first use; the helpers inference calls live in Lightning-free modules). Each step is checked in turn, so the
    first one that pulls Lightning in is named."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", _INFERENCE_WITHOUT_LIGHTNING], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


@pytest.mark.parametrize("name, field, bad", [
    ("ts-patchtst-diff-tiny", "revin", "false"), ("vlm-tiny", "fda", "false"), ("lm-diff-tiny", "tie_embeddings", 0),
    ("encoder-tiny", "pooler", "no"), ("ts-itransformer-diff-tiny", "dropout", "0.1"), ("str-diff-tiny", "enc_mlp_ratio", "4"),
    ("vlm-tiny", "temp_init", "7e-2"), ("str-diff-tiny", "lambda_init", "5e-1"), ("ts-itransformer-diff-tiny", "n_time_features", "4"),
])
def test_a_create_model_keyword_of_the_wrong_type_is_named(name, field, bad):
    """A bool field given the string 'false' (truthy) built the model with the switch on (revin, fda); a float field
    given a string failed deep inside torch ("'<' not supported between instances of 'str' and 'int'", "Overflow when
    unpacking long long"): each is named with its field and the type it takes, in every domain."""
    with pytest.raises(ValueError, match=rf"config field {field} must be .*, got {bad!r}"):
        zoo.create_model(name, **{field: bad})


def test_fields_of_the_right_type_still_build():
    """ints for float fields (YAML's 0 for 0.0), None for Optional fields and a charset given as a number build."""
    assert zoo.create_model("ts-patchtst-diff-tiny", dropout=0, revin=False, lambda_init=None).config.revin is False
    assert zoo.create_model("str-diff-tiny", charset=36, dropout=0).config.charset == "0123456789abcdefghijklmnopqrstuvwxyz"
    # a numpy bool reads as a bool but no config.json holds it (json.dumps fails at export): named with the fix
    import numpy as np

    with pytest.raises(ValueError, match=r"revin must be true or false \(a Python bool: bool\(x\)"):
        zoo.create_model("ts-patchtst-diff-tiny", revin=np.False_)
    with pytest.raises(TypeError):
        json.dumps(np.False_)


@pytest.mark.parametrize("name", ["str-diff-tiny", "ts-patchtst-diff-tiny", "lm-diff-tiny"])
def test_an_export_with_a_config_field_this_zoo_does_not_know_is_named_as_such(tmp_path, name):
    """A config.json from a newer zoo (a field added since) was refused by load_pretrained as if the user had misspelt
    a create_model keyword ('unknown ... config field(s)', no file named), and create_model(pretrained=) built the
    model ignoring the field: both name the file, the field, and the fix."""
    kw = dict(dim=32, n_layers=2, n_heads=2, vocab_size=40) if name.startswith("lm") else {}
    export_model(zoo.create_model(name, **kw), tmp_path / "exp")
    cfg_path = tmp_path / "exp" / "config.json"
    meta = json.loads(cfg_path.read_text())
    meta["config"]["future_field"] = 1
    cfg_path.write_text(json.dumps(meta))
    match = r"config\.json has config field\(s\) \['future_field'\] this zoo .* does not know.*upgrade zoo"
    with pytest.raises(ValueError, match=match):
        load_pretrained(tmp_path / "exp")
    with pytest.raises(ValueError, match=match):
        zoo.create_model(name, pretrained=tmp_path / "exp", **kw)


@pytest.mark.parametrize("task_path, config_arch, shipped", [
    ("zoo.tasks.str.RecognitionTask", "str-vanilla-small", "str-diff-tiny"),
    ("zoo.tasks.ts.ForecastTask", "ts-itransformer-vanilla-tiny", "ts-itransformer-diff-etth1"),
    ("zoo.tasks.vlm.VLMTask", "vlm-tiny", "vlm-fda-tiny"),
])
def test_a_fine_tune_exports_under_its_exports_name_not_the_configs(tmp_path, task_path, config_arch, shipped):
    """pretrained=<export> builds the export's architecture under the config's `arch` (which only sizes it): a
    str-diff-tiny fine-tuned by a str-vanilla-small config exported as "arch": "str-vanilla-small" (a diff tiny
    model), and create_model(that name, pretrained=the new export) was refused as another architecture. The
    export's own name is kept, as the LM task does."""
    import importlib
    import warnings

    module, _, name = task_path.rpartition(".")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the data-less task's notes
        task = getattr(importlib.import_module(module), name)(arch=config_arch, pretrained=shipped)
    out = task.export(tmp_path / "ft")
    assert json.loads((out / "config.json").read_text())["arch"] == shipped
    again = zoo.create_model(shipped, pretrained=out)  # the name it carries builds it
    for k, v in zoo.load_pretrained(shipped).state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v)


@pytest.mark.parametrize("task_path, config_arch, shipped", [
    ("zoo.tasks.str.RecognitionTask", "str-vanilla-small", "str-diff-tiny"),
    ("zoo.tasks.ts.ForecastTask", "ts-itransformer-vanilla-tiny", "ts-itransformer-diff-etth1"),
    ("zoo.tasks.vlm.VLMTask", "vlm-tiny", "vlm-fda-tiny"),
])
def test_a_fine_tune_of_an_export_named_as_an_unregistered_model_saves_its_checkpoint(tmp_path, task_path, config_arch,
                                                                                      shipped):
    """An export whose `arch` is registered where it was made (zoo.register_model in the user's script), not here,
    fine-tunes under the config's `arch`; the task took the export's name, and the checkpoint's hyperparameters were
    rebuilt under it: the first checkpoint save of the fit stopped with "unknown model". The checkpoint rebuilds the
    model under the config's (registered) name, loads with every weight, and keeps the export's name."""
    import importlib
    import shutil
    import warnings

    import lightning as L

    src = tmp_path / "exp"
    shutil.copytree(zoo.hub.resolve_pretrained(shipped), src)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "arch": "my-own-arch"}))
    module, _, name = task_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the data-less task's notes
        task = cls(arch=config_arch, pretrained=str(src))
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
        trainer.strategy.connect(task)
        trainer.save_checkpoint(tmp_path / "ft.ckpt")
        back = cls.load_from_checkpoint(tmp_path / "ft.ckpt")
    assert back.arch == "my-own-arch"
    want = zoo.load_pretrained(shipped).state_dict()
    for k, v in back.model.state_dict().items():
        torch.testing.assert_close(v, want[k])


def test_export_writes_and_renames_only_inside_its_folder(tmp_path, monkeypatch):
    """export_model staged its files in a hidden folder beside the target and renamed them in: into a mounted volume
    (`docker run -v ...:/out`, then export to /out) the rename crossed filesystems ("[Errno 18] Invalid cross-device
    link"), and into a folder the user may write inside a parent they may not, the staging failed with "Permission
    denied" on the parent. Every rename stays inside the target folder, and nothing is left beside it."""
    import os
    from pathlib import Path

    from zoo.data.tokenizers import ByteTokenizer

    renames = []
    real_replace = os.replace

    def replace(src, dst, **kw):
        renames.append((Path(src), Path(dst)))
        return real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "replace", replace)
    folder = tmp_path / "out"
    folder.mkdir()  # the mount point: exists, empty
    m = zoo.create_model("lm-diff-tiny", dim=32, n_layers=2, n_heads=2, vocab_size=259).eval()
    m.tokenizer = ByteTokenizer()
    for overwrite in (False, True):
        renames.clear()
        export_model(m, folder, overwrite=overwrite)
        assert {dst.name for _, dst in renames} >= {"config.json", "model.safetensors", "tokenizer_config.json"}
        assert all(src.is_relative_to(folder) and dst.parent == folder for src, dst in renames), renames
        assert [p.name for p in tmp_path.iterdir()] == ["out"]
        assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "tokenizer_config.json"]
    x = torch.randint(0, 259, (1, 6))
    assert torch.equal(load_pretrained(folder)(x), m(x))
    # a killed export leaves its staging folder inside (no cleanup ran): ours, so neither "not empty" nor kept
    fresh = tmp_path / "fresh"
    (fresh / ".export-killed").mkdir(parents=True)
    (fresh / ".export-killed" / "model.safetensors").write_bytes(b"partial")
    export_model(m, fresh)
    assert sorted(p.name for p in fresh.iterdir()) == ["config.json", "model.safetensors", "tokenizer_config.json"]


def test_export_to_a_file_says_it_is_a_file_with_or_without_overwrite(tmp_path):
    """A target that is a file: without overwrite the error advised "pass overwrite=True", which then failed with a
    bare "[Errno 17] File exists". The file is named as one, and left as it was."""
    target = tmp_path / "model.pt"
    target.write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match=r"model\.pt is a file, not a folder.*name a folder"):
            export_model(_model(), target, overwrite=overwrite)
    assert target.read_text() == "mine"


def test_a_name_or_path_that_loads_nothing_says_what_is_close_and_what_to_do(tmp_path, monkeypatch):
    """load_pretrained / create_model(pretrained=...) with a misspelt name, a Hugging Face Hub id, a relative path
    that does not exist or an empty string all said only "neither an exported model folder ... nor a model name with
    shipped weights [...]": no close name (create_model(name) suggests them), nothing on the Hub (this zoo reads
    local folders only: it must not try the network, HF_HUB_OFFLINE set or not) and no folder it looked for."""
    import re
    import socket
    import time

    def no_network(*args, **kwargs):
        raise AssertionError("load_pretrained tried the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(FileNotFoundError, match=r"Similar shipped names: \['str-diff-tiny'\]"):
        load_pretrained("str-diff-tin")
    with pytest.raises(FileNotFoundError, match=r"Similar shipped names: \['str-diff-tiny'\]"):
        zoo.create_model("str-diff-tiny", pretrained="str-diff-tin")
    with pytest.raises(FileNotFoundError, match=r"registered without shipped weights: \['lm-diff-tiny'.*create_model"):
        load_pretrained("lm-diff-tinyy")
    for offline in (None, "1"):
        if offline is None:
            monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        else:
            monkeypatch.setenv("HF_HUB_OFFLINE", offline)
        for hub_id, repo in (("microsoft/Diff-Transformer", "microsoft/Diff-Transformer"), ("user/repo", "user/repo"),
                             ("hf-hub:user/repo", "user/repo")):
            start = time.monotonic()
            with pytest.raises(FileNotFoundError, match=rf"Hugging Face Hub repo id: it is not found locally.*never downloads.*"
                                                        rf"snapshot_download\('{repo}'.*python -m zoo convert"):
                load_pretrained(hub_id)
            assert time.monotonic() - start < 5
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"no file or folder {re.escape(str(tmp_path / 'exports' / 'base'))}"):
        load_pretrained("exports/base")
    for empty in ("", "  "):
        with pytest.raises(ValueError, match=r"empty name or path"):
            load_pretrained(empty)
        with pytest.raises(ValueError, match=r"empty name or path"):
            zoo.create_model("str-diff-tiny", pretrained=empty)


def test_a_name_that_loads_nothing_is_matched_against_the_names_once(monkeypatch):
    """The not-found message ran difflib over every registered name twice when no spelling was close (its own
    call, then _similar_names' again before the names sharing the last part). Reference: the message names the
    first five registered names holding 'small' (fnmatch '*small*'), no spelling of 'our-small' being close."""
    import difflib
    import fnmatch

    from zoo.hub import _MODELS

    calls = []
    close = difflib.get_close_matches
    monkeypatch.setattr(difflib, "get_close_matches", lambda *a, **k: calls.append(a[0]) or close(*a, **k))
    with pytest.raises(FileNotFoundError) as err:
        load_pretrained("our-small")
    assert calls == ["our-small"]
    want = fnmatch.filter(list(_MODELS), "*small*")[:5]
    assert len(want) == 5 and not close("our-small", list(_MODELS), n=5, cutoff=0.75)
    assert f"Similar names registered without shipped weights: {want} (zoo.create_model(name)" in str(err.value)


def test_a_folder_that_is_no_export_says_what_it_holds(tmp_path):
    """A transformers folder said "Hugging Face folders are imported through zoo.convert" without the command; a run
    folder given instead of its export (lightning_logs/version_0) said only "not an exported zoo model folder"."""
    hf = tmp_path / "llama"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    (hf / "model.safetensors").write_bytes(b"weights")
    for load in (load_pretrained, lambda f: zoo.create_model("lm-diff-tiny", pretrained=f)):
        with pytest.raises(ValueError, match=rf"not a zoo export.*Hugging Face transformers model \(model_type="
                                             rf"'llama'\).*python -m zoo convert {hf} OUT"):
            load(hf)
    run = tmp_path / "version_0"
    m = _model().eval()
    export_model(m, run / "export")
    (run / "checkpoints").mkdir()
    with pytest.raises(FileNotFoundError, match=rf"not an exported zoo model folder.*a run folder: its export is "
                                                rf"{run / 'export'}"):
        load_pretrained(run)
    x = torch.randint(0, 40, (1, 5))
    assert torch.equal(load_pretrained(run / "export")(x), m(x))


def test_list_models_takes_none_as_no_filter_and_names_an_unknown_family():
    """timm.list_models(None) / exclude_filters=None list every model (no filter); zoo's failed with "'NoneType'
    object is not iterable". A misspelt family returned [] as if it had no models."""
    import timm

    assert len(timm.list_models(None)) == len(timm.list_models())
    every = zoo.list_models()
    assert zoo.list_models(None) == zoo.list_models(exclude=None) == every
    assert zoo.list_models(None, family="ts") == [n for n in every if n.startswith("ts-")]
    with pytest.raises(ValueError, match=r"unknown family 'forecast'; families: \['encoder', 'lm', 'str', 'ts', 'vlm'\]"):
        zoo.list_models(family="forecast")


def test_hugging_face_loading_keywords_say_what_the_zoo_does_instead(tmp_path):
    """from_pretrained(folder, torch_dtype=..., device_map=..., local_files_only=True), as transformers takes them,
    said only "can only override runtime fields [...]": each is named with the zoo's way (the dtype by .to(), the
    device by map_location, and the Hub options are moot: the zoo reads local files only)."""
    from zoo.models.lm import DiffTransformerLM

    _model().save_pretrained(tmp_path / "exp")
    for kw, fix in (({"torch_dtype": torch.bfloat16}, r"\.to\(torch\.bfloat16\)"), ({"dtype": "auto"}, r"\.to\("),
                    ({"device_map": "auto"}, r"map_location="), ({"local_files_only": True}, r"local files only"),
                    ({"revision": "main", "dropout": 0.1}, r"local files only")):
        with pytest.raises(ValueError, match=rf"runtime fields .*not \['{next(iter(kw))}'\].*{fix}"):
            DiffTransformerLM.from_pretrained(tmp_path / "exp", **kw)
    assert load_pretrained(tmp_path / "exp", dropout=0.1).config.dropout == 0.1


@pytest.mark.parametrize("name", ["str-diff-tiny", "ts-itransformer-diff-etth1", "ts-patchtst-diff-etth1",
                                  "vlm-fda-tiny"])
def test_every_shipped_model_exported_and_loaded_back_gives_the_same_outputs(tmp_path, name):
    """export -> load round trip of each domain's shipped model, through a folder with a space and non-ASCII
    characters, exported twice (the second time over the first): the same readings, forecast and image-text
    scores on the same input as the model before export (its assets, charset, scaler, tokenizer, included)."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    assert name in zoo.list_models(pretrained=True)
    ref = load_pretrained(name)
    folder = tmp_path / "mes modèles" / name
    ref.save_pretrained(folder)
    export_model(ref, folder, overwrite=True)
    got = load_pretrained(folder)
    assert type(got) is type(ref) and not got.training
    if name.startswith("str-"):
        noise = (np.random.default_rng(0).random((32, 100, 3)) * 255).astype("uint8")
        images = [Image.new("RGB", (128, 32), "white"), Image.fromarray(noise)]
        assert got.read(images) == ref.read(images)
    elif name.startswith("ts-"):
        n = ref.config.lookback + 8
        frame = pd.DataFrame({ref.meta["date_col"]: pd.date_range("2016-07-01", periods=n, freq="h").astype(str),
                              **{c: np.sin(np.arange(n) / 7 + i) for i, c in enumerate(ref.meta["columns"])}})
        pd.testing.assert_frame_equal(got.forecast(frame), ref.forecast(frame), check_exact=True)
    else:
        images, texts = [Image.new("RGB", (32, 32), "red")], ["a red circle", "two blue squares"]
        assert torch.equal(got.similarity(images, texts), ref.similarity(images, texts))


@pytest.mark.parametrize("name", ["str-diff-tiny", "vlm-fda-tiny", "ts-itransformer-diff-etth1",
                                  "ts-patchtst-diff-etth1"])
def test_every_config_gives_to_dict_as_its_config_json_holds_it(name):
    """transformers' ``model.config.to_dict()``: the LM and encoder configs had it, the STR / VLM / TS ones raised
    AttributeError. Reference: the shipped export's own config.json, and the dataclass rebuilt from the dict."""
    from zoo.hub import PRETRAINED_DIR

    model = zoo.load_pretrained(name)
    d = model.config.to_dict()
    saved = json.loads((PRETRAINED_DIR / name / "config.json").read_text())["config"]
    assert json.loads(json.dumps(d)) == saved
    assert type(model.config)(**d) == model.config
