"""Decoder-only LM: shapes, cache decoding, registry sizes, bad input."""

import pytest
import torch

import zoo
from zoo.models.lm import DiffTransformerLM, LMConfig


def tiny(attn="diff", **kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=50, dim=32, n_layers=2, n_heads=2, max_seq_len=64, attn_type=attn)
    cfg.update(kw)
    return DiffTransformerLM(LMConfig(**cfg)).eval()


@pytest.mark.parametrize("attn", ["diff", "vanilla", "diff_v2"])
def test_cached_greedy_decoding_matches_full_recompute(attn):
    model = tiny(attn, n_heads=4, n_kv_heads=2)
    prompt = torch.randint(0, 50, (2, 5))
    out = model.generate(prompt, max_new_tokens=8, temperature=0)
    # Reference: no cache, recompute the whole prefix at each step.
    ids = prompt
    for _ in range(8):
        nxt = model(ids)[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], 1)
    assert torch.equal(out, ids)


def test_generation_fills_the_window_plus_the_token_never_fed_back():
    """Prompt + max_new_tokens = max_seq_len + 1: every position the model reads is within max_seq_len (the last
    new token is never fed back), as transformers' generate allows (tests/convert/test_hf_families.py); it was
    refused as exceeding max_seq_len. Reference: greedy decoding by full recompute over at most 16 positions."""
    model = tiny(max_seq_len=16)
    prompt = torch.randint(0, 50, (2, 6))
    ids = prompt
    for _ in range(11):
        nxt = model(ids)[:, -1].argmax(-1, keepdim=True)  # the model refuses more than 16 positions itself
        ids = torch.cat([ids, nxt], 1)
    assert ids.shape == (2, 17)
    assert torch.equal(model.generate(prompt, max_new_tokens=11, temperature=0, eos_id=-1), ids)
    with pytest.raises(ValueError, match=r"prompt \(6 tokens\) \+ max_new_tokens \(12\) exceeds .*at most 5 prompt"):
        model.generate(prompt, max_new_tokens=12, temperature=0)
    assert torch.equal(model.generate(ids[:, :16], max_new_tokens=0), ids[:, :16])  # a full window, nothing new
    with pytest.raises(ValueError, match=r"prompt \(17 tokens\) \+ max_new_tokens \(0\) exceeds .*at most 16"):
        model.generate(ids, max_new_tokens=0)


def test_generation_runs_one_forward_per_fed_token():
    """max_new_tokens new tokens need the prompt's forward and one per token fed back: the last token is never fed
    back (an extra forward computed logits nobody read: max_new_tokens=1 cost two)."""
    model = tiny()
    calls = []
    model.register_forward_hook(lambda mod, args, out: calls.append((tuple(args[0].shape), tuple(out.shape))))
    prompt = torch.randint(0, 50, (1, 5))
    for n in (1, 4):
        calls.clear()
        model.generate(prompt, max_new_tokens=n, temperature=0)
        assert calls == [((1, 5), (1, 1, 50))] + [((1, 1), (1, 1, 50))] * (n - 1)


def test_inference_apis_give_every_submodule_its_own_mode_back():
    """A model in train mode with one part kept in eval on purpose (a frozen block): generate, STR read, VLM
    similarity and TS forecast give each submodule back its own mode (model.train(was_training) set them all)."""
    import numpy as np
    import pandas as pd

    lm = tiny()
    str_model = zoo.load_pretrained("str-diff-tiny")
    vlm = zoo.load_pretrained("vlm-fda-tiny")
    ts = zoo.load_pretrained("ts-itransformer-diff-etth1")
    frame = pd.DataFrame({"date": pd.date_range("2018-01-01", periods=96, freq="h").astype(str),
                          **{c: np.zeros(96) for c in ts.meta["columns"]}})
    calls = [
        (lm, lambda: lm.generate(torch.randint(0, 50, (1, 3)), max_new_tokens=2, temperature=0)),
        (str_model, lambda: str_model.read(np.full((32, 128), 0.5, dtype=np.float32))),
        (vlm, lambda: vlm.similarity(torch.rand(1, 3, 64, 64), ["a red circle"])),
        (ts, lambda: ts.forecast(frame)),
    ]
    for model, call in calls:
        model.train()
        frozen = list(model.children())[0].eval()
        call()
        assert model.training and not frozen.training
        assert all(m.training for m in model.modules() if m is not frozen and not any(m is x for x in frozen.modules()))


def test_causality_future_tokens_do_not_change_past_logits():
    model = tiny()
    a = torch.randint(0, 50, (1, 12))
    b = a.clone()
    b[0, 8:] = (b[0, 8:] + 1) % 50
    assert torch.allclose(model(a)[:, :8], model(b)[:, :8], atol=1e-6)
    assert not torch.allclose(model(a)[:, 8:], model(b)[:, 8:], atol=1e-6)


def test_padding_mask_hides_padded_keys():
    model = tiny()
    ids = torch.randint(0, 50, (1, 10))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], 1)  # left padding
    mask = torch.cat([torch.zeros(1, 3), torch.ones(1, 10)], 1)
    # RoPE is relative, so shifting all real tokens by 3 positions leaves their logits unchanged.
    ref = model(ids)
    got = model(padded, attention_mask=mask)[:, 3:]
    assert torch.allclose(ref, got, atol=1e-4)


