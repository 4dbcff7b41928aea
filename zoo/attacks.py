"""Cross-modal adversarial attacks on image-text retrieval and the attack success rate (ASR).

* :func:`pgd_attack`: image PGD in pixel space ([0, 1]) under an L-infinity budget ``eps``
  (2/255 to 8/255 in the FDA paper), ``steps`` signed-gradient steps of ``step_size`` (default
  ``2.5 eps / steps``, Madry et al.) from a random start, lowering the score of each image with its
  own caption.
* :func:`text_attack`: greedy word substitution: each step tries every single-word edit of the
  caption (character edits: delete, swap neighbours, substitute, insert; word swaps: a near-synonym
  from a table, or swapping two neighbouring words), keeps the one that lowers the image-text score
  most, and stops after ``changes`` edits or when no edit lowers the score. One edit changes one word,
  or swaps two neighbouring words (so ``changes`` = 1 may move two word positions).
* :func:`co_attack`: the text attack, then PGD against the adversarial caption (Co-Attack order).

The attacked score (:func:`pair_score`) is what retrieval re-ranks with by default: the ITC
similarity over the temperature plus the ITM matched-minus-unmatched logit. ASR is reported for
that ranking (``asr``), for ITC alone (``asr_itc``) and for ALBEF's ITM-alone re-ranking
(``asr_itm_only``). White-box: gradients flow through the
whole model, FDA included.

ASR (METHODS section 4): the share of originally correct top-1 retrievals that the attack makes
wrong, ``|correct_clean & ~correct_adv| / |correct_clean|``, per direction (image-to-text with the
attacked images or texts as gallery / queries, text-to-image likewise).
"""

from __future__ import annotations

import functools
import numbers
import string
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from zoo.data.scenes import SYNONYMS
from zoo.models.vlm import check_pixels
from zoo.nn.modes import eval_mode
from zoo.tasks.vlm import caption_lists, flatten_captions, retrieval_metrics, retrieval_scores


@dataclass
class AttackConfig:
    """Budgets of the attacks (see the module docstring)."""

    eps: float = 4 / 255
    steps: int = 10
    step_size: Optional[float] = None
    random_start: bool = True
    text_changes: int = 1
    max_candidates: int = 64
    synonyms: dict[str, list[str]] = field(default_factory=lambda: dict(SYNONYMS))
    k: int = 16
    batch_size: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.eps <= 1:
            raise ValueError(f"eps is an L-inf budget on [0, 1] pixels (e.g. 4/255; 0: no change), got {self.eps}")
        if self.steps < 1 or self.text_changes < 0 or self.max_candidates < 1:
            raise ValueError("steps and max_candidates must be >= 1, text_changes >= 0")
        if self.k < 1 or self.batch_size < 1:
            raise ValueError(f"k (ITC candidates re-ranked by ITM) and batch_size must be >= 1, got k={self.k}, "
                             f"batch_size={self.batch_size}")
        if self.step_size is not None and not self.step_size > 0:
            raise ValueError(f"step_size must be > 0 (or None for the default), got {self.step_size}")


def _check_pairs(name: str, images: Tensor, texts: Sequence[str]) -> None:
    if isinstance(texts, str):  # its characters would count as captions
        raise ValueError(f"{name} takes a list of captions, one per image, got the string {texts!r}; pass [{texts!r}]")
    if images.shape[0] != len(texts):
        raise ValueError(f"{name} pairs images and texts row by row: {images.shape[0]} vs {len(texts)}")


def pair_score(model: Any, images: Tensor, ids: Tensor, mask: Tensor, img_tokens: Optional[Tensor] = None) -> Tensor:
    """Score of aligned pairs ``(images[i], caption i)``: ITC cosine / temperature + ITM logit margin.
    ``img_tokens``: ``model.encode_image(images)`` when the caller has it (then ``images`` is not read)."""
    img = model.encode_image(images) if img_tokens is None else img_tokens
    txt = model.encode_text(ids, mask)
    itc = (model.image_feat(img) * model.text_feat(txt, mask)).sum(-1) / model.temperature
    lg = model.itm_logits(txt, mask, img, ids)
    return itc + lg[:, 1] - lg[:, 0]


