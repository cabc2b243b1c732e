"""The two data sets, loaded and checked: Penn Treebank (word level, Mikolov's 10k-vocabulary
version) for language modelling and Pang & Lee's movie review scale data v1.0 for sentiment
regression.

Everything lives under one data folder (see `resolve_data_dir`):

    <data>/ptb/ptb.{train,valid,test}.txt      (or .txt.gz)
    <data>/scale_data.tar.gz                   (or the extracted <data>/scaledata/<author>/...,
                                                or <data>/scale_data/scaledata/<author>/...)

Every file is checked against the SHA-256 tables below (the single source of truth; `fetch`
imports them) before it is used, so a result can never come from a silently different corpus.
Loaded data sets are cached per folder for the life of the process; treat their tensors as
read-only.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import DropbenchError

DEFAULT_CACHE = Path.home() / ".cache" / "dropbench"

# SHA-256 of the decompressed PTB text files (shared/data/README.md).
PTB_SHA256 = {
    "ptb.train.txt": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    "ptb.valid.txt": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    "ptb.test.txt": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
}

SENTIMENT_ARCHIVE = "scale_data.tar.gz"
SENTIMENT_AUTHORS = ("Dennis+Schwartz", "James+Berardinelli", "Scott+Renshaw", "Steve+Rhodes")
# SHA-256 of the files inside the archive, keyed by their path under scaledata/. The archive's
# own hash is not checked: the shared copy is repacked, so it differs from the original.
SENTIMENT_SHA256 = {
    "Dennis+Schwartz/subj.Dennis+Schwartz": "cb26f952c091c510c786627a45a5af3fb5c87a986f9aa3eb7eef6e4ed1797a02",
    "James+Berardinelli/subj.James+Berardinelli": "1b612ca24494cc675f5e58c1fc320501446da2ed2520a00edb3522b565640658",
    "Scott+Renshaw/subj.Scott+Renshaw": "c1b0b7b80fa4161053fee1125e7fb7bfba987fcfa08a8ab525504eff4c988cec",
    "Steve+Rhodes/subj.Steve+Rhodes": "33ef24625d183f6f9ecf03f356e055e9ff998ac7773f48939a364e9900bbf10a",
    "Dennis+Schwartz/rating.Dennis+Schwartz": "b9057227d5b1324f49d5f402f1cad0ae472f3d130f35a24a5334ab7db6726be7",
    "James+Berardinelli/rating.James+Berardinelli": "91abefa233432a2b92a82e0cb40706bd38e48e1ce4165e7a16584a6ec1dd8ed0",
    "Scott+Renshaw/rating.Scott+Renshaw": "cbe4f07da184e0c68a1051503c91c2474bb23c8d6b433e57d99dc2a8ae43760c",
    "Steve+Rhodes/rating.Steve+Rhodes": "bbbe28efbe998827cfe2737a25d19977091a2deea141461eb8e241ce6f5bc03d",
}

# Sentiment preprocessing constants (paper.md section 3).
SEQ_LEN = 200
SENTIMENT_VOCAB = 20000
PAD, START, OOV = 0, 1, 2
FIRST_WORD_ID = 3
TRAIN_FRACTION = 0.8

_WHERE = "pass --data-dir or set DROPBENCH_DATA if the data lives elsewhere"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def one_line(exc: object) -> str:
    """An exception's text on one line (tarfile's "could not be opened" spans several)."""
    return " ".join(str(exc).split())


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The data folder: `data_dir` (from --data-dir) if given, else $DROPBENCH_DATA, else
    ~/.cache/dropbench. Relative paths are taken relative to the current directory."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser().absolute()
    env = os.environ.get("DROPBENCH_DATA")
    if env:
        return Path(env).expanduser().absolute()
    return DEFAULT_CACHE


def _checksum_error(what: str, expected: str, actual: str, dataset: str) -> DropbenchError:
    return DropbenchError(
        f"checksum mismatch for {what}: expected sha256 {expected[:12]}..., got {actual[:12]}...; "
        f"delete it and run `dropbench data fetch {dataset}`"
    )


def _lines(text: str) -> list[str]:
    # Split on "\n" only (as iterating over the file does); str.splitlines would also split on
    # form feeds and other separators that may occur inside a line.
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


# ---------------------------------------------------------------------------------------------
# Penn Treebank

@dataclass(frozen=True)
class Corpus:
    """A word-level corpus: `train`, `valid`, `test` are 1-D int64 tensors of token ids (one
    `<eos>` after every line); `vocab[i]` is the word with id i; `eos_id` is the id of `<eos>`."""

    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    vocab: tuple[str, ...]
    eos_id: int


def _ptb_file(ptb_dir: Path, name: str) -> Path | None:
    """The plain or gzipped copy of `name` in `ptb_dir` (plain preferred), or None."""
    for path in (ptb_dir / name, ptb_dir / f"{name}.gz"):
        if path.is_file():
            return path
    return None


def _ptb_bytes(path: Path) -> bytes:
    """The decompressed content of a PTB file. A .gz that does not decompress is returned raw,
    so it fails the checksum like any other damaged file."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError):
            return raw
    return raw