def test_weight_tying_and_param_parity():
    d, v = zoo.create_model("lm-diff-tiny"), zoo.create_model("lm-vanilla-tiny")
    assert d.lm_head.weight is d.embed.weight
    cfg = d.config
    head = cfg.dim // cfg.n_heads
    extra = cfg.n_layers * (4 * (head // 2) + head)  # lambda vectors + subln weight per layer
    assert d.num_params() - v.num_params() == extra


def _closed_form_params(dim, layers, vocab, hidden):
    attn = 4 * dim * dim
    mlp = 3 * dim * hidden
    norms = 2 * dim
    return vocab * dim + layers * (attn + mlp + norms) + dim


@pytest.mark.parametrize("name,approx", [("lm-diff-830m", 830e6), ("lm-diff-1.4b", 1.4e9), ("lm-vanilla-830m", 830e6)])
def test_paper_sizes_on_meta(name, approx):
    with torch.device("meta"):
        m = zoo.create_model(name)
    c = m.config
    expected = _closed_form_params(c.dim, c.n_layers, c.vocab_size, c.mlp_hidden)
    if c.attn_type == "diff":
        head = c.dim // c.n_heads
        expected += c.n_layers * (4 * (head // 2) + head)
    assert m.num_params() == expected
    assert abs(m.num_params() - approx) / approx < 0.03


def test_bad_input_errors():
    model = tiny()
    with pytest.raises(ValueError, match="exceeds the model's max_seq_len 64"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="tokenizer does not match"):
        model(torch.full((1, 4), 50))
    with pytest.raises(ValueError, match="unknown attention type 'difff'.*known types"):
        LMConfig(attn_type="difff")
    with pytest.raises(ValueError, match="unknown model 'lm-diff-huge'"):
        zoo.create_model("lm-diff-huge")
    with pytest.raises(ValueError, match="text prompts need a tokenizer"):
        model.generate("hi")


def test_sampling_respects_top_k():
    model = tiny()
    prompt = torch.randint(0, 50, (1, 4))
    logits = model(prompt)[:, -1]
    allowed = set(torch.topk(logits, 3, dim=-1).indices[0].tolist())
    for seed in range(20):
        tok = model.generate(prompt, max_new_tokens=1, temperature=1.5, top_k=3, seed=seed)[0, -1].item()
        assert tok in allowed


def test_attn_args_reach_the_attention_layer():
    m = zoo.create_model("lm-diff-tiny", attn_type="gda", n_heads=4, attn_args={"signal_ratio": 2})
    assert all(layer.attn.n_noise_heads == 2 for layer in m.layers)
    with pytest.raises(TypeError, match="unexpected keyword argument 'signal_ratio'"):
        zoo.create_model("lm-diff-tiny", attn_args={"signal_ratio": 2})  # plain diff has no such knob


def _fed_prompt(model, prompt):
    """The token ids ``generate`` feeds the model for ``prompt`` (its first embedding call)."""
    seen = []
    handle = model.embed.register_forward_pre_hook(lambda mod, args: seen.append(args[0].tolist()))
    try:
        model.generate(prompt, max_new_tokens=1, temperature=0)
    finally:
        handle.remove()
    return seen[0][0]


def test_text_prompt_is_fed_as_the_training_stream_holds_it():
    """Training streams are documents joined by eos, never a BOS; a prompt must look like that."""
    from zoo.data.text import encode_corpus
    from zoo.data.tokenizers import BPETokenizer, ByteTokenizer

    corpus = ["the king speaks to a fool\n", "and his horse in thy house of good night\n"] * 20
    for tok in (ByteTokenizer(), BPETokenizer.train(corpus, 280)):
        model = tiny(vocab_size=tok.vocab_size)
        model.tokenizer = tok
        prompt = "and his horse"
        # reference 1: the tokenizer's own encoding, no specials
        assert _fed_prompt(model, prompt) == tok.encode(prompt)
        # reference 2: the corpus layout -- after the separator, a document's tokens follow directly
        stream = encode_corpus(tok, ["a fool", prompt]).tolist()
        sep = stream.index(tok.eos_id)
        assert _fed_prompt(model, prompt) == stream[sep + 1:]
        assert tok.bos_id not in stream
        # an empty prompt is "a new document starts": the separator that precedes one in the stream
        assert _fed_prompt(model, "") == [stream[sep]] == [tok.eos_id]


def test_hf_tokenizer_whose_template_adds_bos_keeps_it(tmp_path):
    """A converted Llama-style tokenizer ("<s> $A" post-processor) was pretrained with BOS: keep it."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    from zoo.data.tokenizers import HFTokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 40)}}
    for template, expect_bos in (("<s> $A", True), (None, False)):
        backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        if template:
            backend.post_processor = processors.TemplateProcessing(single=template, special_tokens=[("<s>", 1)])
        tok = HFTokenizer(backend, bos_id=1, eos_id=2, pad_id=None)
        model = tiny(vocab_size=40)
        model.tokenizer = tok
        words = [5, 17, 3]
        text = " ".join(f"w{i}" for i in words)
        assert _fed_prompt(model, text) == ([1] if expect_bos else []) + words


def test_text_completion_keeps_the_leading_space_a_metaspace_decoder_strips():
    """Llama / Mistral tokenizers decode with Metaspace, which drops the first token's leading space. The
    completion of "Hello" by "▁world ▁world" is " world world" (Hugging Face's pipeline with
    return_full_text=False), not "world world" (the continuation decoded alone)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from zoo.data.tokenizers import HFTokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "\u2581Hello": 3, "\u2581world": 4, "!": 5}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    backend.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    model = tiny(vocab_size=6)
    model.tokenizer = HFTokenizer(backend, bos_id=1, eos_id=2, pad_id=None)
    real = model.forward

    def forward(ids, **kw):  # "▁world" is always the greedy choice
        logits = real(ids, **kw) * 0
        logits[..., 4] = 10.0
        return logits

    model.forward = forward
    assert model.generate("Hello", max_new_tokens=2, temperature=0) == " world world"


def test_top_k_zero_or_none_samples_the_whole_vocabulary():
    """Hugging Face's convention: top_k=0 disables top-k; reference is a plain multinomial draw."""
    model = tiny()
    prompt = torch.randint(0, 50, (1, 4))
    probs = torch.softmax(model(prompt)[:, -1].float() / 1.3, dim=-1)
    for top_k in (0, None, 50, 1000):
        for seed in range(5):
            ref = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(seed)).item()
            got = model.generate(prompt, max_new_tokens=1, temperature=1.3, top_k=top_k, seed=seed)[0, -1].item()
            assert got == ref
    with pytest.raises(ValueError, match="top_k must be a positive integer, or 0 / null"):
        model.generate(prompt, max_new_tokens=1, top_k=-1)
    from zoo.tasks import LanguageModelTask

    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        LanguageModelTask(model_args={"dim": 16, "n_layers": 1, "n_heads": 2}, top_k=-5)


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, None, 0.9), (0.7, None, 0.5), (1.3, 20, 0.8),
                                                       (1.0, 5, 0.99), (2.0, None, 0.0), (1.0, None, 1.0)])
