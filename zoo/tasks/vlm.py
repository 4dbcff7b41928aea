"""Vision-language task: ITC + ITM training (ALBEF), image-text retrieval evaluation both ways.

Retrieval (ALBEF's ``evaluation`` / ``itm_eval``): ITC cosine similarities rank every text for every
image and every image for every text; the top ``k`` of each row are re-scored. ``rerank="itm"`` is
ALBEF's re-score (the ITM matched-minus-unmatched logit alone); ``rerank="itc+itm"`` (default) adds
the ITC logit (cosine / temperature): our briefly trained tiny models have a weak ITM head (measured
on the synthetic scenes after 600 steps: ITM-alone re-ranking R@1 9% against 75% for ITC), and the
sum keeps the ITM (and so FDA) term in the final score without discarding ITC. Outside the top ``k``
the ITC order is kept (ALBEF fills -100 there; we keep the ITC values and shift each row's re-scored top
``k`` above them, so ranks beyond ``k`` stay meaningful). R@K = share of queries with a correct item among the first K; an image may
have several captions (i2t: any of them counts). Ties count against the query (pessimistic).
"""

from __future__ import annotations

import json
import warnings
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.hub import check_positive_int, create_model, export_arch_config, read_export_config, resolve_pretrained
from zoo.models.vlm import wide_cosines
from zoo.nn.modes import eval_mode
from zoo.tasks.base import ZooTask, gather_objects

KS = (1, 5, 10)
RERANK = ("itc+itm", "itm")


