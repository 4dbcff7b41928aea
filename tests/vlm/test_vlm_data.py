"""Synthetic scenes, tokenizer, function words and user image-caption files (with bad input)."""

import csv
import json
import warnings

import numpy as np
import pytest
from PIL import Image

from zoo.data import scenes as sc
from zoo.data.vlm import (
    ImageCaptionDataModule,
    SyntheticVLMDataModule,
    VLMTokenizer,
    function_word_ids,
    read_caption_file,
    read_function_words,
)


def test_scenes_deterministic_by_seed():
    a = [sc.render(s) for s in sc.make_scenes(3, 0, 5)]
    b = [sc.render(s) for s in sc.make_scenes(3, 0, 5)]
    c = [sc.render(s) for s in sc.make_scenes(4, 0, 5)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    assert [s.caption() for s in sc.make_scenes(3, 0, 5)] == [s.caption() for s in sc.make_scenes(3, 0, 5)]


def test_scene_draws_are_numpys_choice_draws():
    """Scene i of a seed is drawn with Generator.choice over the attribute lists (the generator's definition, written
    out here as the reference): every field equal over many seeds and indices, so a set keeps its scenes."""
    from dataclasses import replace

    def reference(seed, index):
        rng = np.random.default_rng([seed, index])
        objs = [sc.SceneObject(str(rng.choice(sc.SHAPES)), str(rng.choice(list(sc.COLORS))), str(rng.choice(list(sc.SIZES))))
                for _ in range(2)]
        a, b = objs
        if a == b:
            b = replace(b, color=[c for c in sc.COLORS if c != a.color][int(rng.integers(len(sc.COLORS) - 1))])
        return sc.Scene(a, b, int(rng.integers(1, 4)), str(rng.choice(sc.RELATIONS)), int(rng.integers(len(sc.TEMPLATES))),
                        int(rng.integers(2**31)))

    cases = [(seed, i) for seed in (0, 1, 7) for i in range(700)] + [(0, 10_000_000 + i) for i in range(200)]
    got = [sc.sample_scene(seed, i) for seed, i in cases]
    assert got == [reference(seed, i) for seed, i in cases]
    assert any(s.a.shape == s.b.shape and s.a.size == s.b.size for s in got)  # the recoloured-twin branch ran
    assert all(type(s.a.color) is str and type(s.relation) is str for s in got)


def _centroid(img, rgb):
    ys, xs = np.nonzero((np.abs(img.astype(int) - np.array(rgb)).sum(-1) < 30))
    return xs.mean(), ys.mean(), len(xs)


def test_rendered_relation_matches_caption():
    """Pixel centroids of the two colors (independent of the generator's layout code) obey the relation."""
    checked = 0
    for s in sc.make_scenes(7, 0, 200):
        if s.a.color == s.b.color:
            continue
        img = sc.render(s)
        ax, ay, na = _centroid(img, sc.COLORS[s.a.color])
        bx, by, nb = _centroid(img, sc.COLORS[s.b.color])
        assert na > 5 and nb > 5
        cap = s.caption()
        if "to the left of" in cap:
            assert ax < bx
        elif "to the right of" in cap:
            assert ax > bx
        elif " above " in cap:
            assert ay < by
        else:
            assert " below " in cap and ay > by
        checked += 1
    assert checked > 100


def test_hard_negative_changes_one_attribute():
    for s in sc.make_scenes(1, 0, 100):
        n = sc.hard_negative(s, 0)
        pos, neg = s.caption().split(), n.caption().split()
        assert pos != neg
        diffs = sum(getattr(s.a, f) != getattr(n.a, f) for f in ("shape", "color", "size"))
        diffs += sum(getattr(s.b, f) != getattr(n.b, f) for f in ("shape", "color", "size"))
        diffs += (s.count != n.count) + (s.relation != n.relation)
        assert diffs == 1
        if s.count == n.count:  # only a count change also touches number agreement
            assert len(pos) == len(neg) and sum(p != q for p, q in zip(pos, neg)) == 1


def test_synthetic_datamodule_info_and_batches():
    dm = SyntheticVLMDataModule(n_train=16, n_val=8, n_test=8, batch_size=4)
    info = dm.data_info
    json.dumps(info)
    vocab = set(info["vocab"])
    assert set(sc.vocabulary()) <= vocab and {"the", "of", "with"} <= vocab
    val = [dm.splits()["val"][i]["captions"][0] for i in range(8)]
    test = [dm.splits()["test"][i]["captions"][0] for i in range(8)]
    assert len(set(val)) == 8 and not set(val) & set(test)
    b = next(iter(dm.train_dataloader()))
    assert b["image"].shape == (4, 3, 64, 64) and 0 <= float(b["image"].min()) and float(b["image"].max()) <= 1
    assert len(b["caption"]) == 4 and len(b["neg_caption"]) == 4


def test_tokenizer_truncates_with_counted_warning():
    tok = VLMTokenizer.word_level(["a", "red", "circle"], max_len=5)
    # the advice is one a fine-tune can follow too (an export's max_text_len is refused as an architecture change)
    with pytest.warns(UserWarning, match=r"1 of 2 captions are longer than 5 tokens.*counted.*larger "
                                         r"model_args.max_text_len \(an export's is fixed: fine-tuning one keeps it\) or "
                                         r"shorten the captions"):
        ids, mask = tok.encode(["a red circle a red circle", "a circle"])
    assert ids.shape == (2, 5) and ids[0, -1] == tok.sep_id and ids[0, 0] == tok.cls_id
    assert mask[1].tolist() == [True, True, True, True, False]
    with warnings.catch_warnings():  # warned once per tokenizer; later truncations are only counted
        warnings.simplefilter("error")
        tok.encode(["red red red red red"])
    assert (tok.n_truncated, tok.n_encoded) == (2, 3)
    ids, _ = tok.encode(["A Red   blob"])  # lower-cased; unknown word -> [UNK]
    assert ids[0].tolist() == [tok.cls_id, 5, 6, tok.unk_id, tok.sep_id]


def test_a_caption_that_is_not_text_is_named():
    """A missing value (pandas reads an empty caption cell as nan) or a number among the captions: named with its
    position, not the tokenizers library's 'TextEncodeInput must be Union[...]'."""
    tok = VLMTokenizer.word_level(["a", "red", "circle"])
    with pytest.raises(TypeError, match=r"caption 1 is nan \(float\).*missing value"):
        tok.encode(["a red circle", float("nan")])
    with pytest.raises(TypeError, match=r"caption 2 is None \(NoneType\)"):
        tok.encode(["a", "red", None])
    assert tok.encode(("a red", np.str_("circle")))[0].shape == (2, 4)  # a tuple, numpy strings: captions


def test_function_words_unknown_tokens():
    words = read_function_words("en")
    assert 80 <= len(words) <= 110 and "the" in words and "circle" not in words
    tok = VLMTokenizer.word_level(["the", "of", "circle"])
    with pytest.warns(UserWarning, match=rf"{len(words) - 2} of {len(words)} function words are not single tokens"):
        ids, unknown = function_word_ids(tok, words)
    assert sorted(ids) == sorted([tok.token_to_id("the"), tok.token_to_id("of")]) and "with" in unknown
    with pytest.raises(ValueError, match="strict=True"):
        function_word_ids(tok, words, strict=True)
    with pytest.raises(FileNotFoundError, match="shipped names"):
        read_function_words("klingon")


def test_minilm_wordpiece_function_words_are_single_tokens(minilm_dir):
    tok = VLMTokenizer.from_folder(minilm_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ids, unknown = function_word_ids(tok, read_function_words("en"))
    assert not unknown and tok.token_to_id("the") in ids and tok.vocab_size == 30522


def _cased_wordpiece(words):
    """A cased BERT WordPiece tokenizer (as bert-base-cased: no lower-casing) over the specials and ``words``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words)}
    t = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    t.normalizer = normalizers.BertNormalizer(lowercase=False)
    t.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    t.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return VLMTokenizer(t)


def test_a_cased_tokenizer_marks_a_capitalized_function_word_too():
    """COCO captions start with a capital ("A man on the beach"): with a cased tokenizer "A" is another token than
    "a", and the list's "a" left it a content word (replaced by [PAD] in FDA's function-word caption). Reference:
    the caption's words by hand; a word written with a capital is still that function word."""
    tok = _cased_wordpiece(["A", "a", "The", "the", "man", "on", "beach"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # most of the list is not in this vocabulary
        ids, _ = function_word_ids(tok, read_function_words("en"))
    kept = {tok.backend.id_to_token(i) for i in ids}
    assert kept == {"A", "a", "The", "the", "on"}


def test_a_user_function_word_list_in_any_case_marks_the_words_of_a_cased_tokenizer(tmp_path):
    """A user's list written in capitals or title case ("THE", "Of"), with comments, blank lines and duplicates: with a
    cased tokenizer "THE" was no token (ignored, warned) and "Of" marked only "Of", so the captions' "the" / "of"
    stayed content words. Reference: the words of the list, lower-cased and capitalized, by hand."""
    fw = tmp_path / "fw.txt"
    fw.write_text("# my function words\n\nTHE\nthe  # again\nOf\n  a\nof course\n")
    words = read_function_words(str(fw))
    assert words == ["THE", "the", "Of", "a", "of course"]
    tok = _cased_wordpiece(["A", "a", "The", "the", "of", "Of", "man", "course"])
    with pytest.warns(UserWarning, match=r"\['of course'\]"):
        ids, unknown = function_word_ids(tok, words)
    assert {tok.backend.id_to_token(i) for i in ids} == {"A", "a", "The", "the", "of", "Of"}
    assert unknown == ["of course"]


def test_a_cased_vocab_txt_folder_is_read_as_transformers_reads_it(tmp_path):
    """A Hugging Face BERT folder with vocab.txt and no tokenizer.json: its tokenizer_config.json says
    do_lower_case false (a cased model), and the folder was read lower-cased ("A" -> "a", "Paris" -> par ##is): ids
    the cased encoder never saw. Reference: transformers' tokenizer of the same folder."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "A", "a", "Paris", "par", "##is", "in", "caf", "##é", "cafe"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}), encoding="utf-8")
    text = "A café in Paris"
    want = transformers.BertTokenizer.from_pretrained(str(tmp_path))(text)["input_ids"]
    assert VLMTokenizer.from_folder(tmp_path).encode([text])[0][0].tolist() == want
    (tmp_path / "tokenizer_config.json").unlink()  # no config: transformers' default, lower-cased (uncased BERT)
    want = transformers.BertTokenizer.from_pretrained(str(tmp_path))(text)["input_ids"]
    assert VLMTokenizer.from_folder(tmp_path).encode([text])[0][0].tolist() == want


def _images(root, names):
    root.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(names):
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((20, 30, 3), 40 * i, dtype=np.uint8)).save(root / n)


def test_karpathy_json_and_csv(tmp_path):
    root = tmp_path / "imgs"
    _images(root, ["val2014/a.jpg", "val2014/b.jpg", "train2014/c.jpg"])
    karpathy = {"images": [
        {"filepath": "val2014", "filename": "a.jpg", "split": "test", "sentences": [{"raw": "A dog."}, {"raw": "A pet."}]},
        {"filepath": "val2014", "filename": "b.jpg", "split": "val", "sentences": [{"raw": "A cat."}]},
        {"filepath": "train2014", "filename": "c.jpg", "split": "restval", "sentences": [{"raw": "A cow."}]},
    ]}
    kj = tmp_path / "dataset_coco.json"
    kj.write_text(json.dumps(karpathy))
    assert read_caption_file(kj, "test") == [("val2014/a.jpg", ["A dog.", "A pet."])]
    assert read_caption_file(kj, "train") == [("train2014/c.jpg", ["A cow."])]
    dm = ImageCaptionDataModule(image_root=str(root), train=str(kj), image_size=16, batch_size=2)
    assert dm.data_info["sizes"] == {"train": 1, "val": 1, "test": 1}
    assert {"a", "cow", "the"} <= set(dm.data_info["vocab"])
    item = dm.splits()["test"][0]
    assert item["image"].shape == (3, 16, 16) and item["captions"] == ["A dog.", "A pet."]
    albef = tmp_path / "train.json"
    albef.write_text(json.dumps([{"image": "val2014/a.jpg", "caption": ["x", "y"]}, {"image": "val2014/b.jpg", "caption": "z"}]))
    assert read_caption_file(albef, "train") == [("val2014/a.jpg", ["x", "y"]), ("val2014/b.jpg", ["z"])]
    cp = tmp_path / "caps.csv"
    with open(cp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "text"])
        w.writerows([["val2014/a.jpg", "one"], ["val2014/a.jpg", "two"], ["train2014/c.jpg", "three"]])
    assert read_caption_file(cp, "train", image_col="path", caption_col="text") == [
        ("val2014/a.jpg", ["one", "two"]), ("train2014/c.jpg", ["three"])]
    with pytest.raises(ValueError, match="needs 'image' and 'caption'"):
        read_caption_file(cp, "train")
    dm = ImageCaptionDataModule(image_root=str(root), train=str(cp), image_col="path", caption_col="text", batch_size=2,
                                image_size=16)
    # a CSV has no split field: without data.val / data.test, evaluation would reuse the training images
    with pytest.warns(UserWarning, match="data.val gives the training images .* measured on the training images"):
        b = next(iter(dm.train_dataloader()))
    assert b["image"].shape == (2, 3, 16, 16)
    # one item per caption in training; both captions of a.jpg name one image (they are not each other's negatives)
    train = dm.splits()["train"]
    assert [train[k]["caption"] for k in range(3)] == ["one", "two", "three"]
    assert train[0]["image_id"] == train[1]["image_id"] != train[2]["image_id"]
    # a CSV of its own for val and none for test: test and predict read val's images, said when they run
    val_csv = tmp_path / "val_caps.csv"
    val_csv.write_text("path,text\nval2014/b.jpg,four\n")  # an image the training file does not list
    dm = ImageCaptionDataModule(image_root=str(root), train=str(cp), val=str(val_csv), image_col="path",
                                caption_col="text", batch_size=2, image_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dm.train_dataloader(), dm.val_dataloader()  # nothing to say while fitting
    for loader in (dm.test_dataloader, dm.predict_dataloader):
        with pytest.warns(UserWarning, match=r"data.test is unset: test / predict use data.val \(.*val_caps.csv\)"):
            assert [c for b in loader() for caps in b["captions"] for c in caps] == ["four"]
    # a Karpathy JSON as val (beside a CSV train, or spelled otherwise than train) has its own test split: no note
    for kw in (dict(train=str(cp), image_col="path", caption_col="text"), dict(train=str(kj.parent / "." / kj.name))):
        dm = ImageCaptionDataModule(image_root=str(root), val=str(kj), image_size=16, **kw)
        assert dm.test_source_note is None and dm.entries()["test"] != dm.entries()["val"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the Karpathy JSON names its splits: no warning
        ImageCaptionDataModule(image_root=str(root), train=str(kj), image_size=16).data_info


def test_a_karpathy_json_without_a_val_or_test_split_serves_fit_and_test(tmp_path):
    """A user's Karpathy-style JSON split train / val only (or train only): an unset data.test (data.val) stood for a
    split the file lacks and setup failed with "no usable image-caption pairs", even for fit. It now stands for the
    val (train) images, as for a CSV, and says so; a split given explicitly and missing is named with the splits held."""
    root = tmp_path / "imgs"
    _images(root, ["a.jpg", "b.jpg", "c.jpg"])
    images = [{"filename": "a.jpg", "split": "train", "sentences": [{"raw": "A dog."}, {"raw": "A pet."}]},
              {"filename": "b.jpg", "split": "restval", "sentences": [{"raw": "A cow."}]},
              {"filename": "c.jpg", "split": "val", "sentences": [{"raw": "A cat."}]}]
    no_test, train_only = tmp_path / "no_test.json", tmp_path / "train_only.json"
    no_test.write_text(json.dumps({"images": images}))
    train_only.write_text(json.dumps({"images": images[:2]}))
    dm = ImageCaptionDataModule(image_root=str(root), train=str(no_test), image_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to say while fitting: val is the file's own
        assert dm.data_info["sizes"] == {"train": 3, "val": 1, "test": 1}
        dm.train_dataloader(), dm.val_dataloader()
    for loader in (dm.test_dataloader, dm.predict_dataloader):
        with pytest.warns(UserWarning, match=r"data.test is unset and .*no_test.json has no 'test' split: test / "
                                             r"predict use the val images"):
            assert [c for b in loader() for caps in b["captions"] for c in caps] == ["A cat."]
    with pytest.warns(UserWarning, match=r"data.val gives the training images \(.*train_only.json"):
        dm = ImageCaptionDataModule(image_root=str(root), train=str(train_only), image_size=16)
        assert dm.data_info["sizes"] == {"train": 3, "val": 2, "test": 2}
    with pytest.raises(ValueError, match=r"no usable image-caption pairs in .*no_test.json \(test\): it has no image of "
                                         r"the 'test' split \(its images' splits: \['restval', 'train', 'val'\]"):
        ImageCaptionDataModule(image_root=str(root), train=str(no_test), test=str(no_test)).data_info
    empty = tmp_path / "empty.csv"
    empty.write_text("image,caption\n")
    with pytest.raises(ValueError, match=r"no usable image-caption pairs in .*empty.csv \(train\): it lists no image"):
        ImageCaptionDataModule(image_root=str(root), train=str(empty)).data_info


def test_bad_image_paths(tmp_path):
    root = tmp_path / "imgs"
    _images(root, ["a.jpg"])
    (tmp_path / "secret.jpg").write_bytes((root / "a.jpg").read_bytes())
    cp = tmp_path / "caps.csv"
    cp.write_text("image,caption\na.jpg,fine\nmissing.jpg,gone\nother.jpg,gone too\n")
    with pytest.raises(FileNotFoundError, match=r"2 of 3 images listed .* missing.*on_missing=skip"):
        ImageCaptionDataModule(image_root=str(root), train=str(cp)).data_info
    with pytest.warns(UserWarning, match="2 of 3 images listed .* skipped"):
        dm = ImageCaptionDataModule(image_root=str(root), train=str(cp), on_missing="skip")
        assert dm.data_info["sizes"]["train"] == 1
    cp.write_text("image,caption\na.jpg,fine\n../secret.jpg,escape\n")
    with pytest.raises(ValueError, match="outside the image root"):
        ImageCaptionDataModule(image_root=str(root), train=str(cp)).data_info
    with pytest.raises(FileNotFoundError, match="caption file"):
        read_caption_file(tmp_path / "nope.json", "train")


def test_linked_folders_empty_captions_and_bom(tmp_path):
    elsewhere = tmp_path / "mnt" / "coco"
    _images(elsewhere, ["a.jpg", "b.jpg"])
    root = tmp_path / "root"
    root.mkdir()
    (root / "images").symlink_to(elsewhere, target_is_directory=True)  # root/images -> /mnt/coco: the user's layout
    cp = tmp_path / "caps.csv"
    cp.write_text("\ufeffimage,caption\nimages/a.jpg,a dog\nimages/a.jpg,  \nimages/b.jpg,\n", encoding="utf-8")
    with pytest.warns(UserWarning, match="2 empty captions .* skipped, and 1 images left with no caption"):
        dm = ImageCaptionDataModule(image_root=str(root), train=str(cp), val=str(cp), test=str(cp))
        assert dm.data_info["sizes"]["train"] == 1
    bad = tmp_path / "bad.json"  # a caption that is not text: named, not an AttributeError
    bad.write_text(json.dumps([{"image": "images/a.jpg", "caption": 123}]))
    with pytest.raises(ValueError, match="entry 0: captions must be strings"):
        ImageCaptionDataModule(image_root=str(root), train=str(bad), val=str(bad), test=str(bad)).data_info
    lists = tmp_path / "lists.json"  # ALBEF lists whose caption list is empty: counted too
    lists.write_text(json.dumps([{"image": "images/a.jpg", "caption": ["a dog"]}, {"image": "images/b.jpg", "caption": []}]))
    with pytest.warns(UserWarning, match="0 empty captions .* skipped, and 1 images left with no caption"):
        assert ImageCaptionDataModule(image_root=str(root), train=str(lists), val=str(lists), test=str(lists)).data_info[
            "sizes"]["train"] == 1
    cp.write_text("image,caption\nimages/../../mnt/coco/a.jpg,escape\n")  # "../" still may not leave the root
    with pytest.raises(ValueError, match="outside the image root"):
        ImageCaptionDataModule(image_root=str(root), train=str(cp)).data_info


def test_one_image_written_two_ways_is_one_gallery_item(tmp_path):
    # "a.jpg", "./a.jpg" and the absolute path name one file: one image with all its captions, not three
    # gallery items (identical pixels tie, so each would count the others' captions as wrong answers)
    root = tmp_path / "imgs"
    _images(root, ["a.jpg", "b.jpg"])
    cp = tmp_path / "caps.csv"
    with open(cp, "w", newline="") as f:
        csv.writer(f).writerows([["image", "caption"], ["a.jpg", "one"], ["./a.jpg", "two"], [str(root / "a.jpg"), "three"],
                                 ["b.jpg", "four"]])
    dm = ImageCaptionDataModule(image_root=str(root), train=str(cp), val=str(cp), test=str(cp), image_size=16)
    entries = dm.entries()["val"]
    assert [(p.name, caps) for p, caps in entries] == [("a.jpg", ["one", "two", "three"]), ("b.jpg", ["four"])]
    assert dm.data_info["sizes"] == {"train": 4, "val": 2, "test": 2}


def test_karpathy_entries_without_filename_or_raw_are_named(tmp_path):
    root = tmp_path / "imgs"
    _images(root, ["a.jpg"])
    kj = tmp_path / "dataset_x.json"
    kj.write_text(json.dumps({"images": [{"filename": "a.jpg", "split": "train", "sentences": [{"tokens": ["a", "dog"]}]}]}))
    with pytest.raises(ValueError, match=r"images\[0\] sentence 0 has no 'raw'"):
        read_caption_file(kj, "train")
    kj.write_text(json.dumps({"images": [{"file_name": "a.jpg", "split": "train", "sentences": [{"raw": "a dog"}]}]}))
    with pytest.raises(ValueError, match=r"images\[0\] has no 'filename'"):
        read_caption_file(kj, "train")


@pytest.mark.parametrize("sep, name", [(";", "semicolons"), ("\t", "tabs")])
def test_a_caption_csv_with_another_separator_is_named(tmp_path, sep, name):
    """A semicolon / tab separated caption file reads as one column 'image;caption': say so, rather than advise
    data.image_col / data.caption_col."""
    from zoo.data.vlm import read_caption_file

    path = tmp_path / "caps.csv"
    path.write_text(f"image{sep}caption\na.png{sep}a red circle\n")
    with pytest.raises(ValueError, match=rf"separates its columns with {name} .*must be comma-separated"):
        read_caption_file(path, "train")


def test_a_csv_row_without_its_image_field_is_named(tmp_path):
    """A row shorter than the header (image column last, field left out) crashed with "unsupported operand type(s)
    for /: 'PosixPath' and 'NoneType'"; now the file and line are named. A missing caption field stays an empty
    caption (skipped, counted)."""
    root = tmp_path / "imgs"
    _images(root, ["a.jpg"])
    cp = tmp_path / "caps.csv"
    cp.write_text("caption,image\na dog,a.jpg\na cat\n")
    with pytest.raises(ValueError, match=r"caps.csv line 3 has no 'image' field"):
        ImageCaptionDataModule(image_root=str(root), train=str(cp), val=str(cp), test=str(cp)).data_info
    cp.write_text("image,caption\na.jpg,a dog\na.jpg\n")
    with pytest.warns(UserWarning, match="1 empty captions .* skipped"):
        assert read_caption_file(cp, "train") == [("a.jpg", ["a dog", None])]
        assert ImageCaptionDataModule(image_root=str(root), train=str(cp), val=str(cp), test=str(cp)).data_info[
            "sizes"]["train"] == 1


def test_rows_of_empty_fields_are_skipped_as_blank_lines(tmp_path):
    """Excel saves cells that once held values as rows of empty fields (",,"); such a row was read as an image
    named '' and the datamodule stopped on "images ... are missing (e.g. [''])". It is skipped, as a blank line
    is (Python's csv module as the reference: the rows with a value are exactly what is kept)."""
    root = tmp_path / "imgs"
    _images(root, ["a.jpg", "b.jpg"])
    cp = tmp_path / "caps.csv"
    rows = [["image", "caption"], ["a.jpg", "a dog"], ["", ""], ["b.jpg", "a cat"], [" ", ""]]
    with open(cp, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    want = [(r[0], [r[1]]) for r in rows[1:] if any(v.strip() for v in r)]
    assert read_caption_file(cp, "train") == want == [("a.jpg", ["a dog"]), ("b.jpg", ["a cat"])]
    assert ImageCaptionDataModule(image_root=str(root), train=str(cp), val=str(cp), test=str(cp)).data_info[
        "sizes"]["train"] == 2


def test_a_csv_row_longer_than_its_header_is_named(tmp_path):
    """An unquoted comma in a caption ("a dog, running") splits the row into more fields than the header has; the
    caption read back as "a dog" alone (the rest silently dropped). Now the file and line are named."""
    root = tmp_path / "imgs"
    _images(root, ["a.jpg"])
    cp = tmp_path / "caps.csv"
    cp.write_text("image,caption\na.jpg,a dog, running on grass\n")
    with pytest.raises(ValueError, match=r"caps.csv line 2 has more fields than the columns .*quote captions"):
        read_caption_file(cp, "train")
    # quoted, the comma is part of the caption (Python's csv module as the reference reader)
    with open(cp, "w", newline="") as f:
        csv.writer(f).writerows([["image", "caption"], ["a.jpg", "a dog, running on grass"]])
    assert read_caption_file(cp, "train") == [("a.jpg", ["a dog, running on grass"])]


def test_user_function_words_with_capitals_and_accents_extend_the_vocabulary(tmp_path):
    """data.function_words extends a word-level vocabulary (README): an entry such as "Über" or "À" must become the
    token its word in a caption becomes (BERT's normalizer: lower-cased, accents stripped), not a dead entry that no
    caption reaches, with the word then warned about as unknown and ignored by FDA."""
    from tokenizers import normalizers

    root = tmp_path / "imgs"
    _images(root, ["a.jpg"])
    cp = tmp_path / "caps.csv"
    cp.write_text("image,caption\na.jpg,Ein Hund über dem Tisch\n", encoding="utf-8")
    words = tmp_path / "fw_de.txt"
    words.write_text("# German function words\nÜber\nDem\nÀ\n", encoding="utf-8")
    dm = ImageCaptionDataModule(image_root=str(root), train=str(cp), val=str(cp), test=str(cp), function_words=str(words))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vocab = dm.data_info["vocab"]
    ref = normalizers.BertNormalizer(lowercase=True)  # Hugging Face's BERT normalization, as the tokenizer's
    assert {ref.normalize_str(w) for w in ("Über", "Dem", "À")} == {"uber", "dem", "a"}
    assert {"uber", "dem", "a"} <= set(vocab) and not {"über", "à"} & set(vocab)
    tok = VLMTokenizer.word_level(vocab)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every entry is one known token: no "not single tokens" warning
        ids, unknown = function_word_ids(tok, read_function_words(str(words)))
    assert not unknown and tok.token_to_id("uber") in ids
    assert tok.encode(["über"])[0][0, 1] == tok.token_to_id("uber")


def test_a_caption_file_in_another_encoding_is_named(tmp_path):
    """A caption CSV saved by Excel as cp1252 ("café" with byte 0xe9) failed with a bare UnicodeDecodeError that named
    no file; now the file and the fix are named. A UTF-8 CSV with a BOM and Windows line endings reads as the csv
    module reads it (the reference)."""
    cp = tmp_path / "caps.csv"
    cp.write_bytes("image,caption\r\na.jpg,café au lait\r\n".encode("cp1252"))
    with pytest.raises(ValueError, match=r"caps.csv is not valid UTF-8 .*re-encode it as UTF-8"):
        read_caption_file(cp, "train")
    kj = tmp_path / "dataset_x.json"
    kj.write_bytes(json.dumps([{"image": "a.jpg", "caption": "café"}], ensure_ascii=False).encode("cp1252"))
    with pytest.raises(ValueError, match=r"dataset_x.json is not valid UTF-8"):
        read_caption_file(kj, "train")
    rows = [["image", "caption"], ["a.jpg", "café au lait"], ["b.jpg", "two\r\nlines, quoted"]]
    with open(cp, "w", newline="", encoding="utf-8-sig") as f:
        csv.writer(f).writerows(rows)  # \r\n line endings, a BOM
    with open(cp, newline="", encoding="utf-8-sig") as f:
        expected = [(r["image"], [r["caption"]]) for r in csv.DictReader(f)]
    assert read_caption_file(cp, "train") == expected == [("a.jpg", ["café au lait"]), ("b.jpg", ["two\r\nlines, quoted"])]


def test_a_json_caption_file_with_a_bom_reads_as_without(tmp_path):
    """A caption JSON saved as "UTF-8 with BOM" (Windows Notepad, PowerShell's Out-File) was refused as "not valid
    JSON (Unexpected UTF-8 BOM)" while a CSV with a BOM reads; Python's json reading the file as utf-8-sig is the
    reference."""
    data = [{"image": "a.jpg", "caption": "café au lait"}, {"image": "b.jpg", "caption": ["x", "y"]}]
    kj = tmp_path / "caps.json"
    kj.write_bytes(json.dumps(data, ensure_ascii=False).encode("utf-8-sig"))
    expected = [(e["image"], e["caption"] if isinstance(e["caption"], list) else [e["caption"]])
                for e in json.loads(kj.read_text(encoding="utf-8-sig"))]
    assert read_caption_file(kj, "train") == expected == [("a.jpg", ["café au lait"]), ("b.jpg", ["x", "y"])]


def test_a_function_word_file_in_another_encoding_is_named(tmp_path):
    """A function-word list saved as cp1252 ("über" with byte 0xfc) failed with a bare UnicodeDecodeError naming no
    file (caption files name theirs); a BOM is no part of the first word."""
    words = tmp_path / "fw_de.txt"
    words.write_bytes("über\nder\n".encode("cp1252"))
    with pytest.raises(ValueError, match=r"fw_de.txt is not valid UTF-8"):
        read_function_words(str(words))
    words.write_bytes("über\nder\n".encode("utf-8-sig"))
    assert read_function_words(str(words)) == ["über", "der"]


def test_one_karpathy_json_for_every_split_is_parsed_once(tmp_path, monkeypatch):
    """A Karpathy JSON serving train, val and test (COCO's 140 MB file took seconds to parse, three times): parsed once,
    and each split holds its own images and captions, as written in the file (restval joins train)."""
    import zoo.data.vlm as V

    names = ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"]
    root = tmp_path / "imgs"
    _images(root, names)
    splits = ["train", "restval", "val", "test", "test"]
    kj = tmp_path / "dataset_coco.json"
    kj.write_text(json.dumps({"images": [
        {"filename": n, "split": s, "sentences": [{"raw": f"{n} caption {j}"} for j in range(k % 3 + 1)]}
        for k, (n, s) in enumerate(zip(names, splits))]}))
    parses = []
    real_loads = json.loads
    monkeypatch.setattr(V.json, "loads", lambda text, *a, **kw: parses.append(1) or real_loads(text, *a, **kw))
    dm = ImageCaptionDataModule(image_root=str(root), train=str(kj), val=str(kj), test=str(tmp_path / "." / kj.name),
                                image_size=16)
    got = {split: [(p.name, caps) for p, caps in rows] for split, rows in dm.entries().items()}
    assert got == {
        "train": [("a.jpg", ["a.jpg caption 0"]), ("b.jpg", ["b.jpg caption 0", "b.jpg caption 1"])],
        "val": [("c.jpg", ["c.jpg caption 0", "c.jpg caption 1", "c.jpg caption 2"])],
        "test": [("d.jpg", ["d.jpg caption 0"]), ("e.jpg", ["e.jpg caption 0", "e.jpg caption 1"])],
    }
    assert len(parses) == 1
    # each call on its own still parses (no cache kept across calls)
    assert read_caption_file(kj, "val") == [("c.jpg", ["c.jpg caption 0", "c.jpg caption 1", "c.jpg caption 2"])]
    assert len(parses) == 2


def test_caption_dataset_holds_no_python_object_per_caption_and_keeps_every_item(tmp_path):
    """COCO's 566k training captions were a list of (image, caption) tuples beside Path objects and caption lists:
    ~190 MB more in every DataLoader worker that read them (reference counts write to the objects' pages; a CSV of
    3M captions, ~1 GB a worker). Now one blob and numpy offsets; the items are those of the entries, in order."""
    from pathlib import Path

    from zoo.data.vlm import ImageCaptionDataset

    entries = [(tmp_path / f"img_{i}.jpg", [f"caption {i}.{j}" for j in range(i % 4 + 1)]) for i in range(30)]
    entries[3] = (tmp_path / "café" / "ü.png", ["a lone \ud83d half", "日本の犬"])
    entries[7] = (Path("/x/bad\udcffname.jpg"), ["x"])  # a file name with an undecodable byte (surrogateescape)
    train = ImageCaptionDataset(entries, 8, train=True)
    val = ImageCaptionDataset(entries, 8, train=False)
    for ds in (train, val):
        ds._image = lambda p: p
        held = {k: v for k, v in vars(ds).items() if isinstance(v, (list, tuple, dict, set)) and len(v) > 10}
        assert not held
    want_train = [(p, c) for p, caps in entries for c in caps]
    assert len(train) == len(want_train)
    got = [train[k] for k in range(len(train))]
    assert [(it["image"], it["caption"], it["image_id"]) for it in got] == [(p, c, str(p)) for p, c in want_train]
    assert [(it["image"], it["captions"], it["index"], it["name"]) for it in (val[k] for k in range(len(val)))] == [
        (p, caps, k, str(p)) for k, (p, caps) in enumerate(entries)]
    assert train[-1]["caption"] == want_train[-1][1] and val.entries == entries
    with pytest.raises(IndexError):
        train[len(train)]


def test_a_caption_datamodule_keeps_no_entry_lists_once_its_datasets_hold_them(tmp_path):
    """After the splits were built (their datasets hold paths and captions as numpy blobs), the datamodule still kept
    the (path, captions) lists of every split: ~240 MB of Python objects for a 100k-image Karpathy JSON. The same
    vocabulary, entries and test-source note, from the datasets."""
    from zoo.data.vlm import function_vocab_words, split_words

    names = [f"train2014/{i:02d}.jpg" for i in range(30)]
    root = tmp_path / "imgs"
    (root / "train2014").mkdir(parents=True)
    for n in names:
        Image.new("RGB", (8, 8)).save(root / n)
    splits = ["train", "restval"] * 10 + ["val"] * 5 + ["test"] * 5
    want = {"train": [], "val": [], "test": []}
    images = []
    for k, (n, s) in enumerate(zip(names, splits)):
        caps = [f"A dog number {k % 7} runs, {j}" for j in range(k % 3 + 1)]
        images.append({"filepath": "train2014", "filename": n.split("/")[1], "split": s,
                       "sentences": [{"raw": c} for c in caps]})
        want["train" if s == "restval" else s].append((root / n, caps))
    kj = tmp_path / "dataset_coco.json"
    kj.write_text(json.dumps({"images": images}))
    dm = ImageCaptionDataModule(image_root=str(root), train=str(kj), val=str(kj), test=str(kj), image_size=16)
    info = dm.data_info
    words = sorted({w for _, caps in want["train"] for c in caps for w in split_words(c)})
    fw = function_vocab_words("en")
    assert info["vocab"] == words + sorted(set(fw) - set(words))
    assert info["sizes"] == {"train": sum(len(c) for _, c in want["train"]), "val": 5, "test": 5}
    lists = [k for k, v in vars(dm).items() if isinstance(v, dict)
             and any(isinstance(e, list) and len(e) > 10 and isinstance(e[0], tuple) for e in v.values())]
    assert not lists, lists
    assert dm.entries() == want and dm.test_source_note is None
    # the note for a test split read from data.val is still said once the entries are dropped
    val_csv = tmp_path / "val.csv"
    val_csv.write_text("image,caption\n" + "".join(f"{n},caption {n}\n" for n in names[20:25]))
    dm = ImageCaptionDataModule(image_root=str(root), train=str(kj), val=str(val_csv), image_size=16)
    dm.data_info
    with pytest.warns(UserWarning, match=r"data.test is unset: test / predict use data.val"):
        dm.test_dataloader()


def test_val_or_test_images_that_are_training_images_are_named(tmp_path):
    """Separate caption files per split that list some of the same images (a CSV split by row, not by image; a
    Karpathy JSON listing an image under two splits): retrieval on those images is inflated, so it is said."""
    root = tmp_path / "imgs"
    _images(root, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    train, val, test = tmp_path / "train.csv", tmp_path / "val.csv", tmp_path / "test.csv"
    train.write_text('image,caption\na.jpg,"a dog, running"\nb.jpg,a cat\n')
    val.write_text("image,caption\n./a.jpg,another caption of a\nc.jpg,a cow\n")  # a.jpg written another way
    test.write_text("image,caption\nd.jpg,a duck\n")
    dm = ImageCaptionDataModule(image_root=str(root), train=str(train), val=str(val), test=str(test), image_size=16)
    with pytest.warns(UserWarning, match=r"1 of the 2 images of data.val \(.*val.csv\) are training images too "
                                         r"\(e.g. \['a.jpg'\]\).*inflated") as rec:
        dm.data_info
    assert not any("data.test" in str(w.message) for w in rec)
    kj = tmp_path / "dataset.json"
    kj.write_text(json.dumps({"images": [
        {"filename": "a.jpg", "split": "train", "sentences": [{"raw": "a dog"}]},
        {"filename": "b.jpg", "split": "val", "sentences": [{"raw": "a cat"}]},
        {"filename": "a.jpg", "split": "test", "sentences": [{"raw": "a dog again"}]},
    ]}))
    with pytest.warns(UserWarning, match=r"1 of the 1 images of data.test .* are training images too"):
        ImageCaptionDataModule(image_root=str(root), train=str(kj), image_size=16).data_info
    with pytest.warns(UserWarning, match="1 of the 2 images of data.val") as rec:  # data.test unset: val's, said once
        ImageCaptionDataModule(image_root=str(root), train=str(train), val=str(val), image_size=16).data_info
    assert not any("data.test" in str(w.message) for w in rec)
    val.write_text("image,caption\nc.jpg,a cow\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # disjoint splits: nothing to say
        ImageCaptionDataModule(image_root=str(root), train=str(train), val=str(val), test=str(test)).data_info


def test_a_word_vocabulary_holds_every_word_of_the_training_captions_as_the_tokenizer_splits_them(tmp_path):
    """The word-level vocabulary counts the captions' words by their space-separated pieces (one normalization per
    distinct piece: COCO's captions one by one took ~25 s): what the tokenizer built on it reads from each caption,
    accents, CJK, punctuation, control characters and combining marks after a space included, must be the words
    it holds, with data.min_freq applied to how often each occurs across the captions."""
    from collections import Counter

    root = tmp_path / "imgs"
    _images(root, ["a.jpg", "b.jpg"])
    caps = ["A man, riding a bike!", "\u0301école Über naïve école", "東京タワー at night", "tab\there a\x1cb",
            "don't stop", "a \u0301b c\u0301 \u0301 d", "x\u00a0y  z ", "ΣΑΣ İstanbul ﬁ", "emoji 😀 ok", "'quoted' bike"]
    cp = tmp_path / "caps.csv"
    with open(cp, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        w.writerows([("a.jpg" if i % 2 else "b.jpg", c) for i, c in enumerate(caps)])
    for min_freq in (1, 2):
        dm = ImageCaptionDataModule(image_root=str(root), train=str(cp), val=str(cp), test=str(cp), min_freq=min_freq,
                                    function_words=str(_word_file(tmp_path)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vocab = dm.data_info["vocab"]
        full = VLMTokenizer.word_level(sorted({w for c in caps for w in _tokens(c)}))
        counts = Counter(t for c in caps for t in full.backend.encode(c, add_special_tokens=False).tokens)
        assert "[UNK]" not in counts  # the reference tokenizer holds every word it reads
        assert set(vocab) - {"zzfw"} == {w for w, n in counts.items() if n >= min_freq}


def _word_file(tmp_path):
    p = tmp_path / "fw.txt"
    p.write_text("zzfw\n", encoding="utf-8")
    return p


def _tokens(text):
    from tokenizers import normalizers, pre_tokenizers

    norm = normalizers.BertNormalizer(lowercase=True)
    return [w for w, _ in pre_tokenizers.BertPreTokenizer().pre_tokenize_str(norm.normalize_str(text))]