def test_top_k_and_top_p_filtering_match_transformers_warpers(temperature, top_k, top_p):
    """filter_logits keeps the tokens Hugging Face's TemperatureLogitsWarper -> TopKLogitsWarper ->
    TopPLogitsWarper chain keeps (its order in generate), with the same scaled logits."""
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

    from zoo.models.lm import filter_logits

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50, generator=g) * 3
    ref = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k:
        ref = TopKLogitsWarper(top_k)(None, ref)
    if top_p < 1.0:
        ref = TopPLogitsWarper(top_p)(None, ref)
    got = filter_logits(logits, temperature, top_k, top_p)
    assert torch.equal(torch.isinf(got), torch.isinf(ref))
    assert torch.allclose(got[~torch.isinf(got)], ref[~torch.isinf(ref)])
    assert 0 < int((~torch.isinf(got)).sum(-1).min())


def test_generate_samples_only_from_the_nucleus_and_checks_top_p():
    """generate(top_p=...) draws every token from the nucleus of the model's own next-token distribution; top_p 0
    keeps the likeliest token (greedy); values outside [0, 1] are named, in generate and the task's config."""
    model = tiny()
    prompt = torch.randint(0, 50, (1, 4))
    probs = torch.softmax(model(prompt)[0, -1].float() / 0.1, dim=-1)  # temperature 0.1: a peaked distribution
    order = probs.argsort(descending=True)
    n_keep = int((probs[order].cumsum(0) - probs[order] < 0.6).sum())
    nucleus = set(order[:n_keep].tolist())
    assert 1 < n_keep < 50
    drawn = {model.generate(prompt, max_new_tokens=1, temperature=0.1, top_p=0.6, seed=s)[0, -1].item()
             for s in range(40)}
    assert drawn <= nucleus and len(drawn) > 1
    greedy = model.generate(prompt, max_new_tokens=5, temperature=0)
    assert torch.equal(model.generate(prompt, max_new_tokens=5, temperature=1.0, top_p=0.0, seed=3), greedy)
    for bad in (-0.1, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match=r"top_p must be a number in \[0, 1\]"):
            model.generate(prompt, max_new_tokens=1, top_p=bad)
    from zoo.tasks import LanguageModelTask

    with pytest.raises(ValueError, match="top_p must be a number"):
        LanguageModelTask(model_args={"dim": 16, "n_layers": 1, "n_heads": 2}, top_p=2)


def test_generate_stops_every_row_at_eos_and_pads_finished_rows():
    """Token-id prompts stop at the tokenizer's eos too; a row that ended keeps eos while the others go on."""
    torch.manual_seed(0)
    m = zoo.create_model("lm-diff-tiny", dim=32, n_layers=1, n_heads=2, max_seq_len=40, vocab_size=259).eval()
    from zoo.data.tokenizers import ByteTokenizer

    m.tokenizer = ByteTokenizer()
    eos = m.tokenizer.eos_id
    # make eos the greedy choice right after the token 7 only
    real = m.forward

    def forward(ids, **kw):
        logits = real(ids, **kw)
        biased = torch.zeros_like(logits)
        biased[..., 5] = 10.0  # otherwise the token 5
        last = ids[:, -logits.shape[1]:]  # the positions whose logits were kept
        biased[..., eos] = torch.where(last[..., None] == 7, 20.0, 0.0)[..., 0]
        return logits * 0 + biased

    m.forward = forward
    prompts = torch.tensor([[7, 7], [3, 3]])  # row 0 ends at once, row 1 never does
    out = m.generate(prompts, max_new_tokens=4, temperature=0)
    assert out[0, 2:].tolist() == [eos] * 4  # ended, then held at eos
    assert out[1, 2:].tolist() == [5] * 4
    row0 = m.generate(prompts[:1], max_new_tokens=4, temperature=0)
    assert row0.shape == (1, 3) and row0[0, -1] == eos  # a tensor prompt stops at eos by default


