"""Hash lists of known-bad images and matching against them: the pure core of the `hashlist` stage.

Lists come in the plain formats such lists are shared in:

- text: one hex hash per line; blank lines and ``#`` comments (whole line or after the hash) are allowed;
- CSV (a ``.csv`` file): a header with a ``hash`` column and an optional ``label`` column.

Kinds: ``md5`` (32 hex digits), ``sha256`` (64) of the image bytes, and ``pdq`` (64), Meta's 256-bit perceptual
hash in its reference hex format (``Hash256::format``: word 15 first, i.e. the 256 bits most significant first,
as ThreatExchange and `pdqhash`-based tools write it). A list names its kind as ``KIND:PATH``; without one the kind
is inferred from the first hash only when that is unambiguous (32 hex digits: md5). 64 hex digits may be PDQ or
sha256, so such a list without a kind is refused.

Matching: exact kinds by binary search in a sorted array of the list's hashes. PDQ lists of 20,000 hashes or more
(at distances up to 31) by multi-index hashing in numpy (`MultiIndexPdq`), smaller ones (or larger distances) by an
exhaustive FAISS binary index (`faiss.IndexBinaryFlat` range search); both find every list hash within the distance,
none missed. `benchmarks/hashlist.py` compares them with FAISS's own multi-index hashing (`IndexBinaryMultiHash`) on
a 1M-hash list. Nothing here reads images from disk or writes files: bytes and pixels in, hashes and matches out.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sanitize.errors import ConfigError, DataError, check_file

HEX_DIGITS = {"md5": 32, "sha256": 64, "pdq": 64}
KINDS = tuple(HEX_DIGITS)
EXACT_KINDS = ("sha256", "md5")
# Meta's recommended PDQ defaults: a match is a Hamming distance of at most 31 of 256 bits, and hashes of quality
# below 50 (flat or featureless images) are too unreliable to match.
PDQ_DISTANCE = 31
PDQ_QUALITY = 50
# The eight dihedral variants `pdqhash.compute_dihedral` returns, in its order.
_HEX = re.compile(r"[0-9A-Fa-f]+")
DIHEDRAL = ("original", "rot90", "rot180", "rot270", "flip_v", "flip_h", "rot90_flip_v", "rot90_flip_h")


@dataclass(frozen=True)
class ListSpec:
    """One configured list: `kind` (None: infer from the file) and `path`, parsed from ``[KIND:]PATH``."""

    kind: str | None
    path: Path

    @property
    def name(self) -> str:
        """The list's name in reasons and stats: the file name without its extension."""
        return self.path.stem


def parse_list_spec(text: str) -> ListSpec:
    """``"pdq:lists/known.txt"`` → ListSpec("pdq", Path("lists/known.txt")); a prefix that is not a kind is part of
    the path. Raises ConfigError for an empty path."""
    kind, sep, rest = text.partition(":")
    if sep and kind.lower() in HEX_DIGITS:
        kind, path = kind.lower(), rest
    else:
        kind, path = None, text
    if not path.strip():
        raise ConfigError(f"hashlist.lists: {text!r} names no file; write KIND:PATH (KIND: {', '.join(KINDS)})")
    return ListSpec(kind, Path(path.strip()))


@dataclass(frozen=True)
class HashList:
    """A parsed list: `name`, `kind`, `codes` (n, bytes) uint8 in file order, `labels` (CSV ``label`` column, or
    None) and the file's sha256 (`digest`, what fingerprints the list)."""

    name: str
    kind: str
    codes: np.ndarray
    labels: list[str | None] | None
    digest: str

    def __len__(self) -> int:
        return len(self.codes)

    def hex(self, i: int) -> str:
        return self.codes[i].tobytes().hex()

    def label(self, i: int) -> str | None:
        return self.labels[i] if self.labels is not None else None