def text_score(model: Any, images: Tensor, texts: Sequence[str], batch_size: int = 128,
               owner: Optional[Tensor] = None) -> Tensor:
    """:func:`pair_score` of ``(images[owner[i]], texts[i])`` without gradients (``owner``: default, the images and
    texts aligned row by row). Each image is encoded once, ``batch_size`` images at a time, however many texts
    it is scored with (the text attack scores up to ``max_candidates`` captions per image)."""
    owner = torch.arange(len(texts)) if owner is None else torch.as_tensor(owner, dtype=torch.long).cpu()
    if owner.shape != (len(texts),) or (len(texts) and not 0 <= int(owner.min()) <= int(owner.max()) < len(images)):
        raise ValueError(f"text_score: owner must give an image index in [0, {len(images)}) for each of the "
                         f"{len(texts)} texts")
    out = torch.empty(len(texts))
    with torch.no_grad():
        for a in range(0, len(images), batch_size):
            rows = ((owner >= a) & (owner < a + batch_size)).nonzero().squeeze(1)
            if len(rows) == 0:
                continue
            tokens = model.encode_image(images[a : a + batch_size])
            for s in range(0, len(rows), batch_size):
                sel = rows[s : s + batch_size]
                ids, mask = model.tokenize([texts[i] for i in sel.tolist()])
                out[sel] = pair_score(model, None, ids, mask, tokens[(owner[sel] - a).to(tokens.device)]).float().cpu()
    return out