def test_generation_stops_at_any_eos_id_a_converted_config_lists(tmp_path):
    """Llama 3 instruct lists several eos ids (generation_config.json / config.json "eos_token_id": [...]);
    transformers' generate stops at any of them, so must zoo's, also after the tokenizer is saved and
    loaded with an export. A finished row is padded with the tokenizer's own eos."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers

    from zoo.data.tokenizers import HFTokenizer, load_tokenizer

    vocab = {"<unk>": 0, "<|begin|>": 1, "<|end_of_text|>": 2, "<|eot_id|>": 3, **{f"w{i}": i for i in range(4, 20)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    src = tmp_path / "hf"
    src.mkdir()
    backend.save(str(src / "tokenizer.json"))
    (src / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|begin|>", "eos_token": "<|end_of_text|>"}))
    (src / "config.json").write_text(json.dumps({"eos_token_id": 2}))
    (src / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 3]}))
    tok = HFTokenizer.from_hf_folder(src)
    assert tok.eos_id == 2 and tok.stop_ids == (2, 3)
    tok.save(tmp_path / "saved")
    assert load_tokenizer(tmp_path / "saved").stop_ids == (2, 3)

    model = tiny(vocab_size=20)
    model.tokenizer = load_tokenizer(tmp_path / "saved")
    real = model.forward

    def forward(ids, **kw):  # after w5 the greedy choice is <|eot_id|>, otherwise w9
        logits = real(ids, **kw) * 0
        logits[..., 9] = 5.0
        logits[..., 3] = torch.where(ids == 5, 10.0, 0.0)
        return logits

    model.forward = forward
    out = model.generate(torch.tensor([[5], [4]]), max_new_tokens=3, temperature=0)
    assert out[0].tolist() == [5, 3, 2, 2]  # stopped at <|eot_id|>, then padded with eos
    assert out[1].tolist() == [4, 9, 9, 9]
    assert model.generate(torch.tensor([[5]]), max_new_tokens=3, temperature=0).tolist() == [[5, 3]]
    # an explicit eos_id still decides
    assert model.generate(torch.tensor([[5]]), max_new_tokens=2, temperature=0, eos_id=2).tolist() == [[5, 3, 9]]
    with pytest.raises(ValueError, match="eos_id must be a token id or a list"):
        model.generate(torch.tensor([[5]]), max_new_tokens=2, eos_id=["x"])
    assert model.generate(torch.tensor([[5]]), max_new_tokens=2, temperature=0, eos_id=torch.tensor(3)).tolist() == [[5, 3]]
    # an eos id the tokenizer does not have (a config listing ids past its vocabulary) is dropped with a warning
    (src / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 3, 500]}))
    with pytest.warns(UserWarning, match=r"eos_token_id \[500\] is not a token .*does not stop on it"):
        assert HFTokenizer.from_hf_folder(src).stop_ids == (2, 3)


def test_a_prompt_with_half_a_character_is_named():
    """A lone surrogate ("\ud83d", an emoji cut in two, from JSON) crashed deep in the tokenizer with an unnamed
    UnicodeEncodeError; Python's own UTF-8 encoder refuses it the same way (the reference). A whole pair is fine."""
    from zoo.data.tokenizers import ByteTokenizer

    model = tiny(vocab_size=ByteTokenizer().vocab_size)
    model.tokenizer = ByteTokenizer()
    with pytest.raises(UnicodeEncodeError):
        "ab\ud83d".encode("utf-8")
    for prompt in ("ab\ud83d", ["ok", "ab\ud83d"]):
        with pytest.raises(ValueError, match=r"lone surrogate \\ud83d at character 2"):
            model.generate(prompt, max_new_tokens=1)
    assert isinstance(model.generate("ab\U0001F600", max_new_tokens=1, temperature=0), str)


def test_a_list_of_text_prompts_gives_one_completion_each():
    """generate(["a", "longer prompt"]) as HF's pipeline takes a list: prompts of any lengths, one completion each,
    equal to the single calls (prompt i sampled with seed + i); a mixed list is no text batch."""
    from zoo.data.tokenizers import ByteTokenizer

    model = tiny(vocab_size=259)
    model.tokenizer = ByteTokenizer()
    prompts = ["a", "a much longer prompt"]
    got = model.generate(prompts, max_new_tokens=4, temperature=1.0, seed=7)
    assert got == [model.generate(p, max_new_tokens=4, temperature=1.0, seed=7 + i) for i, p in enumerate(prompts)]
    assert all(isinstance(t, str) for t in got)
    with pytest.raises(ValueError, match=r"text prompts \(a list of str\) or token ids \(ints\), not both"):
        model.generate(["a", 3], max_new_tokens=2)


def test_generate_refuses_bad_settings_and_prompts_by_name():
    """Negative max_new_tokens / temperature and prompts that are not one sequence or a [B, T] batch
    are named, not turned into a KV-cache overflow, silent greedy decoding or an unpacking error."""
    model = tiny()
    prompt = torch.randint(0, 50, (1, 4))
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 0, got -1"):
        model.generate(prompt, max_new_tokens=-1)
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 0, got 2.5"):
        model.generate(prompt, max_new_tokens=2.5)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        model.generate(prompt, max_new_tokens=1, temperature=-1.0)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        model.generate(prompt, max_new_tokens=1, temperature=float("nan"))
    with pytest.raises(ValueError, match=r"\[batch, T\].*got shape \(1, 1, 4\)"):
        model.generate(prompt[None], max_new_tokens=1)
    with pytest.raises(ValueError, match=r"a list of 2 id lists.*torch.tensor\(rows\), here \[2, 2\]"):
        model.generate([[1, 2], [3, 4]], max_new_tokens=1)
    with pytest.raises(ValueError, match=r"prompt rows of different lengths \(\[1, 2\] tokens\).*attention_mask"):
        model.generate([[1, 2], [3]], max_new_tokens=1)
    with pytest.raises(ValueError, match="integer token ids"):
        model.generate(prompt.float(), max_new_tokens=1)
    assert torch.equal(model.generate(prompt, max_new_tokens=0), prompt)  # zero new tokens: the prompt
    from zoo.tasks import LanguageModelTask

    for bad in ({"max_new_tokens": -3}, {"temperature": -0.5}):
        with pytest.raises(ValueError, match="max_new_tokens must be|temperature must be"):
            LanguageModelTask(model_args={"dim": 16, "n_layers": 1, "n_heads": 2}, **bad)


