"""`fetch` against a loopback HTTP mirror of the shared data folder."""

import contextlib
import functools
import gzip
import io
import os
import socket
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dropbench.harness.data import load_ptb, load_sentiment, verify_data
from dropbench.harness.errors import DropbenchError
from dropbench.harness.fetch import fetch

DATA = Path(os.environ.get("DROPBENCH_DATA", Path(__file__).parents[1] / "../shared/data")).resolve()
needs_data = pytest.mark.usefixtures("data_dir")  # fails, not skips, without the shared data


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve(root: Path):
    """A loopback HTTP server for `root`; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    # A proxy from the environment would swallow requests meant for the loopback server.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


@needs_data
def test_fetch_all_from_mirror(tmp_path):
    dest = tmp_path / "data"
    with serve(DATA) as url:
        written = fetch("all", dest, mirror=url)
        assert dest / "ptb" / "ptb.train.txt" in written and dest / "scale_data.tar.gz" in written
        assert all(ok for _, ok, _ in verify_data(dest))
        assert fetch("all", dest, mirror=url) == []  # everything present and valid: skipped
    corpus = load_ptb(dest)
    assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (929589, 73760, 82430)
    assert len(load_sentiment(dest).train_x) == len(load_sentiment(DATA).train_x)
    assert not [p for p in _files(dest) if p.name.endswith(".part")]


@needs_data
def test_fetch_plain_text_mirror_and_local_folder(tmp_path):
    mirror = tmp_path / "mirror" / "ptb"
    mirror.mkdir(parents=True)
    for name in ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"):
        (mirror / name).write_bytes(gzip.decompress((DATA / "ptb" / f"{name}.gz").read_bytes()))
    with serve(mirror.parent) as url:  # no .gz there: falls back to .txt
        fetch("ptb", tmp_path / "a", mirror=url)
    fetch("ptb", tmp_path / "b", mirror=str(mirror.parent))  # a plain folder as mirror
    for dest in (tmp_path / "a", tmp_path / "b"):
        assert [ok for _, ok, _ in verify_data(dest)][:3] == [True, True, True]


@needs_data
def test_corrupted_download_is_not_kept(tmp_path):
    mirror = tmp_path / "mirror" / "ptb"
    mirror.mkdir(parents=True)
    text = gzip.decompress((DATA / "ptb" / "ptb.train.txt.gz").read_bytes())
    (mirror / "ptb.train.txt.gz").write_bytes(gzip.compress(text.replace(b" the ", b" teh ", 1)))
    dest = tmp_path / "dest"
    with serve(mirror.parent) as url, pytest.raises(DropbenchError, match="checksum") as err:
        fetch("ptb", dest, mirror=url)
    assert "ptb.train.txt" in str(err.value) and "--mirror" in str(err.value)
    assert _files(dest) == []


@needs_data
def test_archive_escaping_dest_is_refused(tmp_path):
    # The genuine members (so the checksums pass) plus one that climbs out of the destination.
    buf = io.BytesIO()
    with tarfile.open(DATA / "scale_data.tar.gz") as src, tarfile.open(fileobj=buf, mode="w:gz") as out:
        for member in src.getmembers():
            out.addfile(member, src.extractfile(member) if member.isfile() else None)
        evil = tarfile.TarInfo("../evil")
        evil.size = 4
        out.addfile(evil, io.BytesIO(b"evil"))
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "scale_data.tar.gz").write_bytes(buf.getvalue())
    dest = tmp_path / "dest"
    with serve(mirror) as url, pytest.raises(DropbenchError, match="unsafe"):
        fetch("sentiment", dest, mirror=url)
    assert not (tmp_path / "evil").exists()
    assert _files(dest) == []


def test_unknown_dataset(tmp_path):
    with pytest.raises(DropbenchError, match="ptb, sentiment, all") as err:
        fetch("ptbb", tmp_path)
    assert "did you mean 'ptb'" in str(err.value)
    assert not (tmp_path / "ptb").exists()


def test_unreachable_mirror(tmp_path):
    with socket.socket() as sock:  # a port that was free a moment ago: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(DropbenchError, match="could not download") as err:
        fetch("ptb", tmp_path, mirror=url)
    message = str(err.value)
    assert f"{url}/ptb/ptb.train.txt" in message and "--mirror" in message and "\n" not in message
    assert _files(tmp_path) == []


@needs_data
def test_data_commands_fetch_and_verify(tmp_path):
    import subprocess
    import sys
    dest = tmp_path / "cache"
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    cli = [sys.executable, "-m", "dropbench.harness.cli", "data"]
    with serve(DATA) as url:
        fetched = subprocess.run(cli + ["fetch", "all", "--mirror", url, "--data-dir", str(dest)], capture_output=True, text=True, env=env)
    assert fetched.returncode == 0, fetched.stderr
    assert "ptb.train.txt" in fetched.stdout and "scale_data.tar.gz" in fetched.stdout
    verified = subprocess.run(cli + ["verify", "--data-dir", str(dest)], capture_output=True, text=True)
    assert verified.returncode == 0 and "all 11 files verified" in verified.stdout
    (dest / "ptb" / "ptb.valid.txt").write_text("tampered\n")
    broken = subprocess.run(cli + ["verify", "--data-dir", str(dest)], capture_output=True, text=True)
    assert broken.returncode == 1 and "BAD ptb/ptb.valid.txt: checksum mismatch" in broken.stdout
    assert "dropbench data fetch" in broken.stderr