def in_eval_mode(fn):
    """Run ``fn(model, ...)`` with the model in eval mode (no dropout: the attack's gradients and scores are the
    deterministic model's, as torchattacks does by default) and give the model back in the mode it had."""

    @functools.wraps(fn)
    def wrapper(model: Any, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(model, torch.nn.Module):  # not a model: the attack's own checks name the problem
            return fn(model, *args, **kwargs)
        with eval_mode(model):
            return fn(model, *args, **kwargs)

    return wrapper


@in_eval_mode
def pgd_attack(
    model: Any,
    images: Tensor,
    texts: Sequence[str],
    eps: float = 4 / 255,
    steps: int = 10,
    step_size: Optional[float] = None,
    random_start: bool = True,
    seed: int = 0,
    batch_size: int = 128,
) -> Tensor:
    """L-inf PGD on ``images`` ([0, 1]) lowering the score with ``texts`` (row-aligned); result in the eps ball
    (``|adv - images| <= eps`` exactly for float32 and 16-bit pixels) and in [0, 1]; ``eps`` 0 gives the images
    back unchanged."""
    _check_pairs("pgd_attack", images, texts)
    if isinstance(steps, (bool, np.bool_)) or not isinstance(steps, numbers.Integral) or steps < 1:  # np.int64 counts
        raise ValueError(f"pgd_attack needs an integer steps >= 1, got {steps!r}")
    steps = int(steps)
    if not 0 <= eps <= 1:  # eps=4 meaning 4/255 was the whole pixel range, silently
        raise ValueError(f"eps is an L-inf budget on [0, 1] pixels (e.g. 4/255; 0: no change), got {eps}")
    # integer pixels stepped as 0..255 values and failed inside (nextafter); the iterates are clamped to [0, 1]:
    # normalized (mean / std) pixels would be cut there, far outside the ball (a rounding past 0 or 1 is clamped)
    check_pixels(images, "pgd_attack")
    alpha = 2.5 * eps / steps if step_size is None else step_size
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    # gradients also when called under torch.no_grad() / inference_mode (an evaluation loop, Lightning's test step)
    # the steps in at least float32: in bfloat16 pixels a step of alpha (2/255 * 2.5 / 10 = 0.002) is below
    # the spacing of values in [0.5, 1] (2^-8) and x0 +- eps rounds past the budget
    work = torch.promote_types(images.dtype, torch.float32)
    with torch.inference_mode(False), torch.enable_grad():
        for s in range(0, len(texts), batch_size):
            # the model's device (tokenize's too); a copy: an inference-mode tensor cannot enter autograd
            x0 = images[s : s + batch_size].detach().to(device=model.fw_table.device, dtype=work).clone()
            ids, mask = model.tokenize(texts[s : s + batch_size])
            x = x0.clone()
            if random_start:
                x = (x + (torch.rand(x.shape, generator=gen) * 2 - 1).to(x) * eps).clamp(0, 1)
            for _ in range(steps):
                x.requires_grad_(True)
                loss = -pair_score(model, x, ids, mask).sum()
                (grad,) = torch.autograd.grad(loss, x)
                x = x.detach() + alpha * grad.sign()
                x = torch.min(torch.max(x, x0 - eps), x0 + eps).clamp(0, 1)
            out.append(_project(x.detach().to(images.dtype), x0, eps).to(images.device))
    return torch.cat(out) if out else images.detach().clone()  # no images: none attacked, as text_attack gives []


def _project(y: Tensor, x0: Tensor, eps: float) -> Tensor:
    """``y`` clamped into ``[x0 - eps, x0 + eps]`` and [0, 1], the bounds computed in float64 and rounded to ``y``'s
    grid towards ``x0``: ``|result - x0| <= eps`` holds exactly for float32 and 16-bit pixels (``x0 +- eps`` in float32
    overshot the budget by one step of ``x0``'s grid, many steps of a dark pixel's). MPS has no float64: on the CPU."""
    dev = torch.device("cpu") if y.device.type == "mps" else y.device
    x = x0.detach().to(dev).double()
    bounds = []
    for bound, inward in (((x - eps).clamp(min=0.0), float("inf")), ((x + eps).clamp(max=1.0), float("-inf"))):
        b = bound.to(y.dtype)
        past = b.double() < bound if inward > 0 else b.double() > bound
        bounds.append(torch.where(past, torch.nextafter(b, torch.full_like(b, inward)), b))
    return torch.max(torch.min(y.to(dev), bounds[1]), bounds[0]).to(y.device)


def char_edits(word: str, rng: np.random.Generator) -> list[str]:
    """Character-level typos of ``word``: every deletion and neighbour swap, one substitution, one insertion."""
    if len(word) < 2 or not word.isalpha():
        return []
    letters = string.ascii_lowercase
    out = {word[:i] + word[i + 1 :] for i in range(len(word))}
    out |= {word[:i] + word[i + 1] + word[i] + word[i + 2 :] for i in range(len(word) - 1)}
    i = int(rng.integers(len(word)))
    out.add(word[:i] + letters[int(rng.integers(26))] + word[i + 1 :])
    i = int(rng.integers(len(word) + 1))
    out.add(word[:i] + letters[int(rng.integers(26))] + word[i:])
    out.discard(word)
    return sorted(out)


def text_candidates(words: list[str], synonyms: dict[str, list[str]], rng: np.random.Generator,
                    max_candidates: int) -> list[list[str]]:
    """All single-word edits of ``words`` (character edits and word swaps), at most ``max_candidates``."""
    cands: list[list[str]] = []
    for i, w in enumerate(words):
        # the word without its punctuation ("square." -> "square"), put back around each edit
        core = w.strip(string.punctuation)
        lead, trail = w[: len(w) - len(w.lstrip(string.punctuation))], w[len(w.rstrip(string.punctuation)) :]
        swaps = [s.capitalize() if core[:1].isupper() else s for s in synonyms.get(core.lower(), [])]
        for e in (char_edits(core, rng) + swaps) if core else []:
            cands.append(words[:i] + [lead + e + trail] + words[i + 1 :])
        if i + 1 < len(words) and words[i + 1] != w:
            cands.append(words[:i] + [words[i + 1], w] + words[i + 2 :])
    if len(cands) > max_candidates:
        keep = rng.choice(len(cands), size=max_candidates, replace=False)
        cands = [cands[j] for j in sorted(keep)]
    return cands


@in_eval_mode
def text_attack(
    model: Any,
    images: Tensor,
    texts: Sequence[str],
    changes: int = 1,
    max_candidates: int = 64,
    synonyms: Optional[dict[str, list[str]]] = None,
    seed: int = 0,
    batch_size: int = 128,
) -> list[str]:
    """Greedy word substitution lowering the score of each ``(images[i], texts[i])`` pair: at most ``changes``
    edits, each one word changed or two neighbouring words swapped (module docstring)."""
    _check_pairs("text_attack", images, texts)
    synonyms = dict(SYNONYMS) if synonyms is None else synonyms
    rng = np.random.default_rng(seed)
    words = [t.split() for t in texts]  # as written: the only change is the edited word
    edited = [False] * len(texts)
    best = text_score(model, images, texts, batch_size)
    for _ in range(changes):
        flat, owner = [], []
        for i, ws in enumerate(words):
            for c in text_candidates(ws, synonyms, rng, max_candidates):
                flat.append(" ".join(c))
                owner.append(i)
        if not flat:
            break
        owner_t = torch.tensor(owner)
        scores = text_score(model, images, flat, batch_size, owner=owner_t)
        changed = False
        for i in range(len(words)):
            sel = (owner_t == i).nonzero().squeeze(1)
            if len(sel) == 0:
                continue
            j = sel[scores[sel].argmin()]
            if scores[j] < best[i]:
                best[i], words[i], changed = scores[j], flat[j].split(), True
                edited[i] = True
        if not changed:
            break
    return [" ".join(ws) if e else t for ws, e, t in zip(words, edited, texts)]


def co_attack(model: Any, images: Tensor, texts: Sequence[str], cfg: AttackConfig) -> tuple[Tensor, list[str]]:
    """Text attack first, then PGD on the images against the adversarial captions."""
    adv_t = text_attack(model, images, texts, cfg.text_changes, cfg.max_candidates, cfg.synonyms, cfg.seed, cfg.batch_size)
    adv_i = pgd_attack(model, images, adv_t, cfg.eps, cfg.steps, cfg.step_size, cfg.random_start, cfg.seed, cfg.batch_size)
    return adv_i, adv_t


def attack_success_rate(correct_clean: Tensor, correct_adv: Tensor) -> float:
    """Percent of originally correct queries (``correct_clean``) that are wrong after the attack."""
    c, a = correct_clean.bool(), correct_adv.bool()
    if c.shape != a.shape:
        raise ValueError(f"clean and attacked correctness differ in shape: {tuple(c.shape)} vs {tuple(a.shape)}")
    n = int(c.sum())
    return float((c & ~a).sum()) / n * 100.0 if n else float("nan")


@in_eval_mode
def run_attack_suite(model: Any, images: Tensor, captions: Sequence[Sequence[str]], cfg: AttackConfig,
                     source: Any = None) -> dict[str, Any]:
    """Clean retrieval and ASR (ITM re-ranked and ITC) under image PGD, the text attack and the co-attack.

    ``captions``: each image's caption list, or one caption string per image. Each image is attacked against its
    first caption; each caption against its image. The adversarial images and
    captions are crafted on ``source`` when given (a model, or an exported folder / shipped name to load; a transfer,
    i.e. black-box, attack: another model's gradients and scores, e.g. an independently trained model without FDA)
    and on ``model`` itself otherwise (white-box); the ASR is always ``model``'s.
    """
    if isinstance(source, (str, Path)):  # an exported folder or a shipped name
        from zoo.hub import load_pretrained

        source = load_pretrained(source, map_location=str(model.fw_table.device))
    source = model if source is None else source  # the attacks put it in eval mode themselves
    captions = caption_lists(captions)
    if len(images) == 0 or not captions:  # no query to retrieve: clean R@1 and every ASR would be 0 / 0
        raise ValueError(f"run_attack_suite needs at least one image and its captions, got {len(images)} images and "
                         f"{len(captions)} caption lists")
    texts, owner = flatten_captions(captions)
    first = [c[0] for c in captions]

    def metrics(imgs: Tensor, txts: Sequence[str]) -> dict[str, Any]:
        # right answers by the clean captions: an attacked caption still belongs to its image(s)
        return retrieval_metrics(retrieval_scores(model, imgs, txts, k=cfg.k, batch_size=cfg.batch_size), owner, texts)

    clean = metrics(images, texts)
    none_right = [f"{d} ({rank})" for rank in ("itm", "itc", "itm_only") for d in ("i2t", "t2i")
                  if not bool(clean[f"{rank}/{d}_top1"].any())]
    if none_right:
        warnings.warn(
            f"no query is retrieved correctly before the attack in {', '.join(none_right)} (clean R@1 0): the attack "
            "success rate there is undefined, reported as nan ('mean' averages the directions that have one)",
            stacklevel=3,
        )
    adv: dict[str, tuple[Tensor, list[str]]] = {}
    adv["image_pgd"] = (pgd_attack(source, images, first, cfg.eps, cfg.steps, cfg.step_size, cfg.random_start,
                                   cfg.seed, cfg.batch_size), list(texts))
    adv_t = text_attack(source, images[owner], texts, cfg.text_changes, cfg.max_candidates, cfg.synonyms, cfg.seed,
                        cfg.batch_size)
    adv["text"] = (images, adv_t)
    adv_first = [adv_t[int((owner == i).nonzero()[0])] for i in range(len(captions))]
    adv["co_attack"] = (pgd_attack(source, images, adv_first, cfg.eps, cfg.steps, cfg.step_size, cfg.random_start,
                                   cfg.seed, cfg.batch_size), adv_t)
    out: dict[str, Any] = {
        "clean": {
            "itm_r1": (clean["itm/i2t_r1"] + clean["itm/t2i_r1"]) / 2,
            "itc_r1": (clean["itc/i2t_r1"] + clean["itc/t2i_r1"]) / 2,
            "itm_only_r1": (clean["itm_only/i2t_r1"] + clean["itm_only/t2i_r1"]) / 2,
            **{k: v for k, v in clean.items() if isinstance(v, float)},
        },
        "asr": {},
        "asr_itc": {},
        "asr_itm_only": {},
        "examples": {},
    }
    for name, (imgs, txts) in adv.items():
        m = metrics(imgs, txts)
        for rank, key in (("itm", "asr"), ("itc", "asr_itc"), ("itm_only", "asr_itm_only")):
            i2t = attack_success_rate(clean[f"{rank}/i2t_top1"], m[f"{rank}/i2t_top1"])
            t2i = attack_success_rate(clean[f"{rank}/t2i_top1"], m[f"{rank}/t2i_top1"])
            both = [v for v in (i2t, t2i) if v == v]  # a direction with no correct query has no ASR (nan)
            out[key][name] = {"i2t": i2t, "t2i": t2i, "mean": sum(both) / len(both) if both else float("nan"),
                              "adv_r1": (m[f"{rank}/i2t_r1"] + m[f"{rank}/t2i_r1"]) / 2}
        out["examples"][name] = [[t, a] for t, a in zip(texts[:3], txts[:3])]
        out["asr"][name]["linf"] = float((imgs - images).abs().max() * 255)
    return out


__all__ = ["AttackConfig", "attack_success_rate", "char_edits", "co_attack", "pair_score", "pgd_attack",
           "run_attack_suite", "text_attack", "text_candidates", "text_score"]
