"""The data layer against the shared read-only copies of PTB and the sentiment data."""

import gzip
import os
import shutil
import tarfile
from pathlib import Path

import pytest
import torch

from dropbench.harness.data import (
    DEFAULT_CACHE,
    SENTIMENT_SHA256,
    load_ptb,
    load_sentiment,
    resolve_data_dir,
    verify_data,
)
from dropbench.harness.errors import DropbenchError

DATA = Path(os.environ.get("DROPBENCH_DATA", Path(__file__).parents[1] / "../shared/data")).resolve()
needs_data = pytest.mark.usefixtures("data_dir")  # fails, not skips, without the shared data


def _plain_ptb(folder: Path, skip: str | None = None) -> Path:
    """A data folder holding decompressed copies of the PTB files (all but `skip`)."""
    (folder / "ptb").mkdir(parents=True)
    for split in ("train", "valid", "test"):
        name = f"ptb.{split}.txt"
        if name != skip:
            (folder / "ptb" / name).write_bytes(gzip.decompress((DATA / "ptb" / f"{name}.gz").read_bytes()))
    return folder


@needs_data
def test_ptb_counts_and_vocab():
    corpus = load_ptb(DATA)
    assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (929589, 73760, 82430)
    assert len(corpus.vocab) == 10000 and len(set(corpus.vocab)) == 10000
    assert corpus.vocab[corpus.eos_id] == "<eos>" and "<unk>" in corpus.vocab
    for split in (corpus.train, corpus.valid, corpus.test):
        assert split.dtype == torch.int64 and split.dim() == 1
        assert 0 <= int(split.min()) and int(split.max()) < 10000
    # one <eos> per line: 42068 / 3370 / 3761 lines
    assert [int((s == corpus.eos_id).sum()) for s in (corpus.train, corpus.valid, corpus.test)] == [42068, 3370, 3761]
    assert load_ptb(DATA) is corpus  # cached per folder


@needs_data
def test_ptb_plain_text_equals_gzip(tmp_path):
    plain, packed = load_ptb(_plain_ptb(tmp_path)), load_ptb(DATA)
    assert plain.vocab == packed.vocab
    assert all(torch.equal(getattr(plain, s), getattr(packed, s)) for s in ("train", "valid", "test"))


@needs_data
def test_ptb_missing_file(tmp_path):
    _plain_ptb(tmp_path, skip="ptb.valid.txt")
    with pytest.raises(DropbenchError, match="ptb.valid.txt") as err:
        load_ptb(tmp_path)
    message = str(err.value)
    assert "dropbench data fetch ptb" in message and "--data-dir" in message and "\n" not in message


@needs_data
def test_ptb_corrupted_file(tmp_path):
    _plain_ptb(tmp_path)
    path = tmp_path / "ptb" / "ptb.test.txt"
    path.write_text(path.read_text().replace("the", "teh", 1))
    with pytest.raises(DropbenchError, match="checksum mismatch") as err:
        load_ptb(tmp_path)
    assert "ptb.test.txt" in str(err.value) and "dropbench data fetch ptb" in str(err.value)
    assert dict((n, d) for n, _, d in verify_data(tmp_path))["ptb/ptb.test.txt"] == "checksum mismatch"


def test_resolve_data_dir_order(monkeypatch, tmp_path):
    monkeypatch.setenv("DROPBENCH_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir(str(tmp_path / "arg")) == tmp_path / "arg"
    assert resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DROPBENCH_DATA", "relative")
    assert resolve_data_dir(None) == tmp_path / "relative"
    monkeypatch.delenv("DROPBENCH_DATA")
    assert resolve_data_dir(None) == DEFAULT_CACHE == Path.home() / ".cache" / "dropbench"


def test_verify_data_reports_missing(tmp_path):
    results = verify_data(tmp_path)
    assert len(results) == 11
    assert all(not ok and detail == "missing" for _, ok, detail in results)


@needs_data
def test_verify_data_all_ok():
    assert all(ok for _, ok, _ in verify_data(DATA))


@needs_data
def test_sentiment_shapes_and_split():
    data = load_sentiment(DATA)
    n_train, n_test = len(data.train_x), len(data.test_x)
    n = n_train + n_test
    assert 13000 < n < 13600  # "about 13.3k segments"
    assert n_train == int(0.8 * n)
    assert data.train_x.shape == (n_train, 200) and data.test_x.shape == (n_test, 200)
    assert data.train_x.dtype == data.test_x.dtype == torch.int64
    assert data.vocab_size == 20000
    assert int(data.train_x.max()) < 20000 and int(data.test_x.min()) >= 0
    # every review is a start token followed by words, pre-padded, so the last column is a word
    assert int(data.train_x[:, -1].min()) >= 2
    reviews = torch.cat([data.train_review, data.test_review])
    assert len(torch.unique(reviews)) == 5006
    assert int((data.train_x == 1).sum() + (data.test_x == 1).sum()) == 5006
    assert abs(float(data.train_y.mean())) < 1e-4 and abs(float(data.train_y.std(unbiased=False)) - 1) < 1e-4
    assert torch.allclose(data.train_y, (data.train_y_raw - data.mean) / data.std, atol=1e-5)
    assert 0 <= float(data.test_y_raw.min()) and float(data.test_y_raw.max()) <= 1
    assert data.train_y.shape == data.train_review.shape == (n_train,)
    assert data.test_y_raw.shape == data.test_review.shape == (n_test,)
    assert load_sentiment(DATA) is data


@needs_data
@pytest.mark.parametrize("layout", ["scaledata", "scale_data/scaledata"])
def test_sentiment_extracted_equals_archive(tmp_path, layout):
    with tarfile.open(DATA / "scale_data.tar.gz") as tar:
        tar.extractall(tmp_path / "x", filter="data")
    folder = tmp_path / "data"
    (folder / layout).parent.mkdir(parents=True, exist_ok=True)
    shutil.move(tmp_path / "x" / "scaledata", folder / layout)
    extracted, archived = load_sentiment(folder), load_sentiment(DATA)
    for field in ("train_x", "train_y", "train_y_raw", "test_x", "test_y_raw", "train_review", "test_review"):
        assert torch.equal(getattr(extracted, field), getattr(archived, field)), field
    assert (extracted.mean, extracted.std) == (archived.mean, archived.std)


@needs_data
def test_sentiment_missing_and_corrupted(tmp_path):
    with pytest.raises(DropbenchError, match="dropbench data fetch sentiment"):
        load_sentiment(tmp_path)
    with tarfile.open(DATA / "scale_data.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    rel = next(iter(SENTIMENT_SHA256))
    with open(tmp_path / "scaledata" / rel, "ab") as f:
        f.write(b"extra review\n")
    with pytest.raises(DropbenchError, match="checksum mismatch") as err:
        load_sentiment(tmp_path)
    assert rel in str(err.value)
    assert dict((n, d) for n, _, d in verify_data(tmp_path))[rel] == "checksum mismatch"


def test_unreadable_archive(tmp_path):
    (tmp_path / "scale_data.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(DropbenchError, match="cannot read") as err:
        load_sentiment(tmp_path)
    assert "\n" not in str(err.value) and "dropbench data fetch sentiment" in str(err.value)
    assert all(d == "checksum mismatch" for n, _, d in verify_data(tmp_path) if n in SENTIMENT_SHA256)
