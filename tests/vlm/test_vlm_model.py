"""The image-text model: FDA at g = 0 equals the plain model, function-word queries, MiniLM text init, export."""

import os
import warnings

import pytest
import torch

import zoo
from zoo.models.vlm import VisionLanguageModel, VLMConfig, text_config_from_hf
from vlm_helpers import TINY, scene_batch, tiny_model


@pytest.mark.parametrize("fusion", ["vanilla", "diff"])
def test_fda_with_g_zero_equals_plain_model(fusion):
    fda = tiny_model(fusion_attn_type=fusion, fda=True)
    plain = VisionLanguageModel(VLMConfig(**{**TINY, "vocab_size": fda.config.vocab_size, "fusion_attn_type": fusion,
                                             "fda": False}))
    plain.set_tokenizer(fda.tokenizer)
    # same weights: the FDA wrapper only adds a prefix (cross.attn.*) and the gates g
    state = {k.replace("cross.attn.", "cross."): v for k, v in fda.state_dict().items() if not k.endswith("cross.g")}
    plain.load_state_dict(state, strict=True)
    plain.eval()
    images, caps = scene_batch(4)
    with torch.no_grad():
        for layer in fda.fusion:
            layer.cross.g.zero_()
        torch.testing.assert_close(fda.itm_score(images, caps), plain.itm_score(images, caps), rtol=1e-5, atol=1e-5)
        for layer in fda.fusion:
            layer.cross.g.fill_(1.0)
        assert (fda.itm_score(images, caps) - plain.itm_score(images, caps)).abs().max() > 1e-4


def test_function_word_caption():
    m = tiny_model()
    tok = m.tokenizer
    cap = "there is a small red circle to the left of the blue square"
    ids, mask = tok.encode([cap])
    keep = {"there", "is", "a", "to", "the", "of"}  # function words of the caption (by hand)
    want = [tok.cls_id] + [tok.token_to_id(w) if w in keep else tok.pad_id for w in cap.split()] + [tok.sep_id]
    fw_ids = torch.where(m.fw_table[ids], ids, torch.zeros_like(ids))
    assert fw_ids[0].tolist() == want
    t = m.text
    pos = torch.arange(len(want))
    ref = t.embed_norm(t.word_embed(torch.tensor([want])) + t.type_embed.weight[0] + t.pos_embed(pos))
    torch.testing.assert_close(m.fw_states(ids), ref)