def test_transformers_generate_keywords_name_what_zoo_takes_instead():
    """transformers' ``generate(input_ids=..., do_sample=False, max_length=..., eos_token_id=..., pad_token_id=...,
    num_return_sequences=...)``, as a Hugging Face user writes it, met Python's bare "unexpected keyword argument"
    (``input_ids=``: "missing 1 required positional argument: 'prompt'"; a tokenizer's whole output as the prompt:
    "too many dimensions 'str'"). Each is named with zoo's way, the message lists the keywords ``generate`` does take
    (those of its signature), and what the do_sample hint promises holds: temperature=0 is the greedy decoding (the
    argmax of a full recompute)."""
    import inspect
    import re

    model = tiny()
    ids = torch.randint(0, 50, (2, 4))
    hints = {"do_sample": r"do_sample=False is temperature=0", "max_length": r"pass max_new_tokens",
             "eos_token_id": r"pass eos_id", "pad_token_id": r"filled with the first eos_id",
             "num_return_sequences": r"repeat_interleave\(n, dim=0\)", "input_ids": r"the first argument, prompt"}
    for kw, hint in hints.items():
        with pytest.raises(TypeError, match=rf"unexpected keyword argument\(s\) \['{kw}'\].*{hint}"):
            if kw == "input_ids":
                model.generate(input_ids=ids, max_new_tokens=2)
            else:
                model.generate(ids, max_new_tokens=2, **{kw: 1})
    with pytest.raises(TypeError) as err:
        model.generate(ids, repetition_penalty=1.2, top_P=0.9)
    taken = [n for n, p in inspect.signature(model.generate).parameters.items()
             if n != "prompt" and p.kind is p.POSITIONAL_OR_KEYWORD]
    listed = re.search(r"\['repetition_penalty', 'top_P'\]; it takes the prompt and \[(.*?)\]", str(err.value))
    assert listed and sorted(listed.group(1).replace("'", "").split(", ")) == sorted(taken)
    with pytest.raises(TypeError, match="needs a prompt"):
        model.generate(max_new_tokens=2)
    from transformers import BatchEncoding  # what a transformers tokenizer returns: was "too many dimensions 'str'"

    enc = BatchEncoding({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    with pytest.raises(ValueError, match=r"a mapping with keys \['input_ids', 'attention_mask'\].*enc\['input_ids'\]"):
        model.generate(enc, max_new_tokens=2)
    full = ids
    for _ in range(3):
        full = torch.cat([full, model(full)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(model.generate(ids, max_new_tokens=3, temperature=0, eos_id=[]), full)


def test_sampling_without_seed_follows_the_global_torch_seed():
    """seed=None draws from torch's global RNG (as Hugging Face's generate), so torch.manual_seed / the
    configs' seed_everything make sampled generations (and `zoo predict`) reproducible."""
    model = tiny()
    prompt = torch.randint(0, 50, (2, 3))
    runs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        runs.append(model.generate(prompt, max_new_tokens=12, temperature=1.5))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_generation_never_samples_embedding_rows_past_the_tokenizer():
    """Converted Qwen2 / Llama checkpoints pad the embedding past the tokenizer's last id; those rows are
    no token, so generation must not pick them (decoding the text would fail after the whole run)."""
    from zoo.data.tokenizers import ByteTokenizer

    model = tiny(vocab_size=ByteTokenizer.vocab_size + 5)
    model.tokenizer = ByteTokenizer()
    with torch.no_grad():
        model.lm_head.weight[ByteTokenizer.vocab_size:] = 50 * model.lm_head.weight[:5].abs().sum()  # the padded rows win
    ids = model.generate(torch.tensor([[104, 105]]), max_new_tokens=6, temperature=0, eos_id=-1)
    assert ids.shape == (1, 8) and int(ids.max()) < ByteTokenizer.vocab_size
    sampled = model.generate(torch.tensor([[104, 105]]), max_new_tokens=6, temperature=1.0, seed=0, eos_id=-1)
    assert int(sampled.max()) < ByteTokenizer.vocab_size
    assert isinstance(model.generate("hi", max_new_tokens=4, temperature=1.0, seed=0), str)


def test_generate_restores_training_mode_after_an_error():
    """A generation that fails part-way (here the third decoding step) leaves a model that was training in
    training mode, as a successful one does (dropout stays on for the next training step)."""
    model = tiny().train()
    calls = {"n": 0}
    forward = model.forward

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("interrupted")
        return forward(*args, **kwargs)

    model.forward = failing
    with pytest.raises(RuntimeError, match="interrupted"):
        model.generate(torch.tensor([[1, 2]]), max_new_tokens=5, temperature=0, eos_id=-1)
    assert calls["n"] == 3 and model.training and all(m.training for m in model.modules())


def test_generate_takes_numpy_scalars_for_its_settings():
    # settings computed with numpy (np.int64 lengths, np.float32 temperatures) were taken before the checks came
    import numpy as np

    model = tiny()
    prompt = torch.randint(0, 50, (1, 4))
    out = model.generate(prompt, max_new_tokens=np.int64(3), temperature=np.float32(0.7), seed=0)
    assert out.shape == (1, 7)
    # top_k too: a numpy 5 samples as the int 5 does
    assert torch.equal(model.generate(prompt, max_new_tokens=3, temperature=0.7, top_k=np.int64(5), seed=0),
                       model.generate(prompt, max_new_tokens=3, temperature=0.7, top_k=5, seed=0))
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 0"):
        model.generate(prompt, max_new_tokens=np.float64(2.5))


def test_generate_takes_a_numpy_seed_and_names_a_bad_one():
    """seed=np.int64(3) (a seed from numpy, as torch.manual_seed takes it) failed in torch.Generator.manual_seed with
    "an integer is required"; it samples what a plain multinomial draw with a generator seeded 3 picks. A seed that
    is no integer is named; the largest torch seed still serves a list of prompts (seed + i wraps as torch does)."""
    import numpy as np

    from zoo.data.tokenizers import ByteTokenizer

    model = tiny()
    prompt = torch.randint(0, 50, (1, 4))
    probs = torch.softmax(model(prompt)[:, -1].float() / 1.3, dim=-1)
    for seed in (3, 11):
        ref = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(seed)).item()
        got = model.generate(prompt, max_new_tokens=1, temperature=1.3, seed=np.int64(seed))[0, -1].item()
        assert got == ref
    for bad in (2.5, True, "3"):
        with pytest.raises(ValueError, match="seed must be an integer or None"):
            model.generate(prompt, max_new_tokens=1, temperature=1.0, seed=bad)
    text_model = tiny(vocab_size=259)
    text_model.tokenizer = ByteTokenizer()
    top = 2**64 - 1  # torch.Generator().manual_seed(2**64) overflows; torch reads seeds modulo 2**64
    assert text_model.generate(["a", "bc"], max_new_tokens=2, temperature=1.0, seed=top)[1] == \
        text_model.generate("bc", max_new_tokens=2, temperature=1.0, seed=0)


def test_a_float_eos_id_is_named():
    """eos_id=2.0 (an id read from JSON as a number) or another single non-id failed with "'float' object is not
    iterable" inside the check that names a bad eos_id."""
    model = tiny()
    for bad in (2.0, object()):
        with pytest.raises(ValueError, match="eos_id must be a token id or a list of them"):
            model.generate(torch.tensor([[1, 2]]), max_new_tokens=1, temperature=0, eos_id=bad)


def test_greedy_generation_leaves_the_global_random_stream_alone():
    """Only sampling draws its seed from torch's global RNG: greedy decoding (e.g. a sample printed during
    training) must not shift the random numbers the training run draws next."""
    model = tiny()
    prompt = torch.randint(0, 50, (1, 3))
    torch.manual_seed(7)
    want = torch.rand(3)
    torch.manual_seed(7)
    model.generate(prompt, max_new_tokens=4, temperature=0)
    assert torch.equal(torch.rand(3), want)


@pytest.mark.parametrize("attn", ["diff", "vanilla", "diff_v2"])
def test_an_empty_batch_gives_empty_logits(attn):
    """[0, T] and [B, 0] ids are batches like any other (the id-range check took min() of an empty tensor)."""
    model = tiny(attn)
    assert tuple(model(torch.zeros(0, 5, dtype=torch.long)).shape) == (0, 5, 50)
    assert tuple(model(torch.zeros(2, 0, dtype=torch.long)).shape) == (2, 0, 50)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 50\)"):  # the check still runs on real ids
        model(torch.tensor([[3, 50]]))


def test_the_id_range_check_reads_the_device_once_per_forward(monkeypatch):
    """Every forward checks its ids against the vocabulary; each read of a tensor value on the host is a device sync
    on a GPU: min() < 0 and max() >= V read two per forward (every step, every generated token). Both ends are read
    in one go now; out-of-range ids at either end are still named with the range."""
    model = tiny("diff")
    reads = []
    for name in ("__bool__", "__int__", "__index__", "__float__", "item", "tolist"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name,
                            lambda self, *a, _real=real, _name=name, **k: reads.append(_name) or _real(self, *a, **k))
    model(torch.tensor([[3, 49, 0]]))
    assert len(reads) == 1, reads
    monkeypatch.undo()
    for ids, shown in (([[3, 50]], r"\[3, 50\]"), ([[-1, 7]], r"\[-1, 7\]")):
        with pytest.raises(ValueError, match=rf"token ids must lie in \[0, 50\); got {shown}"):
            model(torch.tensor(ids))


@pytest.mark.parametrize("attn", ["diff", "vanilla"])
def test_torch_compile_training_forward_is_one_graph_and_matches_eager(attn):
    """torch.compile: the training forward traces as one graph (the token-id range check read tensor values in
    Python, which split it into three) and gives eager's logits and gradients; bad ids still fail, in the graph."""
    import torch._dynamo as dynamo

    model = tiny(attn).train()
    ids = torch.randint(0, 50, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 7:] = 0
    dynamo.reset()
    explained = dynamo.explain(model)(ids, mask)
    assert explained.graph_break_count == 0, [str(b.reason) for b in explained.break_reasons]
    want = model(ids, mask)
    want_grads = torch.autograd.grad(want.square().sum(), list(model.parameters()))
    dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")
    got = compiled(ids, mask)
    got_grads = torch.autograd.grad(got.square().sum(), list(model.parameters()))
    torch.testing.assert_close(got, want)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w)
    with pytest.raises(RuntimeError, match=r"token ids must lie in \[0, 50\)"):
        compiled(torch.tensor([[3, 50]]))
    dynamo.reset()


def _sharp(model):
    """Weights x4: at init (std 0.02) the greedy pick hardly depends on the context (the tied embedding of the last
    token wins), so padding that leaked into attention would go unseen."""
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4)
    return model