def _read_ptb(ptb_dir: Path, name: str) -> str:
    path = _ptb_file(ptb_dir, name)
    if path is None:
        raise DropbenchError(
            f"missing PTB file {name} (or {name}.gz) in {ptb_dir}; "
            f"run `dropbench data fetch ptb` or {_WHERE}"
        )
    text = _ptb_bytes(path)
    actual = sha256(text)
    if actual != PTB_SHA256[name]:
        raise _checksum_error(str(path), PTB_SHA256[name], actual, "ptb")
    return text.decode("utf-8")


def _ptb_words(text: str) -> list[str]:
    """Whitespace tokens with `<eos>` closing every line (the Zaremba / PyTorch example
    convention that gives the published token counts)."""
    return [w for line in _lines(text) for w in line.split() + ["<eos>"]]


@functools.lru_cache(maxsize=4)
def _load_ptb(data_dir: Path) -> Corpus:
    ptb_dir = data_dir / "ptb"
    words = {split: _ptb_words(_read_ptb(ptb_dir, f"ptb.{split}.txt")) for split in ("train", "valid", "test")}
    index = {w: i for i, w in enumerate(dict.fromkeys(words["train"]))}  # order of first appearance

    def ids(split: str) -> torch.Tensor:
        # valid/test use only training words (<unk> is already substituted); the checksums
        # guarantee it, so a plain lookup is enough.
        return torch.tensor([index[w] for w in words[split]], dtype=torch.int64)

    return Corpus(ids("train"), ids("valid"), ids("test"), tuple(index), index["<eos>"])


def load_ptb(data_dir: str | Path) -> Corpus:
    """Penn Treebank from `data_dir/ptb/`: 929589 / 73760 / 82430 tokens, 10000 word types.
    Raises DropbenchError when a file is missing or fails its checksum."""
    return _load_ptb(Path(data_dir).resolve())


# ---------------------------------------------------------------------------------------------
# Sentiment (Pang & Lee scale data)