def read_hash_list(spec: ListSpec) -> HashList:
    """Read and check the list `spec` names.

    Raises DataError naming the file and line for an unreadable file, a line that is not a hex hash, a hash of the
    wrong length for the list's kind, a CSV without a ``hash`` column, or an empty list; ConfigError when the kind
    must be given (64 hex digits without ``pdq:`` or ``sha256:``).
    """
    path = spec.path
    check_file(path, "hash list")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a readable hash list (not UTF-8 text: {e.reason})") from None
    rows = _csv_rows(path, text) if path.suffix.lower() == ".csv" else _text_rows(text)
    if not rows:
        raise DataError(f"{path}: hash list holds no hashes")
    kind = spec.kind or _infer_kind(path, rows[0])
    codes = _decode(path, kind, rows)
    labels = [label for _, _, label in rows] if path.suffix.lower() == ".csv" else None
    return HashList(spec.name, kind, codes, labels, hashlib.sha256(data).hexdigest())


def _text_rows(text: str) -> list[tuple[int, str, None]]:
    """(line number, hash text, None) per line that holds a hash."""
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        token = line.split("#", 1)[0].strip()
        if token:
            rows.append((number, token, None))
    return rows


def _csv_rows(path: Path, text: str) -> list[tuple[int, str, str | None]]:
    """(line number, hash text, label) per data row of a CSV with a ``hash`` column."""
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip().lower() for f in reader.fieldnames or []]
    if "hash" not in fields:
        raise DataError(f"{path}:1: CSV hash list has no 'hash' column (columns: {', '.join(fields) or 'none'})")
    reader.fieldnames = fields
    rows = []
    try:
        for record in reader:
            token = (record.get("hash") or "").strip()
            if token:
                label = (record.get("label") or "").strip() or None
                rows.append((reader.line_num, token, label))
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None
    return rows


def _infer_kind(path: Path, first: tuple[int, str, Any]) -> str:
    number, token, _ = first
    if len(token) == HEX_DIGITS["md5"]:
        return "md5"
    if len(token) == 64:
        raise ConfigError(f"{path}: 64-hex-digit hashes may be PDQ or sha256; name the kind in hashlist.lists as "
                          f"pdq:{path} or sha256:{path}")
    raise DataError(f"{path}:{number}: {token[:80]!r} is not a hash of a known kind (md5: 32 hex digits, sha256 "
                    "or pdq: 64); name the kind as KIND:PATH")