def _naive_greedy(model, ids, n):
    """Reference decoding: one prompt alone, no cache, no padding, the whole prefix recomputed each step."""
    ids = torch.tensor([ids])
    for _ in range(n):
        ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], 1)
    return ids[0].tolist()


@pytest.mark.parametrize("attn,kw", [("diff", {}), ("vanilla", {}), ("diff_v2", {}), ("dint", {}),
                                     ("gda", {"attn_args": {"signal_ratio": 2}})])
def test_text_prompts_of_different_lengths_decode_as_one_left_padded_batch(attn, kw):
    """A list of text prompts runs as left-padded batches (one forward per step for the whole batch), and every
    completion equals the one its prompt gets decoded alone without a cache or padding."""
    from zoo.data.tokenizers import ByteTokenizer
    from zoo.models.lm import completion_text, prompt_ids

    model = _sharp(tiny(attn, vocab_size=259, n_heads=4, **kw))
    model.tokenizer = tok = ByteTokenizer()
    prompts = ["ROMEO:", "a", "the quick brown fox", "xy", ""]
    calls = []
    hook = model.register_forward_hook(lambda mod, args, out: calls.append(tuple(args[0].shape)))
    got = model.generate(prompts, max_new_tokens=6, temperature=0, eos_id=-1, batch_size=3)  # -1: no stop
    hook.remove()
    # sorted by length: ("", "a", "xy") then ("ROMEO:", "the quick brown fox"); each batch pads to its longest
    assert calls[0] == (3, 2) and calls[6] == (2, len(prompt_ids(tok, "the quick brown fox")))
    assert len(calls) == 12 and all(c[1] == 1 for c in calls[1:6] + calls[7:])
    for p, text in zip(prompts, got):
        ids = prompt_ids(tok, p)
        assert text == completion_text(tok, ids, _naive_greedy(model, ids, 6)[len(ids):])