# ---------------------------------------------------------------------------------------------
# Retrieval metrics
# ---------------------------------------------------------------------------------------------
def correct_ranks(scores: Tensor, relevant: Tensor) -> Tensor:
    """Best rank (0-based) of a relevant item per query row: the number of irrelevant items scoring at
    least as high (ties with them count against it; other relevant items, e.g. an image's duplicate
    captions, do not).

    ``scores`` ``[Q, N]``, ``relevant`` bool ``[Q, N]`` (at least one True per row).
    """
    if not bool(relevant.any(1).all()):
        raise ValueError("every query needs at least one relevant item")
    # a block of rows at a time: the whole matrix's temporaries (a masked float copy, four bool masks) were another
    # ~1 GB beside COCO's 5k x 25k scores
    step = max(1, (1 << 24) // max(1, scores.shape[1]))
    out = []
    for r in range(0, scores.shape[0], step):
        s = scores[r : r + step]
        s = s if s.dtype == torch.float64 else s.float()
        rel = relevant[r : r + step]
        # NaN scores (a diverged model) cannot rank a right item first: a NaN item counts against the query, a NaN
        # right item does not count for it (every comparison with NaN is False: all-NaN scores read as R@1 = 100)
        nan = s.isnan()
        best = s.masked_fill(~rel | nan, float("-inf")).max(1, keepdim=True).values
        out.append((((s >= best) | nan) & ~rel).sum(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=scores.device)


def recall_at_k(ranks: Tensor, ks: Sequence[int] = KS) -> dict[int, float]:
    """``{K: share of ranks < K}`` in percent."""
    return {k: float((ranks < k).float().mean() * 100.0) for k in ks}


def relevance(img_of_text: Tensor, n_images: int, texts: Optional[Sequence[str]] = None) -> Tensor:
    """Bool ``[Ni, Nt]``: text ``t`` describes image ``img_of_text[t]``; with ``texts``, also every other image
    that has the same caption word for word (COCO has such pairs: the two copies score alike, so neither
    image could otherwise retrieve its own caption first)."""
    rel = img_of_text[None, :] == torch.arange(n_images, device=img_of_text.device)[:, None]
    if texts is None:
        return rel
    ids: dict[str, int] = {}
    sid = torch.tensor([ids.setdefault(t, len(ids)) for t in texts], dtype=torch.long, device=img_of_text.device)
    has = torch.zeros(n_images, len(ids), dtype=torch.bool, device=img_of_text.device)
    has[img_of_text, sid] = True  # image i has caption string s
    return has[:, sid]


@torch.no_grad()
def retrieval_scores(
    model: Any, images: Tensor, texts: Sequence[str], k: int = 16, batch_size: int = 256, itm: bool = True,
    rerank: str = "itc+itm",
) -> dict[str, Tensor]:
    """ITC matrix ``itc`` ``[Ni, Nt]`` and re-ranked ``i2t`` ``[Ni, Nt]`` / ``t2i`` ``[Nt, Ni]`` (module docstring).
    Scored without dropout (a model fresh from ``fit`` trains; its mode is given back), as ``similarity`` scores."""
    if rerank not in RERANK:
        raise ValueError(f"rerank must be one of {RERANK}, got {rerank!r}")
    check_positive_int("batch_size", batch_size, any_integral=True)
    with eval_mode(model):
        return _retrieval_scores(model, images, texts, k, batch_size, itm, rerank)


def _retrieval_scores(model: Any, images: Tensor, texts: Sequence[str], k: int, batch_size: int, itm: bool,
                      rerank: str) -> dict[str, Tensor]:
    dev = model.fw_table.device
    ids, mask = model.tokenize(texts)
    img_tokens = torch.cat([model.encode_image(images[s : s + batch_size].to(dev)) for s in range(0, len(images), batch_size)])
    txt = torch.cat([model.encode_text(ids[s : s + batch_size], mask[s : s + batch_size]) for s in range(0, len(ids), batch_size)])
    # scores in at least float32 (R@1 read several points low under 'bf16-true' from tied bfloat16 cosines)
    itc = wide_cosines(model.image_feat(img_tokens), model.text_feat(txt, mask))
    wide = itc.dtype
    out = {"itc": itc}
    if not itm:
        return out

    def pair_scores(ii: Tensor, tt: Tensor) -> Tensor:
        res = []
        for s in range(0, len(ii), batch_size):
            i, t = ii[s : s + batch_size], tt[s : s + batch_size]
            lg = model.itm_logits(txt[t], mask[t], img_tokens[i], ids[t]).to(wide)
            res.append(lg[:, 1] - lg[:, 0])
        return torch.cat(res) if res else torch.zeros(0, device=dev, dtype=wide)

    def above_the_rest(sim: Tensor, top: Tensor, rescored: Tensor) -> Tensor:
        """``sim`` with each row's top-k entries replaced by their re-scores, shifted (per row) above every
        other entry: the rest keep their exact ITC values (a fill of ``itc - 1e4`` kept ~1e-3 of them in
        float32, so close cosines beyond the top k tied, and ties count against the query)."""
        mat = sim.float().clone()
        rescored = rescored.float().view_as(top)
        shift = (mat.max(1, keepdim=True).values - rescored.min(1, keepdim=True).values + 1.0).clamp(min=0.0)
        mat.scatter_(1, top, rescored + shift)
        return mat

    tops, pairs = [], []
    for name, sim in (("i2t", itc), ("t2i", itc.T)):
        kk = min(k, sim.shape[1])
        top = sim.topk(kk, dim=1).indices  # [Q, kk]
        q = torch.arange(sim.shape[0], device=dev)[:, None].expand_as(top).reshape(-1)
        c = top.reshape(-1)
        tops.append((name, sim, top, q, c))
        pairs.append(torch.stack((q, c) if name == "i2t" else (c, q), dim=1))  # [Q * kk, (image, text)]
    # each (image, text) pair is scored once: most of an image's top-k texts have it in their top k of images
    # too (measured: 78% of the pairs on the synthetic scenes after 250 steps), and ITM is the evaluation's cost
    distinct, where = torch.unique(torch.cat(pairs), dim=0, return_inverse=True)
    scored = pair_scores(distinct[:, 0], distinct[:, 1])[where]
    for (name, sim, top, q, c), pair in zip(tops, scored.split([len(p) for p in pairs])):
        pair = pair.float()
        extra = sim[q, c].float() / float(model.temperature) if rerank == "itc+itm" else 0.0
        out[name] = above_the_rest(sim, top, pair + extra)
        if rerank == "itc+itm":  # ALBEF's ITM-only re-ranking too, for comparison (same pair scores)
            out[f"{name}_itm_only"] = above_the_rest(sim, top, pair)
    return out


def retrieval_metrics(scores: dict[str, Tensor], img_of_text: Tensor, texts: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """R@1/5/10 both ways (``itc``; ``itm``: re-ranked; ``itm_only``: ALBEF's ITM-alone re-ranking when
    computed) plus per-query top-1 correctness (``<name>/i2t_top1``, ``<name>/t2i_top1``). ``texts`` (the
    captions as written) make identical captions of different images count for both (see :func:`relevance`)."""
    itc = scores["itc"]
    rel = relevance(img_of_text.to(itc.device), itc.shape[0], texts)
    out: dict[str, Any] = {}
    pairs = [("itc", itc, itc.T)]
    if "i2t" in scores:
        pairs.append(("itm", scores["i2t"], scores["t2i"]))
    if "i2t_itm_only" in scores:
        pairs.append(("itm_only", scores["i2t_itm_only"], scores["t2i_itm_only"]))
    for name, i2t, t2i in pairs:
        r_i = correct_ranks(i2t, rel)
        r_t = correct_ranks(t2i, rel.T)
        ri, rt = recall_at_k(r_i), recall_at_k(r_t)
        for kk in KS:
            out[f"{name}/i2t_r{kk}"] = ri[kk]
            out[f"{name}/t2i_r{kk}"] = rt[kk]
        out[f"{name}/r_mean"] = (sum(ri.values()) + sum(rt.values())) / (2 * len(KS))
        out[f"{name}/i2t_top1"] = (r_i == 0).cpu()
        out[f"{name}/t2i_top1"] = (r_t == 0).cpu()
    return out


def _all_gather_rows(x: Tensor, sizes: Sequence[int]) -> Tensor:
    """Concatenate every rank's ``x`` (rows may differ in number: padded for the collective, then cut);
    gradients flow back to the rank that owns each row (``torch.distributed.nn.functional.all_gather``)."""
    from torch.distributed.nn.functional import all_gather

    pad = max(sizes) - x.shape[0]
    if pad:
        x = torch.cat([x, x.new_zeros(pad, *x.shape[1:])])
    return torch.cat([part[:n] for part, n in zip(all_gather(x), sizes)])


def itc_loss(fi: Tensor, ft: Tensor, captions: Sequence[str], temperature: Tensor,
             image_ids: Optional[Sequence[Any]] = None) -> tuple[Tensor, Tensor, Tensor]:
    """Image-text contrastive loss; returns ``(loss, sim, same)`` with ``sim``/``same`` this rank's ``[B, B]`` block.

    ``fi``/``ft``: normalized image / text features of one batch, ``captions`` its texts (pairs whose
    captions are equal are all positives, with the target mass shared), ``image_ids`` the images' identities
    when a batch can hold one image with several of its captions (pairs of one image are positives too,
    as ALBEF's retrieval fine-tuning masks them by image id). Under torch.distributed every
    rank's features are gathered (with gradient) so each image is contrasted with the texts of the whole
    global batch and vice versa, as ALBEF / CLIP do across GPUs; each rank's loss covers its own rows and
    columns, so the ranks' mean (what DDP's gradient averaging optimizes) equals the one-process loss
    on the concatenated batch.
    """
    B = len(captions)
    keys = list(zip(captions, image_ids if image_ids is not None else [None] * B))
    parts = gather_objects(keys)
    keys_all = [c for p in parts for c in p]
    if len(parts) == 1:
        fi_all, ft_all, start = fi, ft, 0
    else:
        import torch.distributed as dist

        sizes = [len(p) for p in parts]
        start = sum(sizes[: dist.get_rank()])
        fi_all, ft_all = _all_gather_rows(fi, sizes), _all_gather_rows(ft, sizes)
    same = torch.tensor([[ca == cb or (ia is not None and ia == ib) for cb, ib in keys_all] for ca, ia in keys],
                        device=fi.device)  # [B, N]
    tgt = same.float() / same.float().sum(1, keepdim=True)
    i2t = fi @ ft_all.T / temperature  # this rank's images against every text
    t2i = ft @ fi_all.T / temperature  # this rank's texts against every image
    loss = -0.5 * ((F.log_softmax(i2t, 1) * tgt).sum(1).mean() + (F.log_softmax(t2i, 1) * tgt).sum(1).mean())
    local = slice(start, start + B)
    return loss, i2t[:, local], same[:, local]


def caption_lists(captions: Sequence[Sequence[str] | str]) -> list[list[str]]:
    """Each image's captions as a list: a list as given, or one string as that image's one caption (iterated, its
    characters were read as the image's captions)."""
    return [[caps] if isinstance(caps, str) else list(caps) for caps in captions]


def flatten_captions(captions: Sequence[Sequence[str] | str]) -> tuple[list[str], Tensor]:
    """All captions in one list and the image index of each; an image's captions are a list, or one string."""
    texts, owner = [], []
    for i, caps in enumerate(caption_lists(captions)):
        texts.extend(caps)
        owner.extend([i] * len(caps))
    return texts, torch.tensor(owner, dtype=torch.long)


def evaluate_retrieval(model: Any, images: Tensor, captions: Sequence[Sequence[str]], k: int = 16,
                       itm: bool = True, rerank: str = "itc+itm") -> dict[str, Any]:
    """Retrieval metrics of ``model`` on images ``[N, 3, S, S]`` and their caption lists (or one caption string each)."""
    texts, owner = flatten_captions(captions)
    return retrieval_metrics(retrieval_scores(model, images, texts, k=k, itm=itm, rerank=rerank), owner, texts)


def retrieval_rows(model: Any, images: Tensor, captions: Sequence[Sequence[str]], names: Sequence[str], k: int = 16,
                   top: int = 5, rerank: str = "itc+itm") -> list[dict[str, Any]]:
    """One row per query, both ways: each image's best ``top`` captions and each caption's best ``top`` images in
    the order evaluation ranks them (ITC, its top ``k`` re-scored), each with its ITC cosine (``itc``), and the
    0-based rank of the query's best right answer (``correct_rank``; 0: the first item is right)."""
    captions = caption_lists(captions)
    texts, owner = flatten_captions(captions)
    scores = retrieval_scores(model, images, texts, k=k, rerank=rerank)
    rel = relevance(owner.to(scores["itc"].device), len(images), texts)
    ranks = {"image": correct_ranks(scores["i2t"], rel).tolist(), "text": correct_ranks(scores["t2i"], rel.T).tolist()}
    rows: list[dict[str, Any]] = []
    itc = scores["itc"]
    for query, mat, cos, mine, theirs in (("image", scores["i2t"], itc, names, texts),
                                          ("text", scores["t2i"], itc.T, texts, names)):
        best = mat.topk(min(top, mat.shape[1]), dim=1).indices.tolist()
        for q, idx in enumerate(best):
            rows.append({
                "query": query, query: mine[q],
                "top": [{"image" if query == "text" else "text": theirs[j], "itc": round(float(cos[q, j]), 6)} for j in idx],
                "correct_rank": int(ranks[query][q]),
                **({"captions": list(captions[q])} if query == "image" else {"image_of_caption": names[int(owner[q])]}),
            })
    return rows


# ---------------------------------------------------------------------------------------------
# LightningModule
# ---------------------------------------------------------------------------------------------
FDA_FIELDS = ("fda", "fda_layers", "fda_heads", "fda_direction", "fda_g_init")


REBUILT = "_rebuilt_from_checkpoint"  # marks the model_args a checkpoint saved (never a user's)


def _warn_unknown_words(tok: Any, words: Optional[Sequence[str]], folder: Any) -> None:
    """The export's tokenizer is kept (fine-tuning, test, predict): name the data's words it reads as [UNK]."""
    if not words or not hasattr(tok, "word_ids"):  # a WordPiece export reads every word (in pieces)
        return
    unknown = sorted({w for w in words if tok.word_ids(w) == [tok.unk_id]})
    if unknown:
        shown = unknown[:20] + (["..."] if len(unknown) > 20 else [])
        warnings.warn(
            f"{len(unknown)} of the {len(set(words))} words of the training captions' vocabulary are not in the "
            f"vocabulary of {folder} and read as [UNK] (the export's tokenizer is kept): {shown}",
            stacklevel=3,
        )


def _warn_unused_data_tokenizer(tok: Any, data_tok: Optional[str], folder: Any) -> None:
    """The export's tokenizer is kept (its embeddings are for its ids): a data.tokenizer folder (``minilm`` or a path)
    with another vocabulary is not used, and is named (the data's words may read as [UNK] in the export's)."""
    if tok is None or data_tok in (None, "word"):
        return
    from zoo.data.vlm import VLMTokenizer, resolve_text_folder

    other = VLMTokenizer.from_folder(resolve_text_folder(data_tok))
    if other.backend.get_vocab(with_added_tokens=True) != tok.backend.get_vocab(with_added_tokens=True):
        warnings.warn(
            f"data.tokenizer={data_tok!r} is not used: the model keeps the tokenizer of {folder} ({tok.vocab_size} "
            f"tokens; its embeddings are for those ids, {data_tok} has {other.vocab_size}); to train with "
            f"{data_tok}'s tokenizer, start from model.init_args.text_init: {data_tok} instead of pretrained",
            stacklevel=3,
        )


class VLMTask(ZooTask):
    """Train / evaluate an image-text model from the registry (``zoo.list_models("vlm-*")``).

    Args:
        arch: registered name (``vlm-fda-tiny``, ``vlm-tiny``, ``vlm-diff-fda-tiny``, ``vlm-fda-minilm``).
        fda: FDA on/off override (the one switch); ``None`` keeps the arch's default.
        model_args: further architecture overrides (``fusion_attn_type``, ``fda_heads``, ``fda_direction``...).
        text_init: ``minilm`` or a Hugging Face BERT folder: the text encoder starts from it (sizes and
            WordPiece tokenizer too).
        pretrained: exported folder or shipped name to fine-tune from (its tokenizer is kept). With
            ``fda=True`` over a checkpoint trained without FDA, FDA is added for the fine-tuning
            (:meth:`~zoo.models.vlm.VisionLanguageModel.with_fda`, settings from ``model_args``).
        data_info: filled in from the datamodule by the CLI (image size, vocabulary...).
        itm_weight: weight of the ITM loss next to ITC.
        caption_negatives: add the datamodule's one-word hard-negative captions as extra ITM negatives.
        eval_k: the ITC top ``eval_k`` are re-scored in validation / test / predict.
        predict_top: ``predict`` writes each query's best ``predict_top`` items (``retrieval.jsonl``).
        rerank: ``itc+itm`` (default) or ``itm`` (ALBEF): the re-scoring (module docstring).
        function_words_strict: a function word that is not one token of the tokenizer is an error
            (default: it is ignored by FDA, with a warning naming the words).
        lr, weight_decay, betas, warmup_steps, scheduler, min_lr_ratio: see :class:`ZooTask`.
    """

    data_fields = ("image_size",)

    def __init__(
        self,
        arch: str = "vlm-fda-tiny",
        fda: Optional[bool] = None,
        model_args: Optional[dict[str, Any]] = None,
        text_init: Optional[str] = None,
        pretrained: Optional[str] = None,
        data_info: Optional[dict[str, Any]] = None,
        itm_weight: float = 1.0,
        caption_negatives: bool = True,
        eval_k: int = 16,
        rerank: str = "itc+itm",
        function_words_strict: bool = False,
        predict_top: int = 5,
        lr: float = 5e-4,
        weight_decay: float = 0.02,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 50,
        scheduler: str = "cosine",
        min_lr_ratio: float = 0.05,
    ) -> None:
        super().__init__(lr, weight_decay, betas, warmup_steps, scheduler, min_lr_ratio)
        self.save_hyperparameters()
        self.data_info = dict(data_info or {})
        if self.data_info and self.data_info.get("kind") != "vlm":
            raise ValueError(
                f"VLMTask needs a vision-language datamodule (data_info kind 'vlm'), got {self.data_info.get('kind')!r}; "
                "use zoo.data.vlm.SyntheticVLMDataModule or ImageCaptionDataModule"
            )
        if rerank not in RERANK:
            raise ValueError(f"rerank must be one of {RERANK}, got {rerank!r}")
        if not isinstance(eval_k, int) or eval_k < 1:
            raise ValueError(f"eval_k (ITC candidates re-ranked by ITM) must be an integer >= 1, got {eval_k!r}")
        if isinstance(predict_top, bool) or not isinstance(predict_top, int) or predict_top < 1:
            raise ValueError(f"predict_top (items listed per query by predict) must be an integer >= 1, got {predict_top!r}")
        self.arch, self.itm_weight, self.caption_negatives, self.eval_k = arch, itm_weight, caption_negatives, eval_k
        self.predict_top = predict_top
        self.rerank = rerank
        overrides = dict(model_args or {})
        rebuilt = bool(overrides.pop(REBUILT, False))  # a checkpoint's own architecture (see _rebuild_hparams)
        if fda is not None:
            overrides["fda"] = fda
        self.model = self._build_model(arch, overrides, text_init, pretrained, rebuilt)
        if function_words_strict and self.model.config.fda and self.model.tokenizer is not None:
            self.model.set_tokenizer(self.model.tokenizer, strict=True)  # raises naming the unknown words
        self.results: dict[str, dict[str, Any]] = {}
        self._reset_eval()

    def _build_model(self, arch: str, overrides: dict[str, Any], text_init: Optional[str], pretrained: Optional[str],
                     rebuilt: bool = False):
        from zoo.data.vlm import VLMTokenizer, resolve_text_folder
        from zoo.models.vlm import VLMConfig, text_config_from_hf

        info = self.data_info
        if "image_size" in info:
            if overrides.get("image_size", info["image_size"]) != info["image_size"]:
                raise ValueError(f"model_args.image_size={overrides['image_size']} disagrees with data.image_size="
                                 f"{info['image_size']}; set it on the data only")
            overrides["image_size"] = info["image_size"]
        # a data.function_words list of the user's (it extends a word-level vocabulary) is also the one FDA
        # marks, unless model_args.function_words names the same or the default list is in use
        fw_data, fw_default = info.get("function_words"), VLMConfig.__dataclass_fields__["function_words"].default
        if fw_data is not None and fw_data != fw_default:
            if overrides.get("function_words", fw_data) != fw_data:
                raise ValueError(f"model_args.function_words={overrides['function_words']!r} disagrees with "
                                 f"data.function_words={fw_data!r}; set one of them")
            overrides["function_words"] = fw_data
        if pretrained is not None:
            folder = resolve_pretrained(pretrained)
            meta = read_export_config(folder)
            saved = meta["config"]
            arch_fields = export_arch_config(arch, saved)
            self.arch = meta.get("arch") or arch  # the export's architecture, named as it (see RecognitionTask)
            if "image_size" in info and saved.get("image_size") is not None and info["image_size"] != saved["image_size"]:
                # named here: the compatibility check's advice ("drop the overrides") is for model_args
                raise ValueError(f"checkpoint {folder} reads {saved['image_size']}px images, the data "
                                 f"{info['image_size']}px; set data.image_size to {saved['image_size']}")
            if text_init is not None and str(text_init) != str(saved.get("text_init")):
                warnings.warn(f"text_init={text_init!r} is not used: the text encoder's weights come from pretrained "
                              f"{pretrained} (which started from {saved.get('text_init') or 'random weights'})",
                              stacklevel=2)
            # the function-word list is no architecture field: it marks ids of the kept tokenizer (fw_table), so a
            # user's list re-marks them after the load instead of failing the checkpoint's compatibility check
            fw = overrides.pop("function_words", None)
            if overrides.get("fda") and not arch_fields.get("fda", True):
                # FDA switched on over a plain checkpoint: FDA as a fine-tuning plug-in (as the paper uses it)
                fda = {k: overrides.pop(k) for k in list(overrides) if k in FDA_FIELDS}
                plain = create_model(arch, pretrained=folder, adapter=False, **{**arch_fields, **overrides})
                # with_fda's arguments are the config fields without their "fda_" prefix (its defaults otherwise)
                model = plain.with_fda(**{k.removeprefix("fda_"): v for k, v in fda.items() if k != "fda"})
            else:
                model = create_model(arch, pretrained=folder, adapter=False, **{**arch_fields, **overrides})
            if fw is not None and fw != model.config.function_words:
                model.config.function_words = fw
                if model.tokenizer is not None:
                    model.set_tokenizer(model.tokenizer)
            _warn_unknown_words(model.tokenizer, info.get("vocab"), folder)
            _warn_unused_data_tokenizer(model.tokenizer, info.get("tokenizer"), folder)
            return model
        if rebuilt:
            # the architecture a checkpoint of a fine-tuned export saved (see _rebuild_hparams): its tokenizer
            # comes back with its weights (the .ckpt's assets); the data's word-level vocabulary is attached
            # meanwhile only when it has the same size
            model = create_model(arch, **overrides)
            if info.get("vocab") is not None:
                tok = VLMTokenizer.word_level(info["vocab"])
                if (tok.vocab_size, tok.pad_id) == (model.config.vocab_size, model.config.pad_token_id):
                    model.set_tokenizer(tok)
            return model
        tok_src = text_init or (info.get("tokenizer") if info.get("tokenizer", "word") != "word" else None)
        if tok_src is not None:
            folder = resolve_text_folder(tok_src)
            tok = VLMTokenizer.from_folder(folder)
            # text_init records where the text weights came from: only when they did
            model = create_model(arch, **{**overrides, **text_config_from_hf(folder),
                                          "text_init": str(text_init) if text_init is not None else None})
            model.set_tokenizer(tok)
            if text_init is not None:
                model.init_text_from_hf(folder)
            else:
                warnings.warn(
                    f"data.tokenizer={tok_src!r} gives the text encoder {tok_src}'s vocabulary and sizes but random "
                    f"weights; pass model.init_args.text_init: {tok_src} to start from its pretrained weights",
                    stacklevel=2,
                )
            return model
        if info.get("vocab") is None:
            raise ValueError("VLMTask needs a tokenizer: train with a datamodule (data_info vocab), text_init or pretrained")
        tok = VLMTokenizer.word_level(info["vocab"])
        model = create_model(arch, **{**overrides, "vocab_size": tok.vocab_size, "pad_token_id": tok.pad_id})
        model.set_tokenizer(tok)
        return model

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the model's image size comes from the data given now (data_fields): another one than the checkpoint's
        # failed in the weight load with a bare "size mismatch for model.vit.pos_embed"
        hp = checkpoint.get("hyper_parameters") or {}
        saved = (hp.get("data_info") or {}).get("image_size", (hp.get("model_args") or {}).get("image_size"))
        ours = self.model.config.image_size
        if saved is not None and saved != ours:
            raise ValueError(f"the checkpoint's model was trained on {saved}px images, the data gives "
                             f"data.image_size {ours}; set data.image_size to {saved}")
        super().on_load_checkpoint(checkpoint)  # (the checkpoint's tokenizer back: zoo_assets)
        # the checkpoint's function-word table replaces the model's after this hook: completed as an export's is
        table = (checkpoint.get("state_dict") or {}).get("model.fw_table")
        if isinstance(table, Tensor):
            self.model.mark_capitalized_function_words(table, "the checkpoint")

    def _rebuild_hparams(self, hp: dict[str, Any]) -> dict[str, Any]:
        # the text encoder's weights are the checkpoint's too: no MiniLM load on the way back
        out = super()._rebuild_hparams(hp)
        return {**out, "text_init": None, "model_args": {**out["model_args"], REBUILT: True}}

    # -- training
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # the temperature back into [0.001, 0.5] in place before each step, and the step uses it unclamped, as
        # ALBEF does: a clamp in the forward has zero gradient outside the range and on its bounds, so a step
        # that pushed the temperature there could never bring it back
        with torch.no_grad():
            self.model.temp.clamp_(0.001, 0.5)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        m = self.model
        caps = list(batch["caption"])
        B = len(caps)
        negs = list(batch.get("neg_caption") or []) if self.caption_negatives else []
        ids, mask = m.tokenize(caps + negs)
        img = m.encode_image(batch["image"])
        txt = m.encode_text(ids, mask)
        fi, ft = m.image_feat(img), m.text_feat(txt[:B], mask[:B])
        loss_itc, sim, same = itc_loss(fi, ft, caps, m.temp, batch.get("image_id"))  # in range: on_train_batch_start
        # ITM with hard negatives drawn from this rank's ITC similarities (ALBEF)
        # (a row whose captions all equal its own, e.g. a batch of one, has no negative and is left out)
        with torch.no_grad():
            has_neg = (~same).any(1)
            w_i2t = F.softmax(sim.float(), 1).masked_fill(same, 0) + 1e-9 * (~same)
            w_t2i = F.softmax(sim.T.float(), 1).masked_fill(same, 0) + 1e-9 * (~same)
            w_i2t[~has_neg], w_t2i[~has_neg] = 1.0, 1.0  # any draw; dropped below
            neg_txt = torch.multinomial(w_i2t, 1).squeeze(1)
            neg_img = torch.multinomial(w_t2i, 1).squeeze(1)
        ar = torch.arange(B, device=sim.device)
        rows = ar[has_neg]
        ii = [ar, neg_img[has_neg], rows]
        tt = [ar, rows, neg_txt[has_neg]]
        if negs:
            ii.append(ar)
            tt.append(ar + B)
        ii, tt = torch.cat(ii), torch.cat(tt)
        labels = torch.zeros(len(ii), dtype=torch.long, device=sim.device)
        labels[:B] = 1
        logits = m.itm_logits(txt[tt], mask[tt], img[ii], ids[tt])
        loss_itm = F.cross_entropy(logits, labels)
        loss = loss_itc + self.itm_weight * loss_itm
        self.log_dict({"train/loss": loss, "train/itc": loss_itc, "train/itm": loss_itm, "train/temp": m.temperature},
                      prog_bar=True, batch_size=B)
        return loss

    # -- evaluation
    def _reset_eval(self) -> None:
        """Empty the evaluation buffers that validation / test / predict fill batch by batch (:meth:`_collect`)."""
        self._eval: dict[str, list] = {"images": [], "captions": [], "index": [], "names": []}

    def _collect(self, batch: dict[str, Any]) -> None:
        self._eval["images"].append(batch["image"].detach().cpu())
        self._eval["captions"].extend(batch["captions"])
        # dataset indices (None for a batch without them: fine in one process, an error under DDP)
        index = batch.get("index") or [None] * len(batch["captions"])
        self._eval["index"].extend(index)
        # an unnamed item is named by its dataset index, else its position (counted before the list grows)
        start = len(self._eval["names"])
        names = batch.get("name") or [None] * len(batch["captions"])
        self._eval["names"].extend(
            str(n) if n is not None else f"image-{int(i) if i is not None else start + j}"
            for j, (n, i) in enumerate(zip(names, index))
        )

    def _gallery(self) -> tuple[Tensor, list[list[str]], list[str]]:
        """Every rank's evaluation items (a DDP collective), each dataset item once, in dataset order:
        ``(images, caption lists, names)``.

        Retrieval ranks each query against the whole gallery, so the ranks' shards are merged before
        scoring; the distributed sampler's padding repeats a few items, dropped by their index."""
        images = torch.cat(self._eval["images"]) if self._eval["images"] else torch.zeros(0)
        parts = gather_objects((self._eval["index"], images, self._eval["captions"], self._eval["names"]))
        self._reset_eval()
        if len(parts) == 1:
            return images, parts[0][2], parts[0][3]
        if any(i is None for index, _, _, _ in parts for i in index):
            raise ValueError(
                "evaluating on several processes needs each evaluation item's dataset index (an 'index' key, "
                "as the zoo VLM datasets give): without it the ranks' shards cannot be merged into one gallery"
            )
        seen: dict[int, tuple[Tensor, list[str], str]] = {}
        for index, imgs, caps, names in parts:
            for j, i in enumerate(index):
                seen.setdefault(int(i), (imgs[j], caps[j], names[j]))
        order = sorted(seen)
        if not order:
            return images, [], []
        return (torch.stack([seen[i][0] for i in order]).to(images), [seen[i][1] for i in order],
                [seen[i][2] for i in order])

    def _finish(self, stage: str) -> dict[str, Any]:
        images, captions, _ = self._gallery()
        if not captions:
            return {}
        res = evaluate_retrieval(self.model, images, captions, k=self.eval_k, rerank=self.rerank)
        scalars = {k: v for k, v in res.items() if isinstance(v, float)}
        # the headline number (mean of both directions, re-ranked) in the results and test_metrics.json too
        scalars["r1"] = (scalars["itm/i2t_r1"] + scalars["itm/t2i_r1"]) / 2
        self.results[stage] = scalars
        # sync_dist: every rank scored the gathered gallery, so the values are equal (their mean is the value); without
        # it Lightning warns under DDP that an epoch-level value is one rank's
        self.log_dict({f"{stage}/{k}": v for k, v in scalars.items() if k != "r1"}, prog_bar=False, sync_dist=True)
        self.log(f"{stage}/r1", scalars["r1"], prog_bar=True, sync_dist=True)
        return scalars

    def on_validation_epoch_start(self) -> None:
        self._reset_eval()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._collect(batch)

    def on_validation_epoch_end(self) -> None:
        self._finish("val")

    def on_test_epoch_start(self) -> None:
        self._reset_eval()

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._collect(batch)

    def on_test_epoch_end(self) -> None:
        scalars = self._finish("test")
        folder = self._run_dir()  # a DDP collective: every rank computes it
        if folder is None:
            return
        if self.trainer.is_global_zero and scalars and not self.trainer.fast_dev_run:  # a fast_dev_run logs nothing
            from zoo.tasks.callbacks import write_json_new

            write_json_new(folder, "test_metrics.json", scalars)

    # -- predict: each query's best items over the predict set (the datamodule's test split)
    def on_predict_start(self) -> None:
        super().on_predict_start()
        folder = self._run_dir()
        # refused before any work (a fast_dev_run writes no retrieval.jsonl)
        if folder is not None and not self.trainer.fast_dev_run and (folder / "retrieval.jsonl").exists():
            raise FileExistsError(f"{folder / 'retrieval.jsonl'} exists; predict into a new run folder "
                                  "(--trainer.default_root_dir)")

    def on_predict_epoch_start(self) -> None:
        self._reset_eval()

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list:
        self._collect(batch)  # retrieval ranks against the whole set: rows are written when the epoch ends
        return []  # no per-batch rows (predictions.jsonl stays unwritten)

    def on_predict_epoch_end(self) -> None:
        images, captions, names = self._gallery()
        folder = self._run_dir()
        if not captions or folder is None or not self.trainer.is_global_zero:
            return
        rows = retrieval_rows(self.model, images, captions, names, k=self.eval_k, top=self.predict_top,
                              rerank=self.rerank)
        if self.trainer.fast_dev_run:  # no run folder (it would land in the working directory), and one batch's gallery
            print(f"fast_dev_run: retrieval of {len(images)} images ranked, no retrieval.jsonl written (a smoke run "
                  "writes no files)", flush=True)
            return
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "retrieval.jsonl"
        from zoo.tasks.callbacks import create_new

        # every line made before the file exists, and UTF-8 whatever the locale (create_new: nothing half-written)
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        create_new(path, lambda f: f.write(text))
        hits = {d: [r["correct_rank"] == 0 for r in rows if r["query"] == d] for d in ("image", "text")}
        print(f"retrieval of {len(images)} images / {sum(len(c) for c in captions)} captions written to {path} "
              f"(top-1 correct: image->text {100 * sum(hits['image']) / max(len(hits['image']), 1):.1f}%, "
              f"text->image {100 * sum(hits['text']) / max(len(hits['text']), 1):.1f}%)", flush=True)

    def summary_lines(self) -> list[str]:
        c = self.model.config
        fda = f"FDA on layers {sorted(c.fda_layer_set)} ({c.fda_direction})" if c.fda_layer_set else "no FDA"
        lines = [
            f"model: {self._model_name(self.arch)} ({c.fusion_attn_type} fusion x{c.fusion_layers}, {fda}), "
            f"{self.model.num_params() / 1e6:.3f}M parameters",
        ]
        if self.data_info:
            lines.append(f"data: {self.data_info.get('source')} sizes {self.data_info.get('sizes')}, "
                         f"image {self.data_info.get('image_size')}px, tokenizer {self.data_info.get('tokenizer')}")
        tok = self.model.tokenizer
        if tok is not None and tok.n_truncated:
            lines.append(f"truncated caption encodings: {tok.n_truncated} of {tok.n_encoded} (max_text_len "
                         f"{c.max_text_len}; a caption counts each time it is encoded, once per epoch and evaluation)")
        return lines


__all__ = ["KS", "RERANK", "VLMTask", "caption_lists", "correct_ranks", "evaluate_retrieval", "flatten_captions", "recall_at_k",
           "relevance", "retrieval_metrics", "retrieval_scores"]