@dataclass(frozen=True)
class SentimentData:
    """Review segments for rating regression.

    train_x, test_x: (N, 200) int64 word ids, pre-padded with 0; 1 starts a review, 2 is an
        out-of-vocabulary word, ids are < vocab_size.
    train_y: (N_train,) float32 ratings standardised with the training mean/std;
    train_y_raw, test_y_raw: (N,) float32 raw ratings in [0, 1] (RMSE is reported on these);
        `train_y = (train_y_raw - mean) / std`.
    train_review, test_review: (N,) int64 index of the review each segment came from, counting
        reviews in file order with the authors sorted (a review can straddle the split).
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    train_y_raw: torch.Tensor
    test_x: torch.Tensor
    test_y_raw: torch.Tensor
    mean: float
    std: float
    vocab_size: int
    train_review: torch.Tensor
    test_review: torch.Tensor


def _sentiment_source(data_dir: Path) -> Path | None:
    """The extracted folder if there is one (cheaper to read), else the archive, else None."""
    for path in (data_dir / "scaledata", data_dir / "scale_data" / "scaledata", data_dir / SENTIMENT_ARCHIVE):
        if path.exists():
            return path
    return None


def _sentiment_files(source: Path) -> dict[str, bytes]:
    """The contents of the checked files present in `source`, keyed as in SENTIMENT_SHA256.
    Archive members are read in memory; nothing is extracted."""
    if source.is_dir():
        return {rel: (source / rel).read_bytes() for rel in SENTIMENT_SHA256 if (source / rel).is_file()}
    wanted = {f"scaledata/{rel}": rel for rel in SENTIMENT_SHA256}
    try:
        with tarfile.open(source) as tar:
            return {
                wanted[m.name.removeprefix("./")]: tar.extractfile(m).read()
                for m in tar.getmembers()
                if m.isfile() and m.name.removeprefix("./") in wanted
            }
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DropbenchError(
            f"cannot read {source} ({one_line(exc)}); delete it and run `dropbench data fetch sentiment`"
        ) from None


def _read_sentiment(data_dir: Path) -> dict[str, bytes]:
    source = _sentiment_source(data_dir)
    if source is None:
        raise DropbenchError(
            f"missing sentiment data in {data_dir} (expected {SENTIMENT_ARCHIVE} or scaledata/); "
            f"run `dropbench data fetch sentiment` or {_WHERE}"
        )
    files = _sentiment_files(source)
    for rel, expected in SENTIMENT_SHA256.items():
        if rel not in files:
            raise DropbenchError(
                f"missing scaledata/{rel} in {source}; run `dropbench data fetch sentiment` or {_WHERE}"
            )
        actual = sha256(files[rel])
        if actual != expected:
            raise _checksum_error(f"scaledata/{rel} in {source}", expected, actual, "sentiment")
    return files


@functools.lru_cache(maxsize=4)
def _load_sentiment(data_dir: Path) -> SentimentData:
    files = _read_sentiment(data_dir)
    reviews: list[list[str]] = []
    ratings: list[float] = []
    for author in sorted(SENTIMENT_AUTHORS):
        texts = _lines(files[f"{author}/subj.{author}"].decode("utf-8"))
        scores = _lines(files[f"{author}/rating.{author}"].decode("utf-8"))
        reviews += [text.lower().split() for text in texts]
        ratings += [float(s) for s in scores]
    assert len(reviews) == len(ratings)  # guaranteed by the checksums

    # Ids by descending frequency over all reviews; most_common sorts stably and Counter keeps
    # first-appearance order, so ties go to the word seen first. Ids >= SENTIMENT_VOCAB are OOV.
    counts = Counter(w for words in reviews for w in words)
    ranked = counts.most_common(SENTIMENT_VOCAB - FIRST_WORD_ID)
    word_id = {w: FIRST_WORD_ID + i for i, (w, _) in enumerate(ranked)}

    order = np.random.RandomState(0).permutation(len(reviews))
    seqs = [[START] + [word_id.get(w, OOV) for w in reviews[r]] for r in order]
    n_segments = sum(-(-len(s) // SEQ_LEN) for s in seqs)
    x = np.full((n_segments, SEQ_LEN), PAD, dtype=np.int64)
    y = np.empty(n_segments, dtype=np.float64)
    review = np.empty(n_segments, dtype=np.int64)
    row = 0
    for r, seq in zip(order, seqs):
        for start in range(0, len(seq), SEQ_LEN):
            chunk = seq[start:start + SEQ_LEN]
            x[row, SEQ_LEN - len(chunk):] = chunk  # pre-padding: the last state sees real words
            y[row], review[row] = ratings[r], r
            row += 1

    n_train = int(TRAIN_FRACTION * n_segments)
    mean, std = float(y[:n_train].mean()), float(y[:n_train].std())
    as_f32 = lambda a: torch.from_numpy(a.astype(np.float32))  # noqa: E731
    return SentimentData(
        train_x=torch.from_numpy(x[:n_train].copy()),
        train_y=as_f32((y[:n_train] - mean) / std),
        train_y_raw=as_f32(y[:n_train]),
        test_x=torch.from_numpy(x[n_train:].copy()),
        test_y_raw=as_f32(y[n_train:]),
        mean=mean,
        std=std,
        vocab_size=SENTIMENT_VOCAB,
        train_review=torch.from_numpy(review[:n_train].copy()),
        test_review=torch.from_numpy(review[n_train:].copy()),
    )


def load_sentiment(data_dir: str | Path) -> SentimentData:
    """The sentiment segments (about 13.3k of 200 tokens from 5006 reviews, 80% train) from
    `data_dir/scale_data.tar.gz` or its extracted folder, preprocessed as in paper.md section 3.
    Raises DropbenchError when data is missing or fails its checksums."""
    return _load_sentiment(Path(data_dir).resolve())


# ---------------------------------------------------------------------------------------------

def verify_data(data_dir: str | Path) -> list[tuple[str, bool, str]]:
    """(name, ok, detail) for the 3 PTB and 8 sentiment files, detail being "ok", "missing" or
    "checksum mismatch" (also for a file that cannot be read). Never raises for bad data."""
    data_dir = Path(data_dir)

    def status(content: bytes | None, expected: str) -> tuple[bool, str]:
        if content is None:
            return False, "missing"
        return (True, "ok") if sha256(content) == expected else (False, "checksum mismatch")

    results = []
    for name, expected in PTB_SHA256.items():
        path = _ptb_file(data_dir / "ptb", name)
        results.append((f"ptb/{name}", *status(None if path is None else _ptb_bytes(path), expected)))

    source = _sentiment_source(data_dir)
    try:
        files = {} if source is None else _sentiment_files(source)
    except DropbenchError:
        files = {rel: b"" for rel in SENTIMENT_SHA256}  # unreadable archive: report as damaged
    for rel, expected in SENTIMENT_SHA256.items():
        results.append((rel, *status(files.get(rel), expected)))
    return results