def test_left_padded_id_batch_with_attention_mask_decodes_each_row_as_alone():
    """A [B, T] tensor with Hugging Face's attention_mask (left padding) generates each row as its unpadded
    prompt would; right padding, a wrong shape or values other than 0/1 are named errors."""
    from zoo.data.tokenizers import ByteTokenizer

    model = _sharp(tiny(n_heads=4, vocab_size=259))
    rows = [[5, 6, 7, 8, 9], [3, 4], [11]]
    ids = torch.zeros(3, 5, dtype=torch.long)
    mask = torch.zeros(3, 5, dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, 5 - len(row):] = torch.tensor(row)
        mask[r, 5 - len(row):] = 1
    out = model.generate(ids, attention_mask=mask, max_new_tokens=7, temperature=0)
    for r, row in enumerate(rows):
        assert out[r, 5:].tolist() == _naive_greedy(model, row, 7)[len(row):]
    with pytest.raises(ValueError, match=r"rows \[1, 2\] end in padding .*padding_side = 'left'"):
        model.generate(ids, attention_mask=mask.flip(1), max_new_tokens=2)
    gap = mask.clone()
    gap[0, 2] = 0
    with pytest.raises(ValueError, match=r"rows \[0\] have padding between real tokens"):
        model.generate(ids, attention_mask=gap, max_new_tokens=2)
    with pytest.raises(ValueError, match=r"prompt's shape \(3, 5\), got \(3, 4\)"):
        model.generate(ids, attention_mask=mask[:, 1:], max_new_tokens=2)
    with pytest.raises(ValueError, match="1 for real tokens and 0 for padding"):
        model.generate(ids, attention_mask=mask * 2, max_new_tokens=2)
    one = model.generate(ids[0], attention_mask=mask[0], max_new_tokens=3, temperature=0)  # one row: [T] both
    assert one[0, 5:].tolist() == out[0, 5:8].tolist()
    model.tokenizer = ByteTokenizer()
    with pytest.raises(ValueError, match="a list of text prompts is padded by generate itself"):
        model.generate(["a", "bc"], attention_mask=mask, max_new_tokens=2)


def test_a_numpy_id_batch_with_its_attention_mask_decodes_as_a_tensor_does():
    """A tokenizer's ``return_tensors="np"`` output: the [B, T] numpy ids (as the numpy attention_mask already was)
    generate each row as its unpadded prompt alone; they were read as one prompt of B rows and refused as a
    [1, B, T] tensor, a shape the caller never gave."""
    import numpy as np

    model = _sharp(tiny(n_heads=4, vocab_size=259))
    rows = [[5, 6, 7, 8], [3, 4]]
    ids = np.array([[5, 6, 7, 8], [0, 0, 3, 4]])
    mask = np.array([[1, 1, 1, 1], [0, 0, 1, 1]])
    out = model.generate(ids, attention_mask=mask, max_new_tokens=5, temperature=0)
    for r, row in enumerate(rows):
        assert out[r, 4:].tolist() == _naive_greedy(model, row, 5)[len(row):]
    one = model.generate(np.array([[5, 6, 7, 8]]), max_new_tokens=5, temperature=0)
    assert one[0].tolist() == _naive_greedy(model, rows[0], 5)
    for dtype in (np.uint8, np.uint16, np.uint32, np.int32):  # a slice of a nanoGPT-style uint16 token file
        got = model.generate(np.array(rows[0], dtype=dtype), max_new_tokens=5, temperature=0)
        assert got[0].tolist() == _naive_greedy(model, rows[0], 5), dtype
    with pytest.raises(ValueError, match=r"\[batch, T\].*got shape \(1, 2, 4\)"):
        model.generate(ids[None], max_new_tokens=1)