def test_function_word_caption_pads_every_piece_of_a_content_word():
    """A WordPiece tokenizer splits a content word into pieces, whose first one may be a function word's token
    ("inflatable" -> in ##fl ##atable, "overpass" -> over ##pass): the function-word caption kept that "in" / "over",
    so FDA subtracted a preposition's map at a content word. Reference: the caption's words by hand, every piece of a
    content word -> [PAD]."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    from zoo.data.vlm import VLMTokenizer

    words = ["a", "an", "in", "over", "man", "raft", "##fl", "##atable", "##pass", "dog"]
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words)}
    t = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    t.normalizer = normalizers.BertNormalizer(lowercase=True)
    t.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    t.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok = VLMTokenizer(t)
    torch.manual_seed(0)
    m = VisionLanguageModel(VLMConfig(**{**TINY, "vocab_size": tok.vocab_size}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # most of the list is not in this vocabulary
        m.set_tokenizer(tok)
    ids, _ = m.tokenize(["a man in an inflatable raft over a dog overpass"])
    assert t.encode("inflatable overpass").tokens[1:-1] == ["in", "##fl", "##atable", "over", "##pass"]
    v, P = vocab, tok.pad_id
    want = [tok.cls_id, v["a"], P, v["in"], v["an"], P, P, P, P, v["over"], v["a"], P, P, P, tok.sep_id]
    t_ = m.text
    ref = t_.embed_norm(t_.word_embed(torch.tensor([want])) + t_.type_embed.weight[0] + t_.pos_embed(torch.arange(len(want))))
    torch.testing.assert_close(m.fw_states(ids), ref)
    # the copy with_fda makes reads pieces the same way
    plain = VisionLanguageModel(VLMConfig(**{**TINY, "vocab_size": tok.vocab_size, "fda": False}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain.set_tokenizer(tok)
    t_ = plain.with_fda().text
    ref = t_.embed_norm(t_.word_embed(torch.tensor([want])) + t_.type_embed.weight[0] + t_.pos_embed(torch.arange(len(want))))
    torch.testing.assert_close(plain.with_fda().fw_states(ids), ref)


def test_an_old_exports_function_word_table_gets_the_capitalized_words(tmp_path):
    """An export (or checkpoint) written before a cased tokenizer's capitalized function words were marked ("A",
    "The": a COCO caption's first word) saved a table without them, and loading kept it: FDA read "A man on the beach"
    with "A" as a content word where a model built today marks it. Reference: the words by hand."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    from zoo.data.vlm import VLMTokenizer
    from zoo.tasks.vlm import VLMTask

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "A", "a", "The", "the", "man",
                                         "on", "beach"])}
    t = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    t.normalizer = normalizers.BertNormalizer(lowercase=False)  # cased, as bert-base-cased
    t.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    t.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    m = VisionLanguageModel(VLMConfig(**{**TINY, "vocab_size": len(vocab)}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # most of the list is not in this vocabulary
        m.set_tokenizer(VLMTokenizer(t))
    want = {vocab[w] for w in ("[CLS]", "[SEP]", "A", "a", "The", "the", "on")}
    marked = lambda table: set(table.nonzero().flatten().tolist())  # noqa: E731
    assert marked(m.fw_table) == want
    zoo.export_model(m, tmp_path / "new")
    with torch.no_grad():
        m.fw_table[[vocab["A"], vocab["The"]]] = False  # the table the earlier rule saved
    old = m.fw_table.clone()
    folder = zoo.export_model(m, tmp_path / "old")
    with pytest.warns(UserWarning, match=r"lacks the capitalized forms of 2 function words .*\['A', 'The'\]"):
        assert marked(zoo.load_pretrained(folder).fw_table) == want
    with pytest.warns(UserWarning, match="capitalized forms"):  # fine-tuning from it
        task = VLMTask(arch="vlm-fda-tiny", pretrained=str(folder), data_info={"kind": "vlm", "image_size": TINY["image_size"]})
    assert marked(task.model.fw_table) == want
    # a checkpoint's table (test / predict --ckpt_path, load_from_checkpoint) is completed before Lightning loads it
    ckpt = {"state_dict": {"model.fw_table": old.clone()}, "zoo_assets": {"tokenizer.json": (folder / "tokenizer.json").read_bytes()}}
    with pytest.warns(UserWarning, match="of the checkpoint lacks"):
        task.on_load_checkpoint(ckpt)
    assert marked(ckpt["state_dict"]["model.fw_table"]) == want
    with warnings.catch_warnings():  # a table written today loads as saved, without a word
        warnings.simplefilter("error")
        assert marked(zoo.load_pretrained(tmp_path / "new").fw_table) == want


def test_forward_gives_clip_style_contrastive_outputs():
    """model(images, ids, mask): the ITC logits every image against every caption, computed here by hand from
    the encoders' pooled outputs and the projections (cosine of the projected vectors over the temperature)."""
    m = tiny_model(seed=1).eval()
    images, caps = scene_batch(3)
    ids, mask = m.tokenize(caps[:2])
    with torch.no_grad():
        out = m(images, ids, mask)
        img = m.vision_proj(m.encode_image(images)[:, 0] if m.config.pool == "cls" else m.encode_image(images)[:, 1:].mean(1))
        hid = m.encode_text(ids, mask)
        m_ = mask.unsqueeze(-1).float()
        txt = m.text_proj(hid[:, 0] if m.config.pool == "cls" else (hid * m_).sum(1) / m_.sum(1))
        cos = torch.nn.functional.cosine_similarity(img[:, None], txt[None], dim=-1)
    assert out["logits_per_image"].shape == (3, 2)
    torch.testing.assert_close(out["logits_per_image"], cos / m.temp.clamp(0.001, 0.5))
    torch.testing.assert_close(out["logits_per_text"], out["logits_per_image"].T)
    torch.testing.assert_close(out["image_embeds"].norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(out["image_embeds"] @ out["text_embeds"].T, cos)


def test_fda_layers_and_heads_config():
    m = tiny_model(fda_layers=[1], fda_heads=[0, 3])
    assert [l.fda for l in m.fusion] == [False, True]
    assert m.fusion[1].cross.head_mask.tolist() == [True, False, False, True]
    with pytest.raises(ValueError, match="fda_layers"):
        VLMConfig(**TINY, fda_layers=[2])
    with pytest.raises(ValueError, match="fusion_attn_type"):
        VLMConfig(**TINY, fusion_attn_type="diff_v2")


@pytest.mark.parametrize("field, value, match", [
    ("fda_layers", [], "fda_layers is empty with fda=True"),
    ("fda_heads", [], "fda_heads is empty with fda=True"),
    ("fda_layers", [0.5], "fda_layers must be a list of integer indices"),  # no layer is 0.5: FDA acted nowhere
    ("fda_layers", [True], "fda_layers must be a list of integer indices"),  # read as layer 1
    ("fda_heads", [True], "fda_heads must be a list of integer indices"),  # failed as a bool mask (IndexError)
    ("fda_heads", [4], r"fda_heads \[4\] must index the 4 fusion heads"),
    ("fda_heads", [-1], r"out of range: \[-1\]"),
])
def test_an_fda_selection_that_selects_nothing_or_no_index_is_refused(field, value, match):
    """FDA switched on over an empty (or meaningless) selection did nothing, silently: refused as an empty selection is
    elsewhere (fda_heads of the FDA layer, STR masks), by the config, so a with_fda copy of a plain model is too."""
    with pytest.raises(ValueError, match=match):
        VLMConfig(**TINY, fda=True, **{field: value})
    if value == []:
        with pytest.raises(ValueError, match=match):
            tiny_model(fda=False).with_fda(**{field.removeprefix("fda_"): value})
        off = VLMConfig(**TINY, fda=False, **{field: value})  # FDA off: the selection is not used
        assert off.fda_layer_set == set()
    # a layer listed twice is that layer; every head may be an FDA head; with_fda takes numpy indices (as ints)
    m = tiny_model(fda_layers=[1, 1], fda_heads=[0, 1, 2, 3])
    assert [layer.fda for layer in m.fusion] == [False, True]
    assert m.fusion[1].cross.head_mask.tolist() == [True] * 4
    import numpy as np

    m = tiny_model(fda=False).with_fda(layers=np.array([1]), heads=np.arange(2, 4))
    assert m.config.fda_layers == [1] and type(m.config.fda_layers[0]) is int and m.config.fda_heads == [2, 3]
    assert [layer.fda for layer in m.fusion] == [False, True]
    assert m.fusion[1].cross.head_mask.tolist() == [False, False, True, True]


def test_similarity_is_pairwise_itm_and_export_roundtrip(tmp_path):
    m = tiny_model(seed=3)
    images, caps = scene_batch(3)
    sim = m.similarity(images, caps + ["a red circle"])
    itm, itc = m.similarity(images, caps + ["a red circle"], score="itm"), m.similarity(images, caps + ["a red circle"], score="itc")
    assert sim.shape == (3, 4)
    with torch.no_grad():
        for i in range(3):
            for j, c in enumerate(caps + ["a red circle"]):
                want_itm = m.itm_score(images[i : i + 1], [c])[0]
                want_itc = m.itc_similarity(images[i : i + 1], [c])[0, 0]
                torch.testing.assert_close(itm[i, j], want_itm, rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(itc[i, j], want_itc, rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(sim[i, j], want_itm + want_itc / m.temperature, rtol=1e-5, atol=1e-4)
    folder = zoo.export_model(m, tmp_path / "vlm")
    assert (folder / "tokenizer.json").is_file()
    back = zoo.load_pretrained(folder)
    assert torch.equal(back.fw_table, m.fw_table)
    torch.testing.assert_close(back.similarity(images, caps), sim[:, :3])
    with pytest.raises(ValueError, match=r"images must be \[B, 3, 32, 32\]"):
        m.similarity(images[:, :, :16], caps)
    # float64 pixels (numpy) score as float32 ones; uint8 pixels are refused (they are not in [0, 1])
    torch.testing.assert_close(m.similarity(images.double(), caps), sim[:, :3])
    with pytest.raises(ValueError, match="images must be floats in \\[0, 1\\], got torch.uint8"):
        m.similarity((images * 255).to(torch.uint8), caps)


def test_minilm_text_encoder_matches_transformers(minilm_dir):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    from zoo.data.vlm import VLMTokenizer, minilm_folder

    folder = minilm_folder()  # the folder text_init="minilm" finds: the fixture's
    assert folder == minilm_dir
    tok = VLMTokenizer.from_folder(folder)
    m = VisionLanguageModel(VLMConfig(**{**TINY, **text_config_from_hf(folder), "fusion_heads": 12, "max_text_len": 32}))
    m.set_tokenizer(tok)
    m.init_text_from_hf(folder)
    m.eval()
    caps = ["A small red circle to the left of the blue square.", "two dogs"]
    ids, mask = m.tokenize(caps)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    hf_ids = hf_tok(caps, padding=True, return_tensors="pt")
    assert torch.equal(ids, hf_ids["input_ids"]) and torch.equal(mask.long(), hf_ids["attention_mask"])
    ref = transformers.AutoModel.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        want = ref(**hf_ids).last_hidden_state
        got = m.encode_text(ids, mask)
    real = mask[..., None]
    torch.testing.assert_close(got * real, want * real, rtol=1e-4, atol=1e-4)


def test_task_with_minilm_text_init_uses_wordpiece_and_weights(minilm_dir):
    from zoo.convert import from_hf_bert
    from zoo.data.vlm import SyntheticVLMDataModule
    from zoo.tasks.vlm import VLMTask

    info = SyntheticVLMDataModule(n_train=8, n_val=4, n_test=4).data_info
    task = VLMTask(arch="vlm-fda-tiny", text_init="minilm", data_info=info, model_args={"fusion_heads": 12})
    m = task.model
    assert m.config.vocab_size == 30522 and m.config.text_dim == 384 and m.tokenizer.vocab_size == 30522
    ref = from_hf_bert(minilm_dir)
    torch.testing.assert_close(m.text.layers[3].mlp.fc1.weight, ref.layers[3].mlp.fc1.weight)
    assert not m.fw_unknown  # every function word is one WordPiece token


def test_a_minilm_tokenizer_alone_says_the_encoder_is_random(minilm_dir):
    from zoo.data.vlm import SyntheticVLMDataModule
    from zoo.tasks.vlm import VLMTask

    info = SyntheticVLMDataModule(n_train=8, n_val=4, n_test=4, tokenizer="minilm").data_info
    with pytest.warns(UserWarning, match="random weights; pass model.init_args.text_init: minilm"):
        task = VLMTask(arch="vlm-fda-tiny", data_info=info, model_args={"fusion_heads": 12})
    assert task.model.config.text_init is None  # the export does not claim MiniLM's weights
    assert task.model.tokenizer.vocab_size == 30522


def test_task_function_words_strict_switch(tmp_path):
    from zoo.data.vlm import SyntheticVLMDataModule
    from zoo.tasks.vlm import VLMTask

    words = tmp_path / "fw.txt"
    words.write_text("the\nof\nzyzzyva  # not in the scenes' vocabulary\n")
    info = SyntheticVLMDataModule(n_train=8, n_val=4, n_test=4).data_info
    with pytest.warns(UserWarning, match="zyzzyva"):
        task = VLMTask(arch="vlm-fda-tiny", data_info=info, model_args={"function_words": str(words)})
    assert task.model.fw_unknown == ["zyzzyva"]
    with pytest.raises(ValueError, match="zyzzyva"):
        VLMTask(arch="vlm-fda-tiny", data_info=info, model_args={"function_words": str(words)},
                function_words_strict=True)


@pytest.mark.parametrize("fusion", ["vanilla", "diff"])
def test_with_fda_adds_fda_to_a_plain_model_keeping_every_weight(fusion):
    plain = tiny_model(fusion_attn_type=fusion, fda=False, seed=4)
    images, caps = scene_batch(4)
    at_zero = plain.with_fda(g_init=0.0).eval()
    assert at_zero.config.fda and at_zero.tokenizer is plain.tokenizer
    with torch.no_grad():
        torch.testing.assert_close(at_zero.itm_score(images, caps), plain.itm_score(images, caps), rtol=1e-5, atol=1e-5)
    m = plain.with_fda(layers=[1], heads=[0], direction="keys").eval()
    assert [layer.fda for layer in m.fusion] == [False, True] and m.fusion[1].cross.head_mask.tolist() == [True, False, False, False]
    assert float(m.fusion[1].cross.g) == 1.0 and m.config.fda_direction == "keys"
    new = m.state_dict()
    for k, v in plain.state_dict().items():  # layer 1's cross-attention moved under the wrapper (cross.attn.*)
        torch.testing.assert_close(new[k.replace("fusion.1.cross.", "fusion.1.cross.attn.")], v, rtol=0, atol=0)
    with torch.no_grad():
        assert (m.itm_score(images, caps) - plain.itm_score(images, caps)).abs().max() > 1e-4  # g = 1 acts
    with pytest.raises(ValueError, match="already has FDA"):
        m.with_fda()


def test_task_fine_tunes_a_plain_checkpoint_with_fda_switched_on(tmp_path):
    from zoo.tasks.vlm import VLMTask

    plain = tiny_model(fda=False, seed=6)
    folder = zoo.export_model(plain, tmp_path / "plain")
    info = {"kind": "vlm", "image_size": TINY["image_size"]}
    task = VLMTask(arch="vlm-fda-tiny", fda=True, pretrained=str(folder), data_info=info,
                   model_args={"fda_layers": [0], "fda_g_init": 0.5})
    m = task.model.eval()
    assert m.config.fda and m.config.fda_layers == [0] and float(m.fusion[0].cross.g) == 0.5
    torch.testing.assert_close(m.fusion[0].cross.attn.q_proj.weight, plain.fusion[0].cross.q_proj.weight, rtol=0, atol=0)
    # without the switch the plain checkpoint stays plain; an FDA checkpoint cannot be read as plain
    assert not VLMTask(arch="vlm-tiny", pretrained=str(folder), data_info=info).model.config.fda
    fda_folder = zoo.export_model(tiny_model(fda=True), tmp_path / "fda")
    with pytest.raises(ValueError, match="fda: checkpoint=True config=False"):
        VLMTask(arch="vlm-fda-tiny", fda=False, pretrained=str(fda_folder), data_info=info)


def test_a_checkpoint_fine_tuned_from_an_export_loads_without_it(tmp_path):
    """FDA added over a plain export, one step, a Lightning checkpoint; the export folder removed: the
    checkpoint alone gives back the model, its tokenizer (the export's, not the data's) and its scores."""
    import shutil

    import lightning as L

    from zoo.data.vlm import SyntheticVLMDataModule
    from zoo.tasks.vlm import VLMTask

    folder = zoo.export_model(tiny_model(fda=False, seed=6), tmp_path / "plain")
    dm = SyntheticVLMDataModule(n_train=8, n_val=4, n_test=4, image_size=TINY["image_size"], batch_size=4)
    task = VLMTask(arch="vlm-fda-tiny", fda=True, pretrained=str(folder), data_info=dm.data_info,
                   model_args={"fda_layers": [0]})
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(task, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "ft.ckpt")
    shutil.rmtree(folder)
    back = VLMTask.load_from_checkpoint(tmp_path / "ft.ckpt", map_location="cpu")
    assert back.model.config.fda and back.model.config.fda_layers == [0]
    for k, v in task.model.state_dict().items():
        assert torch.equal(back.model.state_dict()[k], v), k
    assert back.model.tokenizer.vocab_size == task.model.tokenizer.vocab_size
    images, caps = scene_batch(3)
    with torch.no_grad():
        torch.testing.assert_close(back.model.eval().similarity(images, caps), task.model.eval().similarity(images, caps))


@pytest.mark.parametrize("kind", ["one", "same_captions"])
def test_training_step_survives_a_batch_without_itm_negatives(kind):
    # the last batch of an epoch can hold one caption, or captions that all equal each other: no row has
    # an ITM hard negative there, which must not stop training (torch.multinomial over all-zero weights)
    import warnings

    from zoo.data.vlm import SyntheticVLMDataModule
    from zoo.tasks.vlm import VLMTask

    dm = SyntheticVLMDataModule(n_train=8, n_val=4, n_test=4, batch_size=3, image_size=32)
    task = VLMTask(arch="vlm-fda-tiny", data_info=dm.data_info, model_args={k: v for k, v in TINY.items() if k != "image_size"})
    b = next(iter(dm.train_dataloader()))
    if kind == "one":
        b = {"image": b["image"][:1], "caption": b["caption"][:1], "neg_caption": b["neg_caption"][:1]}
    else:
        b = {"image": b["image"][:2], "caption": [b["caption"][0]] * 2, "neg_caption": b["neg_caption"][:2]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        loss = task.training_step(b, 0)
    assert torch.isfinite(loss)
    loss.backward()


def test_data_function_words_reach_fda(tmp_path):
    from zoo.data.vlm import SyntheticVLMDataModule
    from zoo.tasks.vlm import VLMTask

    words = tmp_path / "fw.txt"
    words.write_text("the\nof\nzyzzyva\n")
    info = SyntheticVLMDataModule(n_train=8, n_val=4, n_test=4, function_words=str(words)).data_info
    m = VLMTask(arch="vlm-fda-tiny", data_info=info).model  # (the data put zyzzyva in the vocabulary)
    assert m.config.function_words == str(words) and not m.fw_unknown
    ids, _ = m.tokenizer.encode(["the of zyzzyva red a"])
    assert m.fw_table[ids[0, 1:-1]].tolist() == [True, True, True, False, False]  # "a" is not in this list
    with pytest.raises(ValueError, match="disagrees with data.function_words"):
        VLMTask(arch="vlm-fda-tiny", data_info=info, model_args={"function_words": "en"})


def test_fine_tuning_a_word_level_export_on_new_words_warns(tmp_path):
    """A word-level export keeps its vocabulary when fine-tuned: the data's words it lacks read as [UNK],
    and the run says which, instead of training on them silently."""
    from zoo.tasks.vlm import VLMTask

    folder = zoo.export_model(tiny_model(fda=False), tmp_path / "plain")
    info = {"kind": "vlm", "image_size": TINY["image_size"], "vocab": ["red", "circle", "zebra", "giraffe"]}
    with pytest.warns(UserWarning, match=r"2 of the 4 words .*\[UNK\].*\['giraffe', 'zebra'\]"):
        VLMTask(arch="vlm-tiny", pretrained=str(folder), data_info=info)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        VLMTask(arch="vlm-tiny", pretrained=str(folder), data_info={**info, "vocab": ["red", "circle"]})


def test_fine_tuning_an_export_names_a_data_tokenizer_it_does_not_use(tmp_path):
    """data.tokenizer names a Hugging Face folder (coco_minilm.yaml's minilm) while model.pretrained is an export with
    another vocabulary (the shipped word-level vlm-fda-tiny): the export's tokenizer is kept (its embeddings are for
    its ids), so the data's tokenizer was ignored without a word and most caption words read as [UNK]. Reference:
    the two tokenizers on one caption; an export of that folder's own tokenizer is fine-tuned without a word."""
    from zoo.data.vlm import VLMTokenizer
    from zoo.tasks.vlm import VLMTask

    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "the", "of", "on",
                                               "surf", "##board", "wave", "man"]) + "\n", encoding="utf-8")
    word_export = zoo.export_model(tiny_model(fda=False), tmp_path / "word")
    info = {"kind": "vlm", "image_size": TINY["image_size"], "tokenizer": str(bert), "vocab": None}
    with pytest.warns(UserWarning, match=r"data.tokenizer=.*bert.* is not used: the model keeps the tokenizer of"):
        task = VLMTask(arch="vlm-tiny", pretrained=str(word_export), data_info=info)
    cap = ["a man on a surfboard"]
    assert VLMTokenizer.from_folder(bert).encode(cap)[0].tolist() == [[2, 5, 12, 8, 5, 9, 10, 3]]
    assert task.model.tokenizer.encode(cap)[0][0].tolist().count(task.model.tokenizer.unk_id) == 2  # man, surfboard
    tok = VLMTokenizer.from_folder(bert)
    m = VisionLanguageModel(VLMConfig(**{**TINY, "vocab_size": tok.vocab_size, "fda": False}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # most function words are not in this vocabulary
        m.set_tokenizer(tok)
    bert_export = zoo.export_model(m, tmp_path / "bert_export")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        VLMTask(arch="vlm-tiny", pretrained=str(bert_export), data_info=info)
    assert not [w for w in seen if "data.tokenizer" in str(w.message)]


def test_a_users_vocab_size_is_still_the_datas():
    """model_args.vocab_size from a user (not a checkpoint's rebuild) keeps the data's tokenizer and size."""
    from zoo.data.vlm import SyntheticVLMDataModule
    from zoo.tasks.vlm import VLMTask

    info = SyntheticVLMDataModule(n_train=8, n_val=4, n_test=4, image_size=TINY["image_size"]).data_info
    task = VLMTask(arch="vlm-fda-tiny", model_args={**TINY, "vocab_size": 4096}, data_info=info)
    assert task.model.tokenizer is not None and task.model.config.vocab_size == task.model.tokenizer.vocab_size != 4096


def test_similarity_takes_pil_images_paths_and_arrays(tmp_path):
    import numpy as np
    from PIL import Image

    m = tiny_model(seed=3)
    _, caps = scene_batch(4)
    rng = np.random.default_rng(0)
    pil = [Image.fromarray((rng.random((20 + 9 * i, 30, 3)) * 255).astype(np.uint8)).convert(mode)
           for i, mode in enumerate(["RGB", "L", "RGBA"])]
    ramp = (rng.random((24, 24)) * 65535).astype(np.uint16)  # a 16-bit grayscale image (Pillow's I;16)
    pil.append(Image.fromarray(ramp))
    paths = []
    for i, im in enumerate(pil):
        paths.append(tmp_path / f"{i}.png")
        im.save(paths[-1])
    # the reference, written out: RGB (transparency over white, 16 bits scaled to 8), resized to the model's
    # 32 x 32 as the training images are, in [0, 1]
    shown = [pil[0], pil[1].convert("RGB"),
             Image.alpha_composite(Image.new("RGBA", pil[2].size, (255, 255, 255, 255)), pil[2]).convert("RGB"),
             Image.fromarray(np.round(ramp / 257).astype(np.uint8)).convert("RGB")]
    ref = torch.stack([torch.tensor(np.asarray(im.resize((32, 32), Image.BICUBIC)), dtype=torch.float32)
                       .permute(2, 0, 1) / 255 for im in shown])
    want = m.similarity(ref, caps)
    torch.testing.assert_close(m.similarity(pil, caps), want)
    torch.testing.assert_close(m.similarity([str(p) for p in paths], caps), want)
    torch.testing.assert_close(m.similarity(pil[0], caps), want[:1])  # one image
    torch.testing.assert_close(m.similarity(pil, caps[1]), want[:, 1:2])  # one caption, as one image
    torch.testing.assert_close(m.similarity(ref.numpy(), caps), want)  # a [B, 3, S, S] array in [0, 1]
    with pytest.raises(TypeError, match="images must be"):
        m.similarity([1, 2], caps)
    with pytest.raises(FileNotFoundError, match="nope.png not found"):
        m.similarity([tmp_path / "nope.png"], caps)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image .*bad.png"):
        m.similarity([tmp_path / "bad.png"], caps)


def test_similarity_and_forward_refuse_pixels_outside_0_1_and_other_shapes_by_name():
    """Tensors and arrays are the model's pixels as they are: 0..255 floats, mean / std-normalized images and NaN
    gave scores with no word (only uint8 and shapes were refused); the rounding a resize leaves past 1 passes."""
    import numpy as np

    m = tiny_model(seed=3)
    images, caps = scene_batch(2)
    ids, mask = m.tokenize(caps)
    out_of_range = {"0..255 floats": images * 255, "normalized": (images - 0.5) / 0.25,
                    "nan": images.clone().fill_(float("nan"))}
    for name, x in out_of_range.items():
        for call in (lambda x: m.similarity(x, caps), lambda x: m.similarity(x.numpy(), caps),
                     lambda x: m(x, ids, mask), lambda x: m.itc_similarity(x, caps), lambda x: m.itm_score(x, caps)):
            with pytest.raises(ValueError, match=r"pixels in \[0, 1\], got values in .*divide 0..255 pixels by 255"):
                call(x)
    with pytest.raises(ValueError, match=r"floats in \[0, 1\], got torch.uint8 \(divide uint8 pixels by 255\)"):
        m.similarity((images * 255).round().to(torch.uint8).numpy(), caps)
    shapes = {(2, 1, 32, 32): "grayscale, RGBA or other sizes: pass PIL images", (2, 4, 32, 32): "grayscale, RGBA",
              (2, 3, 16, 16): "other sizes", (2, 32, 32, 3): "channels last", (3, 32, 32): r"images\[None\]",
              (32, 32, 3): r"PIL.Image.fromarray"}
    for shape, hint in shapes.items():
        with pytest.raises(ValueError, match=r"similarity: images must be \[B, 3, 32, 32\] .*got shape .*" + hint):
            m.similarity(torch.rand(shape), caps)
    nudged = images.clone()
    nudged[0, 0, 0, 0] = 1.0000001  # float rounding past 1: no other range
    assert torch.isfinite(m.similarity(nudged, caps)).all()
    torch.testing.assert_close(m.similarity(images.double().numpy(), caps), m.similarity(images, caps))
    assert m.similarity(np.zeros((0, 3, 32, 32), dtype=np.float32), caps).shape == (0, 2)


def test_with_fda_copy_keeps_the_train_eval_mode():
    """with_fda(g_init=0) must compute what the plain model computes, also with dropout in the config:
    the copy keeps the plain model's train / eval mode (it came back in train mode)."""
    plain = tiny_model(fda=False, dropout=0.1)  # eval mode
    images, caps = scene_batch(3)
    fda = plain.with_fda(g_init=0.0)
    assert fda.training is False and not any(m.training for m in fda.modules())
    torch.testing.assert_close(fda.similarity(images, caps), plain.similarity(images, caps), rtol=1e-5, atol=1e-5)
    assert plain.train().with_fda().training is True


@pytest.mark.parametrize("start", [0.0009, 0.6])
def test_a_temperature_pushed_out_of_range_comes_back(start):
    # the forward clamps the temperature to [0.001, 0.5]; out there its gradient is exactly zero, so a step
    # that pushed it out could never bring it back. As ALBEF, each training step first clamps it in place.
    import warnings

    from zoo.data.vlm import SyntheticVLMDataModule
    from zoo.tasks.vlm import VLMTask

    dm = SyntheticVLMDataModule(n_train=8, n_val=4, n_test=4, batch_size=4, image_size=32)
    task = VLMTask(arch="vlm-fda-tiny", data_info=dm.data_info, model_args={k: v for k, v in TINY.items() if k != "image_size"})
    b = next(iter(dm.train_dataloader()))
    with torch.no_grad():
        task.model.temp.fill_(start)
    task.on_train_batch_start(b, 0)
    assert task.model.temp.item() == pytest.approx(min(max(start, 0.001), 0.5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        task.training_step(b, 0).backward()
    assert task.model.temp.grad is not None and task.model.temp.grad.abs().item() > 0


def test_similarity_scores_without_dropout_in_train_mode_and_keeps_the_mode():
    """A model with dropout left in train mode (as Lightning leaves it after fit) scores as in eval mode, as STR's
    read and TS's forecast do (it scored with dropout: two calls differed); its mode is restored afterwards."""
    m = tiny_model(seed=3, dropout=0.3)
    images, caps = scene_batch(2)
    want = m.eval().similarity(images, caps)  # reference: eval mode, where dropout is off
    m.train()
    torch.testing.assert_close(m.similarity(images, caps), want)
    assert m.training


def test_similarity_of_an_empty_batch_is_an_empty_matrix():
    """No texts -> [Ni, 0], no images ([] or a [0, 3, S, S] tensor) -> [0, Nt]; the text encoder took min() of an
    empty id tensor and an empty image list was refused as 'not images'."""
    m = tiny_model()
    images, caps = scene_batch(2)
    assert tuple(m.similarity(images, []).shape) == (2, 0)
    assert tuple(m.similarity([], caps).shape) == (0, 2)
    assert tuple(m.similarity(images[:0], caps, score="itm").shape) == (0, 2)


def test_similarity_encodes_images_and_texts_batch_size_at_a_time(tmp_path):
    """similarity() encoded every image (and read every image file) at once, whatever batch_size: its memory grew
    with the gallery (20000 images of 64 px: 1.9 GB over the input's 0.9 GB), batch_size chunked the ITM pairs only.
    The encoders now see at most batch_size rows, and each score equals the pair scored alone."""
    from PIL import Image

    from zoo.data.images import load_image
    from zoo.data.vlm_io import image_tensor

    m = tiny_model()
    images, caps = scene_batch(5)
    seen = {"image": 0, "text": 0}
    m.vit.register_forward_hook(lambda mod, inp, out: seen.__setitem__("image", max(seen["image"], inp[0].shape[0])))
    m.text.register_forward_hook(lambda mod, inp, out: seen.__setitem__("text", max(seen["text"], inp[0].shape[0])))
    paths = []
    for i, x in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray((x.permute(1, 2, 0) * 255).round().byte().numpy()).save(paths[-1])
    pixels = torch.stack([image_tensor(load_image(p), m.config.image_size) for p in paths])
    for score in ("itc+itm", "itm", "itc"):
        for source, ref_images in ((images, images), (paths, pixels)):
            seen.update(image=0, text=0)
            got = m.similarity(source, caps, score=score, batch_size=2)
            assert seen["image"] <= 2 and seen["text"] <= 2, (score, seen)
            want = torch.stack([torch.cat([m.similarity(ref_images[i : i + 1], [c], score=score) for c in caps], 1)[0]
                                for i in range(len(caps))])
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_similarity_and_retrieval_scores_refuse_a_batch_size_below_one():
    """batch_size=-1 skipped the pair-scoring loop and returned torch.empty's unset memory as scores; 0 failed in
    range(). Batch sizes that do score agree with scoring pair by pair (batch_size 1), numpy integers included."""
    import numpy as np

    from zoo.tasks.vlm import retrieval_scores

    m = tiny_model()
    images, caps = scene_batch(3)
    one = m.similarity(images, caps, batch_size=1)
    torch.testing.assert_close(m.similarity(images, caps, batch_size=np.int64(4)), one)
    for bad in (-1, 0, 2.0, True):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            m.similarity(images, caps, batch_size=bad)
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            retrieval_scores(m, images, caps, k=2, batch_size=bad)


@pytest.mark.parametrize("fusion", ["vanilla", "diff"])
def test_torch_compile_text_and_itm_path_is_one_graph_and_matches_eager(fusion):
    """torch.compile: the text encoder's token-id check no longer splits the graph (it read tensor values in
    Python); ITC logits and FDA ITM logits, and their gradients, match eager."""
    import torch._dynamo as dynamo

    m = tiny_model(dropout=0.0, fusion_attn_type=fusion).train()
    images, caps = scene_batch(3)
    ids, mask = m.tokenize(caps)

    def step(images, ids, mask):
        out = m(images, ids, mask)
        return out["logits_per_image"], m.itm_logits(m.encode_text(ids, mask), mask, m.encode_image(images), ids)

    dynamo.reset()
    explained = dynamo.explain(step)(images, ids, mask)
    assert explained.graph_break_count == 0, [str(b.reason) for b in explained.break_reasons]
    params = [p for p in m.parameters() if p.requires_grad]
    want = step(images, ids, mask)
    want_grads = torch.autograd.grad(sum(w.square().sum() for w in want), params, allow_unused=True)
    dynamo.reset()
    got = torch.compile(step, backend="aot_eager")(images, ids, mask)
    got_grads = torch.autograd.grad(sum(g.square().sum() for g in got), params, allow_unused=True)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    for g, w in zip(got_grads, want_grads):
        if w is not None:
            torch.testing.assert_close(g, w)
    dynamo.reset()


@pytest.mark.parametrize("vit_name", ["vit_base_patch16_reg4_gap_256", "vit_small_patch14_reg4_dinov2"])
def test_mean_pooled_image_feature_is_the_mean_of_the_patch_tokens_only(vit_name):
    """A timm ViT with register tokens (and with or without a class token) puts all its prefix tokens first; the
    ITC image feature (pool="mean") is the mean over the (image_size / patch_size)^2 patch tokens, the last ones
    of the sequence. ``[:, 1:]`` averaged registers in (and dropped a patch where there is no class token)."""
    m = tiny_model(vit_name=vit_name)
    images, _ = scene_batch(2)
    n_patches = (TINY["image_size"] // TINY["patch_size"]) ** 2
    with torch.no_grad():
        tokens = m.encode_image(images)
        want = torch.nn.functional.normalize(m.vision_proj(tokens[:, -n_patches:].mean(1)), dim=-1)
        torch.testing.assert_close(m.image_feat(tokens), want)


def test_cls_pooling_needs_a_vit_with_a_class_token():
    """pool="cls" took token 0 whatever it was: a register token (or a patch) of a ViT without a class token."""
    with pytest.raises(ValueError, match="class token"):
        tiny_model(vit_name="vit_base_patch16_reg4_gap_256", pool="cls")
    assert tiny_model(vit_name="vit_small_patch14_reg4_dinov2", pool="cls").vit.has_class_token


def test_text_init_from_a_roberta_folder_keeps_its_positions(tmp_path):
    """RoBERTa numbers positions from pad_token_id + 1 (its first two table rows are never used for a right-padded
    caption); init_text_from_hf copied rows 0.. into the text encoder, which numbers positions from 0: every hidden
    state was silently another one. Reference: transformers' RobertaModel on the same ids."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.RobertaConfig(vocab_size=101, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=48, max_position_embeddings=40, type_vocab_size=2, pad_token_id=1)
    hf = transformers.RobertaModel(cfg, add_pooling_layer=False).eval()
    hf.save_pretrained(tmp_path / "roberta")
    m = VisionLanguageModel(VLMConfig(**{**TINY, **text_config_from_hf(tmp_path / "roberta"), "fusion_heads": 2}))
    m.init_text_from_hf(tmp_path / "roberta")
    m.eval()
    ids = torch.randint(3, 101, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.bool)
    ids[1, 6:], mask[1, 6:] = 1, False  # right padding
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        got = m.encode_text(ids, mask)
    torch.testing.assert_close(got[mask], want[mask], rtol=1e-4, atol=1e-4)


def test_a_from_scratch_text_encoder_starts_its_pad_embedding_at_zero():
    """The word embedding is built with padding_idx = [PAD], which keeps that row out of training; BERT's init
    (transformers' BertModel) zeroes it, ours drew it at random, so FDA's function-word caption (content words
    replaced by [PAD]) fed a frozen random vector for every content word. Reference: transformers' init."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=48, pad_token_id=0)
    hf_pad = transformers.BertModel(cfg).embeddings.word_embeddings.weight[cfg.pad_token_id]
    m = tiny_model()
    pad = m.text.config.pad_token_id
    torch.testing.assert_close(m.text.word_embed.weight[pad], torch.zeros_like(m.text.word_embed.weight[pad]))
    assert torch.count_nonzero(hf_pad) == 0
    assert m.text.word_embed.weight[pad + 1].abs().sum() > 0  # the other rows are drawn as before


def test_scores_of_a_bfloat16_or_float64_model_are_not_rounded():
    """similarity / retrieval_scores of a model cast with .to(torch.bfloat16) / .double() (as Lightning's 'bf16-true'
    / '64-true' cast it): the ITC score is the product of the model's own features computed here in float64 (a
    bfloat16 product rounded cosines to steps of 2^-8, whose ties count against the query in R@K), and a float64
    model's ITM scores are float64 (they were written into a float32 buffer); every score mode gives one dtype."""
    from zoo.tasks.vlm import retrieval_scores

    images, caps = scene_batch(4)
    for dtype, want_dtype, tol in ((torch.bfloat16, torch.float32, 1e-6), (torch.float64, torch.float64, 1e-12)):
        m = tiny_model(seed=3).to(dtype)
        ids, mask = m.tokenize(caps)
        with torch.no_grad():
            img, txt = m.encode_image(images.to(dtype)), m.encode_text(ids, mask)
            want_itc = m.image_feat(img).double() @ m.text_feat(txt, mask).double().T
            lg = torch.stack([m.itm_logits(txt[[j]], mask[[j]], img[[i]], ids[[j]])[0].double()
                              for i in range(4) for j in range(4)])
            want_itm = (lg[:, 1] - lg[:, 0]).view(4, 4)
        got = {s: m.similarity(images.to(dtype), caps, score=s) for s in ("itc", "itm", "itc+itm")}
        assert {g.dtype for g in got.values()} == {want_dtype}
        torch.testing.assert_close(got["itc"].double(), want_itc, rtol=0, atol=tol)
        if dtype == torch.float64:
            torch.testing.assert_close(got["itm"], want_itm, rtol=1e-12, atol=1e-12)
        scores = retrieval_scores(m, images.to(dtype), caps, k=2)
        assert scores["itc"].dtype == want_dtype
        torch.testing.assert_close(scores["itc"].double(), want_itc, rtol=0, atol=tol)


@pytest.mark.parametrize("where", ["model_args", "data"])
def test_fine_tuning_an_export_takes_a_users_function_word_list(tmp_path, where):
    """Fine-tuning an FDA export with the user's function-word file (model_args.function_words or
    data.function_words) was refused as an architecture mismatch ("drop the overrides ['function_words']", even
    when only the data named the list). The list marks ids of the export's (kept) tokenizer: FDA now marks exactly
    the user's words there, and [CLS] / [SEP]."""
    from zoo.tasks.vlm import VLMTask

    folder = zoo.export_model(tiny_model(fda=True, seed=2), tmp_path / "fda")
    words = tmp_path / "my words.txt"
    words.write_text("# only these\nthe\nOf\nabove\n", encoding="utf-8")
    info = {"kind": "vlm", "image_size": TINY["image_size"]}
    kw = {"model_args": {"function_words": str(words)}} if where == "model_args" else {}
    if where == "data":
        info["function_words"] = str(words)
    task = VLMTask(arch="vlm-fda-tiny", pretrained=str(folder), data_info=info, **kw)
    m = task.model
    tok = m.tokenizer
    expected = {tok.token_to_id(w) for w in ("the", "of", "above")} | {tok.cls_id, tok.sep_id}
    assert set(m.fw_table.nonzero().flatten().tolist()) == expected
    assert m.config.function_words == str(words)
    before = zoo.load_pretrained(folder)
    for k, v in before.state_dict().items():  # every weight kept; only the function-word marks differ
        if k != "fw_table":
            assert torch.equal(m.state_dict()[k], v), k


def test_fine_tuning_an_export_on_images_of_another_size_names_the_data_setting():
    """The shipped 64px model fine-tuned with data.image_size 96: refused, naming the data setting and the size to
    set (the compatibility check told the user to "drop the overrides ['image_size']", which they never set)."""
    from zoo.data.vlm import SyntheticVLMDataModule
    from zoo.hub import read_export_config, resolve_pretrained
    from zoo.tasks.vlm import VLMTask

    size = read_export_config(resolve_pretrained("vlm-fda-tiny"))["config"]["image_size"]
    info = SyntheticVLMDataModule(n_train=8, n_val=4, n_test=4, image_size=size + 32).data_info
    with pytest.raises(ValueError, match=rf"reads {size}px images, the data {size + 32}px; set data.image_size to {size}"):
        VLMTask(arch="vlm-fda-tiny", pretrained="vlm-fda-tiny", data_info=info)


def test_testing_a_checkpoint_on_images_of_another_size_names_the_data_setting(tmp_path):
    """`zoo test --ckpt_path <32px run> --data.image_size 48`: refused naming data.image_size and the checkpoint's
    size (it failed inside Lightning's load with a bare "size mismatch for model.vit.pos_embed")."""
    import lightning as L

    from zoo.data.vlm import SyntheticVLMDataModule
    from zoo.tasks.vlm import VLMTask

    arch = {k: v for k, v in TINY.items() if k != "image_size"}

    def task_and_data(size):
        dm = SyntheticVLMDataModule(n_train=4, n_val=4, n_test=4, image_size=size, batch_size=4)
        return VLMTask(arch="vlm-tiny", data_info=dm.data_info, model_args=arch), dm

    def trainer():
        return L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0, default_root_dir=tmp_path)

    task, dm = task_and_data(32)
    t = trainer()
    t.fit(task, datamodule=dm)
    t.save_checkpoint(tmp_path / "run.ckpt")
    task48, dm48 = task_and_data(48)
    with pytest.raises(ValueError, match=r"trained on 32px images.*data.image_size 48.*set data.image_size to 32"):
        trainer().test(task48, datamodule=dm48, ckpt_path=tmp_path / "run.ckpt")
    # the size it was trained at still tests
    task32, dm32 = task_and_data(32)
    trainer().test(task32, datamodule=dm32, ckpt_path=tmp_path / "run.ckpt")


@pytest.mark.parametrize("n", [1, 2])
def test_a_max_text_len_with_no_room_for_a_word_is_refused(n):
    """max_text_len 1 or 2 left no room between [CLS] and [SEP] (the tokenizer's own rule: max_len >= 3): every
    caption became "[SEP]" or "[CLS] [SEP]", all alike, silently (set_tokenizer set the limit past the check)."""
    with pytest.raises(ValueError, match=r"max_text_len.*>= 3"):
        VLMConfig(**{**TINY, "max_text_len": n})
    m = tiny_model(max_text_len=3)  # the smallest that holds a word: [CLS] word [SEP]
    ids, _ = m.tokenize(["red circle"])
    assert m.tokenizer.decode(ids[0]) == "[CLS] red [SEP]"


def test_training_step_itc_and_itm_hard_negatives_match_the_written_out_losses(monkeypatch):
    """One training step on a batch of one-caption items where two images appear twice (CSV / COCO data: paths p0,
    p1 repeated with other captions). Reference, written out from the encoders' features: ITC = symmetric InfoNCE
    over cos / temp with every pair of one image path a positive (target mass shared); ITM (ALBEF) = one negative
    text per image and one negative image per text, drawn with probability softmax(cos / temp) over the batch with
    the positives (same path) zeroed, and the 2-way cross-entropy of the B matched pairs (label 1) and the 2B drawn
    pairs (label 0), each pair's logits computed on its own."""
    from zoo.data.vlm import SyntheticVLMDataModule
    from zoo.tasks.vlm import VLMTask

    dm = SyntheticVLMDataModule(n_train=8, n_val=4, n_test=4, batch_size=4, image_size=32)
    torch.manual_seed(0)
    task = VLMTask(arch="vlm-fda-tiny", data_info=dm.data_info, model_args={k: v for k, v in TINY.items() if k != "image_size"})
    m = task.model.eval()
    with torch.no_grad():
        m.temp.fill_(0.2)
    pics, caps = scene_batch(6)
    paths = ["p0", "p1", "p0", "p2", "p1", "p3"]
    img_of = {"p0": 0, "p1": 1, "p2": 2, "p3": 3}
    batch = {"image": pics[[img_of[p] for p in paths]], "caption": caps, "image_id": paths}
    B = len(caps)
    pos = torch.tensor([[a == b for b in paths] for a in paths])
    draws, logged = [], {}
    real_multinomial = torch.multinomial

    def multinomial(w, n, *a, **k):
        out = real_multinomial(w, n, *a, **k)
        draws.append((w.clone(), out.clone()))
        return out

    monkeypatch.setattr(torch, "multinomial", multinomial)
    monkeypatch.setattr(task, "log_dict", lambda d, **kw: logged.update({k: v.detach() for k, v in d.items()}))
    for step in range(8):
        draws.clear()
        torch.manual_seed(step)
        with torch.no_grad():
            task.training_step(batch, 0)
        (w_i2t, neg_txt), (w_t2i, neg_img) = draws[0], draws[1]
        neg_txt, neg_img = neg_txt.squeeze(1), neg_img.squeeze(1)
        for i in range(B):
            assert paths[neg_txt[i]] != paths[i] and paths[neg_img[i]] != paths[i], (step, i)
        with torch.no_grad():
            ids, mask = m.tokenize(caps)
            img, txt = m.encode_image(batch["image"]), m.encode_text(ids, mask)
            fi, ft = m.image_feat(img), m.text_feat(txt, mask)
            sim = (fi @ ft.T / m.temp).double()
            # ITC
            itc = 0.0
            for i in range(B):
                P = pos[i].nonzero().flatten().tolist()
                itc += 0.5 * sum(torch.logsumexp(sim[i], 0) - sim[i, j] for j in P) / len(P)
                itc += 0.5 * sum(torch.logsumexp(sim[:, i], 0) - sim[j, i] for j in P) / len(P)
            torch.testing.assert_close(logged["train/itc"].double(), itc / B, rtol=1e-5, atol=1e-6)
            # sampling weights: softmax over the row, positives zeroed
            for w, s in ((w_i2t, sim), (w_t2i, sim.T)):
                want = s.softmax(1).masked_fill(pos, 0.0)
                torch.testing.assert_close((w / w.sum(1, keepdim=True)).double(), want / want.sum(1, keepdim=True),
                                           rtol=1e-4, atol=1e-7)
            # ITM from the drawn pairs, one pair at a time
            pairs = [(i, i, 1) for i in range(B)] + [(int(neg_img[t]), t, 0) for t in range(B)] \
                + [(i, int(neg_txt[i]), 0) for i in range(B)]
            itm = 0.0
            for i, t, label in pairs:
                lg = m.itm_logits(txt[t : t + 1], mask[t : t + 1], img[i : i + 1], ids[t : t + 1])[0].double()
                itm += torch.logsumexp(lg, 0) - lg[label]
            torch.testing.assert_close(logged["train/itm"].double(), itm / len(pairs), rtol=1e-5, atol=1e-6)


def test_fda_over_a_plain_minilm_model_starts_at_its_function_and_its_export_scores_the_same(minilm_dir, tmp_path):
    """A plain (no-FDA) model whose text encoder is the real all-MiniLM-L6-v2 (WordPiece, 12 fusion heads): with_fda
    keeps every weight, so at g = 0 it scores every pair as the plain model (README: FDA as a fine-tuning plug-in), at
    g = 1 (the paper's start) it acts; the FDA model's export loads back with its tokenizer, function-word table,
    gates and the same scores. Reference: the plain model's own scores; the function words of the captions by hand."""
    from zoo.data.vlm import VLMTokenizer

    torch.manual_seed(0)
    plain = VisionLanguageModel(VLMConfig(**{**TINY, **text_config_from_hf(minilm_dir), "fusion_heads": 12,
                                             "max_text_len": 32, "fda": False}))
    plain.set_tokenizer(VLMTokenizer.from_folder(minilm_dir))
    plain.init_text_from_hf(minilm_dir)
    plain.eval()
    images, _ = scene_batch(3)
    caps = ["A dog in an inflatable raft.", "two people on the beach", "the red bus next to a tree"]
    ids, _ = plain.tokenize(caps[:1])
    tok = plain.tokenizer
    words = [tok.backend.id_to_token(i) for i in ids[0].tolist()]
    assert words == ["[CLS]", "a", "dog", "in", "an", "in", "##fl", "##atable", "raft", ".", "[SEP]"]
    kept = [w if w in ("[CLS]", "a", "in", "an", "[SEP]") and j != 5 else "[PAD]" for j, w in enumerate(words)]
    fda0 = plain.with_fda(g_init=0.0)
    fw_ids = torch.tensor([[tok.backend.token_to_id(w) for w in kept]])
    torch.testing.assert_close(fda0.fw_states(ids), fda0.text.embed(fw_ids))
    want = plain.similarity(images, caps)
    torch.testing.assert_close(fda0.similarity(images, caps), want, rtol=1e-5, atol=1e-5)
    fda1 = plain.with_fda()
    assert [layer.cross.g.item() for layer in fda1.fusion] == [1.0, 1.0]
    got = fda1.similarity(images, caps)
    assert (got - want).abs().max() > 1e-4
    back = zoo.load_pretrained(zoo.export_model(fda1, tmp_path / "minilm_fda"))
    assert back.config.fda and back.tokenizer.vocab_size == 30522
    assert torch.equal(back.fw_table, fda1.fw_table)
    for k, v in fda1.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    assert torch.equal(back.similarity(images, caps), got)