def _decode(path: Path, kind: str, rows: list[tuple[int, str, Any]]) -> np.ndarray:
    """The hashes as (n, bytes) uint8; DataError naming the first bad line."""
    digits = HEX_DIGITS[kind]
    joined = "".join(token for _, token, _ in rows)
    if len(joined) == digits * len(rows) and _HEX.fullmatch(joined) and all(len(t) == digits for _, t, _ in rows):
        return np.frombuffer(bytes.fromhex(joined), dtype=np.uint8).reshape(len(rows), digits // 2).copy()
    out = np.empty((len(rows), digits // 2), dtype=np.uint8)  # some line is bad: find the first
    for i, (number, token, _) in enumerate(rows):
        if not _HEX.fullmatch(token):
            raise DataError(f"{path}:{number}: {token[:80]!r} is not a hex hash")
        if len(token) != digits:
            raise DataError(f"{path}:{number}: {kind} hashes have {digits} hex digits, this one has {len(token)} "
                            f"({token[:80]!r})")
        out[i] = np.frombuffer(bytes.fromhex(token), dtype=np.uint8)
    return out


# ---- hashing ------------------------------------------------------------------------------------------------------


def exact_hashes(data: bytes) -> dict[str, bytes]:
    """{"sha256": digest, "md5": digest} of encoded image bytes."""
    return {"sha256": hashlib.sha256(data).digest(), "md5": hashlib.md5(data, usedforsecurity=False).digest()}


def pdq_bits_to_bytes(bits: np.ndarray) -> np.ndarray:
    """`pdqhash`'s 256 0/1 values (most significant first) → 32 bytes, whose hex is Meta's PDQ hex format."""
    return np.packbits(np.asarray(bits, dtype=np.uint8).reshape(-1, 256), axis=1)


def pdq_hashes(rgb: np.ndarray, *, dihedral: bool = True) -> tuple[np.ndarray, int]:
    """(codes, quality) of an (h, w, 3) uint8 RGB image: codes (8, 32) uint8 for the eight `DIHEDRAL` variants (or
    (1, 32), the image as it is, without `dihedral`), quality 0–100 (the same for every variant)."""
    import pdqhash

    image = np.ascontiguousarray(rgb, dtype=np.uint8)
    if dihedral:
        vectors, quality = pdqhash.compute_dihedral(image)
        return pdq_bits_to_bytes(np.stack(vectors)), int(quality)
    vector, quality = pdqhash.compute(image)
    return pdq_bits_to_bytes(vector), int(quality)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distance between rows of uint8 arrays of equal width (broadcasting)."""
    return np.unpackbits(np.bitwise_xor(a, b), axis=-1).sum(axis=-1)


# ---- matching -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    """One row's hit in one list: `query` (the index of the queried hash), `list` (name), `kind`, `entry` (index in
    the list), `distance` (Hamming bits; 0 for exact kinds)."""

    query: int
    list: str
    kind: str
    entry: int
    distance: int


class ExactIndex:
    """A list's exact hashes, sorted once; `search` finds which queries are in it (binary search, no false hits)."""

    def __init__(self, hashes: HashList) -> None:
        self.list = hashes
        width = hashes.codes.shape[1]
        self._dtype = np.dtype((np.void, width))
        keys = np.ascontiguousarray(hashes.codes).view(self._dtype).ravel()
        self._order = np.argsort(keys, kind="stable")
        self._sorted = keys[self._order]

    def search(self, queries: np.ndarray) -> list[Match]:
        """Matches of (m, width) uint8 `queries` (the first list entry when a hash is listed twice)."""
        if len(queries) == 0 or len(self._sorted) == 0:
            return []
        keys = np.ascontiguousarray(queries, dtype=np.uint8).view(self._dtype).ravel()
        pos = np.minimum(np.searchsorted(self._sorted, keys), len(self._sorted) - 1)
        hit = np.flatnonzero(self._sorted[pos] == keys)
        return [Match(int(q), self.list.name, self.list.kind, int(self._order[pos[q]]), 0) for q in hit]


class PdqIndex:
    """A PDQ list in an exhaustive FAISS binary index; `search` returns every list hash within `distance` bits."""

    def __init__(self, hashes: HashList, distance: int = PDQ_DISTANCE) -> None:
        import faiss

        self.list = hashes
        self.distance = distance
        self._index = faiss.IndexBinaryFlat(256)
        self._index.add(np.ascontiguousarray(hashes.codes))

    def search(self, queries: np.ndarray) -> list[Match]:
        """Matches of (m, 32) uint8 `queries`: every (query, list entry) pair at distance ≤ `distance`."""
        if len(queries) == 0:
            return []
        # FAISS keeps distances strictly below the radius.
        lims, dist, ids = self._index.range_search(np.ascontiguousarray(queries, dtype=np.uint8), self.distance + 1)
        return [Match(q, self.list.name, "pdq", int(ids[j]), int(dist[j]))
                for q in range(len(queries)) for j in range(int(lims[q]), int(lims[q + 1]))]


class MultiIndexPdq:
    """Multi-index hashing (Norouzi, Punjani & Fleet, 2012) over a PDQ list, exact for distances up to 31.

    The 256 bits are cut into 16 words of 16 bits, and one table per word maps each value to the list entries that
    have it (entries sorted by the word, with offsets per value). Two hashes within 31 bits differ in at most one
    bit in some word (16 words each differing in 2 or more bits would make 32), so probing each query word and its
    16 one-bit flips finds every entry within 31 bits; candidates are then checked by their full distance. For
    distances up to 15 the words alone are probed. Memory: 4 bytes per entry per table (64 MB for 1M entries)
    beside the hashes; building sorts each word once. Returns the same pairs as `PdqIndex` (tested).
    """

    WORDS = 16
    CHUNK = 256  # queries per vectorised step (bounds the candidate arrays to a few MB)

    def __init__(self, hashes: HashList, distance: int = PDQ_DISTANCE) -> None:
        if not 0 <= distance < 2 * self.WORDS:
            raise ValueError(f"multi-index hashing here is exact for distances 0 … 31, not {distance}")
        self.list = hashes
        self.distance = distance
        codes = np.ascontiguousarray(hashes.codes, dtype=np.uint8)
        self._codes = codes
        words = codes.view(">u2")  # (n, 16) big-endian 16-bit words, one column converted at a time
        n = len(codes)
        self._order = np.empty((self.WORDS, n), dtype=np.int32 if n < 2**31 else np.int64)
        self._offsets = np.zeros((self.WORDS, 65537), dtype=np.int64)
        for w in range(self.WORDS):
            word = words[:, w].astype(np.int64)
            self._order[w] = np.argsort(word, kind="stable")
            np.cumsum(np.bincount(word, minlength=65536), out=self._offsets[w, 1:])
        flips = [1 << b for b in range(16)] if distance >= self.WORDS else []
        self._masks = np.array([0, *flips], dtype=np.int64)

    def search(self, queries: np.ndarray) -> list[Match]:
        """Matches of (m, 32) uint8 `queries`: every (query, entry) pair at distance ≤ `distance`, sorted."""
        queries = np.ascontiguousarray(queries, dtype=np.uint8)
        out: list[Match] = []
        for start in range(0, len(queries), self.CHUNK):
            out += self._search(queries[start:start + self.CHUNK], start)
        return out

    def _search(self, q: np.ndarray, base: int) -> list[Match]:
        words = q.view(">u2").astype(np.int64)
        m = len(self._masks)
        found_q, found_id = [], []
        for w in range(self.WORDS):
            probes = (words[:, w, None] ^ self._masks[None, :]).ravel()
            first = self._offsets[w, probes]
            length = self._offsets[w, probes + 1] - first
            total = int(length.sum())
            if total == 0:
                continue
            owner = np.repeat(np.repeat(np.arange(len(q)), m), length)
            position = np.repeat(first - (np.cumsum(length) - length), length) + np.arange(total)
            entry = self._order[w, position]
            near = _popcount(self._codes[entry] ^ q[owner]) <= self.distance
            found_q.append(owner[near])
            found_id.append(entry[near])
        if not found_q or not sum(len(f) for f in found_q):
            return []
        pairs = np.unique(np.stack([np.concatenate(found_q), np.concatenate(found_id).astype(np.int64)], 1), axis=0)
        dist = _popcount(self._codes[pairs[:, 1]] ^ q[pairs[:, 0]])
        return [Match(base + int(a), self.list.name, "pdq", int(b), int(d))
                for (a, b), d in zip(pairs.tolist(), dist.tolist(), strict=True)]


_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount(x: np.ndarray) -> np.ndarray:
    """Set bits per row of an (n, bytes) uint8 array."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x.view(np.uint64)).sum(axis=1, dtype=np.int64)
    return _POPCOUNT8[x].sum(axis=1, dtype=np.int64)


# Below this many hashes the exhaustive index is as fast and builds nothing.
MULTI_INDEX_MIN = 20_000


def build_index(hashes: HashList, pdq_distance: int = PDQ_DISTANCE) -> ExactIndex | PdqIndex | MultiIndexPdq:
    """The index that matches `hashes`: exact for sha256 and md5; for PDQ, multi-index hashing when the list is
    large and the distance at most 31, else the exhaustive FAISS index. Both find every pair within the distance."""
    if hashes.kind != "pdq":
        return ExactIndex(hashes)
    if len(hashes) >= MULTI_INDEX_MIN and pdq_distance < 2 * MultiIndexPdq.WORDS:
        return MultiIndexPdq(hashes, pdq_distance)
    return PdqIndex(hashes, pdq_distance)
