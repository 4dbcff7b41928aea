"""Character sets and PARSeq label normalization for scene-text recognition.

Named charsets: ``"36"`` (lowercase letters + digits), ``"62"`` (mixed case + digits), ``"94"``
(printable ASCII without space, PARSeq's ``charset_train``). Any other string is the path of a UTF-8
file with one character per line (or one line holding all characters), so any Unicode set works, or,
when no such file exists and it does not look like a file name or a set name, the characters
themselves (:func:`resolve_charset`).

Normalization follows PARSeq's ``CharsetAdapter`` / LMDB reader: whitespace removed, NFKD folded to
ASCII when the charset is pure ASCII (accents go silently; other non-ASCII characters are dropped
and counted), lower-cased when the charset has no upper case (upper-cased
when it has no lower case), out-of-charset characters dropped (and counted), labels longer than
``max_length`` rejected (PARSeq drops them; we count them and report), their length taken before
out-of-charset characters are dropped, as PARSeq does.
"""

from __future__ import annotations

import os
import re
import string
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from zoo.data.files import read_utf8

CHARSETS: dict[str, str] = {
    "36": string.digits + string.ascii_lowercase,
    "62": string.digits + string.ascii_lowercase + string.ascii_uppercase,
    "94": string.digits + string.ascii_lowercase + string.ascii_uppercase + string.punctuation,
}


def load_charset(spec: Union[str, Path]) -> str:
    """The characters of a named charset (``36``/``62``/``94``) or of a UTF-8 charset file.

    A file holds one character per line, or a single line with every character; duplicates and
    whitespace are errors because they make the class index ambiguous.
    """
    key = str(spec)
    if key in CHARSETS:
        return CHARSETS[key]
    path = Path(key).expanduser()
    if not path.is_file():
        raise ValueError(
            f"unknown charset {key!r}: use one of {sorted(CHARSETS)} or the path of a UTF-8 file "
            "with one character per line"
        )
    lines = [ln for ln in read_utf8(path, "charset file", bom=True).splitlines() if ln != ""]  # a BOM is no character
    # a line written decomposed (macOS / NFD editors: "e" + U+0301) is the one composed character it spells
    lines = [nfc if len(ln) > 1 and len(nfc := unicodedata.normalize("NFC", ln)) == 1 else ln for ln in lines]
    chars = "".join(lines) if len(lines) > 1 else (lines[0] if lines else "")
    if len(lines) > 1 and any(len(ln) != 1 for ln in lines):
        bad = [ln for ln in lines if len(ln) != 1][:5]
        raise ValueError(f"charset file {path}: every line must hold exactly one character, got {bad}")
    if chars.isdigit() and len(chars) <= 3:
        # stored in a model's config as its characters, "36" would read back as the named set of 36, "01" as an
        # unknown set name: the model could not be rebuilt as trained
        raise ValueError(f"charset file {path} holds only the digits {chars!r}, which a model's config reads back as "
                         f"a charset name ({sorted(CHARSETS)}); a charset of three or fewer digits alone is not "
                         "supported: add the other characters your labels may hold (e.g. all ten digits)")
    return check_charset(chars, str(path))


CHARSET_FILE_SUFFIXES = (".txt", ".csv", ".tsv", ".lst", ".chars")
_HOME_PATH = re.compile(r"~[\w.-]*[/" + re.escape(os.sep) + "]")  # "~/..." or "~user/...": a path, as expanduser reads it


def _is_file(key: str) -> bool:
    try:
        return Path(key).expanduser().is_file()
    except (OSError, ValueError, RuntimeError):  # a long charset is no file name ("File name too long"); NUL bytes
        return False  # neither; nor "~abc" (a charset beginning with "~": no user "abc" to expand, RuntimeError)


def resolve_charset(spec: Union[str, Path]) -> str:
    """The characters of ``spec``: a named set, a charset file, or the characters themselves.

    A name that is not a known set (``"95"``) and a path to a missing file (``"ja.txt"``,
    ``"charsets/ja.csv"``) raise instead of becoming a charset of their own characters.
    """
    key = str(spec)
    if key in CHARSETS or _is_file(key):
        return load_charset(key)
    if key.isdigit() and len(key) <= 3:
        raise ValueError(f"unknown named charset {key!r}; the named sets are {sorted(CHARSETS)}")
    # "~/chars" / "~user/chars" is a path to a missing file; "~abc" or "~!@#.../?" (a charset file whose first line is
    # "~", as a model stores it: a "/" may come later among its characters) is not
    if key.lower().endswith(CHARSET_FILE_SUFFIXES) or _HOME_PATH.match(key):
        raise FileNotFoundError(f"charset file {key} not found (working directory {Path.cwd()})")
    return check_charset(key)


def check_charset(chars: str, source: str = "charset") -> str:
    """Validate a charset string: non-empty, no whitespace, no duplicates."""
    if not chars:
        raise ValueError(f"{source} is empty; a charset needs at least one character")
    if any(c.isspace() for c in chars):
        raise ValueError(f"{source} contains whitespace; labels have whitespace removed, so drop it from the charset")
    dup = [c for c, n in Counter(chars).items() if n > 1]
    if dup:
        raise ValueError(f"{source} lists characters more than once: {dup[:10]}")
    return chars