def test_batched_text_sampling_draws_what_one_call_per_prompt_draws():
    """seed=None: each prompt's generator is seeded from torch's global RNG in list order, so a batched list
    samples what the same prompts sampled one call at a time do after the same torch.manual_seed; batch_size 1
    agrees, and a batch_size that is no positive integer is named."""
    from zoo.data.tokenizers import ByteTokenizer

    model = tiny(vocab_size=259)
    model.tokenizer = ByteTokenizer()
    prompts = ["to be", "or not", "a", "that is the question"]
    torch.manual_seed(3)
    alone = [model.generate(p, max_new_tokens=8, temperature=1.0) for p in prompts]
    for bs in (16, 1, 3):
        torch.manual_seed(3)
        assert model.generate(prompts, max_new_tokens=8, temperature=1.0, batch_size=bs) == alone
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            model.generate(prompts, max_new_tokens=2, batch_size=bad)
        for ids in (torch.tensor([[1, 2, 3]]), [1, 2, 3], "to be"):  # every kind of prompt, not only text lists
            with pytest.raises(ValueError, match="batch_size must be a positive integer"):
                model.generate(ids, max_new_tokens=2, batch_size=bad)


def test_batched_text_prompts_stop_as_alone_when_the_first_stop_id_is_no_token():
    """A row that stops before the others is filled with the first stop id; with a stop list led by no token of the
    vocabulary (-1, "never", or an id past it) that fill was fed back to the model: a token-id error part-way,
    where every prompt decoded alone stops cleanly."""
    from zoo.data.tokenizers import ByteTokenizer
    from zoo.models.lm import prompt_ids

    model = _sharp(tiny(n_heads=4, vocab_size=259))
    model.tokenizer = tok = ByteTokenizer()
    prompts = ["hello there", "a", "", "the quick brown fox", "xy"]
    firsts = [model.generate(torch.tensor(prompt_ids(tok, p)), max_new_tokens=1, temperature=0, eos_id=-1)[0, -1].item()
              for p in prompts]
    stop = firsts[1]  # "a" stops at its first token
    assert any(f != stop for f in firsts)  # and a row of its batch goes on
    for eos in ([-1, stop], [259, stop]):
        alone = [model.generate(p, max_new_tokens=6, temperature=0, eos_id=eos) for p in prompts]
        for bs in (16, 2):
            assert model.generate(prompts, max_new_tokens=6, temperature=0, eos_id=eos, batch_size=bs) == alone
    ids = torch.tensor([prompt_ids(tok, "a") * 2, prompt_ids(tok, "xy")])
    out = model.generate(ids, max_new_tokens=4, temperature=0, eos_id=[-1, stop])
    assert out[0, 2:].tolist() == [stop, -1, -1, -1]  # a finished row reads the first stop id, as documented


def test_generate_checks_top_k_and_top_p_for_every_kind_of_prompt():
    """A list of texts named a bad top_p / top_k even with max_new_tokens=0; a text or an id prompt returned
    without a word (the check sat in the sampling step, which never ran)."""
    from zoo.data.tokenizers import ByteTokenizer

    model = tiny(vocab_size=259)
    model.tokenizer = ByteTokenizer()
    for prompt in ("ab", ["ab", "c"], [5, 6], torch.tensor([[5, 6]])):
        with pytest.raises(ValueError, match=r"top_p must be a number in \[0, 1\]"):
            model.generate(prompt, max_new_tokens=0, top_p=1.5)
        with pytest.raises(ValueError, match="top_k must be a positive integer"):
            model.generate(prompt, max_new_tokens=0, top_k=-2)


def test_a_float_attention_mask_is_refused_naming_its_dtype():
    """torch.ones(B, T) is float: the mask holds 1 and 0 all right, so the error must say that its dtype is
    what is wrong."""
    model = tiny()
    ids = torch.tensor([[0, 5, 6], [7, 8, 9]])
    mask = torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match="integers or bools.*got dtype torch.float32"):
        model.generate(ids, attention_mask=mask, max_new_tokens=2)
    with pytest.raises(ValueError, match=r"1 for real tokens and 0 for padding.*got values \[2\]"):
        model.generate(ids, attention_mask=mask.long() * 2, max_new_tokens=2)


def test_attn_args_that_repeat_a_config_field_are_named():
    """attn_args {"dropout": ...} reached the layer twice (a TypeError deep in the build); it is named with the
    config field that sets it."""
    with pytest.raises(ValueError, match=r"attn_args \['backend', 'dropout'\] are set by the config itself: use "
                                         r"attn_backend \(not attn_args.backend\), attn_dropout"):
        tiny(attn_args={"dropout": 0.1, "backend": "naive"})
    assert tiny("diff", attn_args={"lambda_init": 0.5}).layers[1].attn.lambda_init == 0.5  # a type's own keyword


def test_generation_computes_vocabulary_logits_for_the_last_position_only():
    """The prompt pass built [B, T, vocab] logits to keep the last row (about 1 GB per row for a converted model
    with a 128k vocabulary and a 2k prompt); logits_to_keep=1 (Hugging Face's argument) gives the last row alone,
    equal to the full forward's."""
    model = tiny()
    prompt = torch.randint(0, 50, (2, 9))
    full = model(prompt)
    torch.testing.assert_close(model(prompt, logits_to_keep=1), full[:, -1:])
    torch.testing.assert_close(model(prompt, logits_to_keep=3), full[:, -3:])
    torch.testing.assert_close(model(prompt, logits_to_keep=torch.tensor([0, 4, 8])), full[:, [0, 4, 8]])
    rows = []
    hook = model.lm_head.register_forward_hook(lambda mod, inp, out: rows.append(inp[0].shape[1]))
    try:
        out = model.generate(prompt, max_new_tokens=3, temperature=0)
    finally:
        hook.remove()
    assert rows == [1, 1, 1]
    assert out[:, 9].tolist() == full[:, -1].argmax(-1).tolist()