@dataclass
class NormStats:
    """Counts of what normalization changed or rejected (reported by the datamodules)."""

    seen: int = 0
    kept: int = 0
    empty: int = 0  # empty after normalization (or empty to begin with)
    too_long: int = 0
    labels_with_dropped: int = 0
    dropped_chars: Counter = field(default_factory=Counter)

    def merge(self, other: "NormStats", times: int = 1) -> None:
        """Add ``other``'s counts, ``times`` over (the same label read that often)."""
        self.seen += other.seen * times
        self.kept += other.kept * times
        self.empty += other.empty * times
        self.too_long += other.too_long * times
        self.labels_with_dropped += other.labels_with_dropped * times
        self.dropped_chars.update({c: m * times for c, m in other.dropped_chars.items()})

    def as_dict(self) -> dict:
        return {
            "seen": self.seen, "kept": self.kept, "skipped_empty": self.empty, "skipped_too_long": self.too_long,
            "labels_with_dropped_chars": self.labels_with_dropped,
            "dropped_chars": dict(self.dropped_chars.most_common(20)),
        }

    def report(self, source: str) -> str:
        top = ", ".join(f"{c!r}x{n}" for c, n in self.dropped_chars.most_common(8)) or "none"
        return (
            f"{source}: kept {self.kept}/{self.seen} labels; skipped {self.empty} empty and {self.too_long} "
            f"too long; {self.labels_with_dropped} labels lost out-of-charset characters ({top})"
        )


class Charset:
    """A recognizer's character set: normalization, and class ids (``0`` = EOS, ``1..n`` = chars)."""

    EOS = 0

    def __init__(self, chars: Union[str, Path], max_length: int = 25, literal: bool = False) -> None:
        """``chars``: a spec for :func:`resolve_charset`, or with ``literal`` the characters themselves
        (a model's stored charset: never read as a name or a file)."""
        self.spec = str(chars)
        self.chars = check_charset(str(chars)) if literal else resolve_charset(chars)
        if max_length <= 0:
            raise ValueError(f"max_length must be positive, got {max_length}")
        self.max_length = max_length
        self.index = {c: i + 1 for i, c in enumerate(self.chars)}
        self.is_ascii = all(ord(c) < 128 for c in self.chars)
        self.has_lower = any(c.islower() for c in self.chars)
        self.has_upper = any(c.isupper() for c in self.chars)

    def __len__(self) -> int:
        return len(self.chars)

    @property
    def num_classes(self) -> int:
        """EOS + characters."""
        return len(self.chars) + 1

    def clean(self, label: str) -> tuple[str, str]:
        """PARSeq normalization without the length check: ``(kept text, dropped characters)``."""
        label = "".join(label.split())
        if not self.is_ascii:
            # one form for one text: a decomposed label (macOS file names: e + combining accent, Hangul jamo)
            # reads composed unless the parts are what the charset holds (a charset of parts keeps them): a tie
            # composes, so "e" + U+0301 under a charset without "é" drops the "é" as the composed label does
            composed = unicodedata.normalize("NFC", label)
            if sum(c not in self.index for c in composed) <= sum(c not in self.index for c in label):
                label = composed
        if self.is_ascii:
            # NFKD then ASCII: accents split off and go silently (é -> e); any other non-ASCII character
            # (中, an undecodable byte's U+FFFD) is out of the charset and counted as dropped below
            label = "".join(c for c in unicodedata.normalize("NFKD", label) if not unicodedata.combining(c))
        # under an ASCII charset only ASCII characters change case: PARSeq drops the rest before it does, and
        # str.upper would spell them in ASCII ("ß" -> "SS": a 6-letter "Straße" read as 7 letters, too long)
        case = str.lower if not self.has_upper else str.upper if not self.has_lower else None
        if case is not None:
            label = "".join(case(c) if c.isascii() else c for c in label) if self.is_ascii else case(label)
        kept = "".join(c for c in label if c in self.index)
        dropped = "".join(c for c in label if c not in self.index)
        return kept, dropped

    def normalize(self, label: str, stats: Optional[NormStats] = None) -> Optional[str]:
        """Normalized label, or ``None`` when it is empty or longer than ``max_length`` (counted in ``stats``)."""
        kept, dropped = self.clean(label)
        if stats is not None:
            stats.seen += 1
        # PARSeq measures the length before it drops out-of-charset characters (after whitespace removal
        # and, for an ASCII charset, NFKD to ASCII): "ab-cd-e" is too long for 6 characters under "36"
        length = len(kept) + (sum(c.isascii() for c in dropped) if self.is_ascii else len(dropped))
        if length > self.max_length:
            if stats is not None:
                stats.too_long += 1
            return None  # rejected whole, before the charset filter: it loses no characters (counted once)
        if stats is not None and dropped:
            stats.labels_with_dropped += 1
            stats.dropped_chars.update(dropped)
        if not kept:
            if stats is not None:
                stats.empty += 1
            return None
        if stats is not None:
            stats.kept += 1
        return kept

    def encode(self, text: str) -> list[int]:
        """Class ids of ``text`` (which must be normalized) followed by EOS."""
        try:
            return [self.index[c] for c in text] + [self.EOS]
        except KeyError as exc:
            raise ValueError(f"character {exc.args[0]!r} of {text!r} is not in the charset; normalize the label first") from exc

    def decode(self, ids: list[int]) -> str:
        """Text of class ids up to the first EOS."""
        out = []
        for i in ids:
            if i == self.EOS:
                break
            out.append(self.chars[i - 1])
        return "".join(out)


__all__ = ["CHARSETS", "Charset", "NormStats", "check_charset", "load_charset"]
