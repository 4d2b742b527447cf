"""Tests of pipelines.download against small zips served from 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import io
import struct
import threading
import zipfile
import zlib
from pathlib import Path

import pytest

from pipelines import download

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample"


def sample_wavs(per_word: int = 2) -> dict[str, bytes]:
    """`mini_speech_commands/<word>/<name>.wav` -> bytes, real clips from data/sample."""
    members = {}
    for word in download.WORDS:
        for path in sorted((SAMPLE / word).glob("*.wav"))[:per_word]:
            members[f"{download.TOP_FOLDER}/{word}/{path.name}"] = path.read_bytes()
    return members


def make_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    # Stored, not deflated: a flipped byte then fails the CRC check, not zlib.
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def good_zip() -> bytes:
    members = sample_wavs()
    members[f"{download.TOP_FOLDER}/README.md"] = b"mini speech commands\n"
    members["__MACOSX/mini_speech_commands/go/._x.wav"] = b"\x00\x05\x16\x07"
    return make_zip(members)


class Server:
    """Serves `routes` (path -> bytes) on a free port; `short` paths send half the body."""

    def __init__(self):
        self.routes: dict[str, bytes] = {}
        self.short: set[str] = set()
        self.claimed_length: dict[str, int] = {}  # path -> Content-Length sent instead
        self.hits: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                server.hits.append(self.path)
                body = server.routes.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Length",
                                 str(server.claimed_length.get(self.path, len(body))))
                self.end_headers()
                self.wfile.write(body[:len(body) // 2] if self.path in server.short else body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture(scope="module")
def server():
    serving = Server()
    serving.thread.start()
    yield serving
    serving.httpd.shutdown()
    serving.httpd.server_close()
    serving.thread.join()


def serve(server: Server, name: str, body: bytes) -> str:
    server.routes[f"/{name}"] = body
    return server.url(f"/{name}")


def assert_failed(capsys, code: int, *words: str) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for word in words:
        assert word in err, err
    return err


def test_downloads_checks_and_unpacks(server, tmp_path, capsys):
    body = good_zip()
    url = serve(server, "good.zip", body)
    dest = tmp_path / "data"
    sha = hashlib.sha256(body).hexdigest()
    assert download.main(["--dest", str(dest), "--url", url, "--sha256", sha.upper()]) == 0
    out = capsys.readouterr().out
    data = dest / download.TOP_FOLDER
    assert f"unpacked 16 WAV files to {data}" in out
    assert f"python -m pipelines.preprocess --data-dir {data} --output-dir" in out
    for word in download.WORDS:
        names = sorted(path.name for path in (data / word).iterdir())
        expected = sorted(path.name for path in (SAMPLE / word).glob("*.wav"))[:2]
        assert names == expected
        assert (data / word / names[0]).read_bytes() == (SAMPLE / word / names[0]).read_bytes()
    # Only the data folder is left: no archive, no staging folder, no __MACOSX.
    assert sorted(path.name for path in dest.iterdir()) == [download.TOP_FOLDER]
    assert download.is_unpacked(data)


def test_second_run_does_nothing(server, tmp_path, capsys):
    url = serve(server, "again.zip", good_zip())
    dest = tmp_path / "data"
    assert download.main(["--dest", str(dest), "--url", url]) == 0
    before = server.hits.count("/again.zip")
    capsys.readouterr()
    assert download.main(["--dest", str(dest), "--url", url]) == 0
    assert "already unpacked" in capsys.readouterr().out
    assert server.hits.count("/again.zip") == before


def test_incomplete_folder_is_not_taken_for_a_download(tmp_path, capsys):
    (tmp_path / download.TOP_FOLDER / "go").mkdir(parents=True)
    code = download.main(["--dest", str(tmp_path), "--url", "http://127.0.0.1:9/x.zip"])
    assert_failed(capsys, code, str(tmp_path / download.TOP_FOLDER), "not a complete unpack")


@pytest.mark.parametrize("name, body, reason", [
    ("truncated.zip", good_zip()[:-200], "corrupt zip"),
    ("notzip.zip", b"<html>not a zip</html>", "corrupt zip"),
])
def test_bad_zip(server, tmp_path, capsys, name, body, reason):
    url = serve(server, name, body)
    dest = tmp_path / "data"
    assert_failed(capsys, download.main(["--dest", str(dest), "--url", url]), url, reason)
    assert not dest.exists()


def test_crc_mismatch(server, tmp_path, capsys):
    body = bytearray(good_zip())
    # Flip one byte of the first WAV's samples, well past its 44-byte header.
    offset = body.index(b"data", body.index(b"WAVE")) + 200
    body[offset] ^= 0xFF
    url = serve(server, "crc.zip", bytes(body))
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    assert_failed(capsys, download.main(["--dest", str(dest), "--url", url]),
                  url, "corrupt zip", "CRC")
    # An existing DEST keeps what it had and gets nothing else.
    assert sorted(path.name for path in dest.iterdir()) == ["keep.txt"]


def test_short_transfer(server, tmp_path, capsys):
    url = serve(server, "short.zip", good_zip())
    server.short.add("/short.zip")
    dest = tmp_path / "data"
    assert_failed(capsys, download.main(["--dest", str(dest), "--url", url]), url)
    assert not dest.exists()


def test_wrong_sha256(server, tmp_path, capsys):
    url = serve(server, "sha.zip", good_zip())
    dest = tmp_path / "data"
    code = download.main(["--dest", str(dest), "--url", url, "--sha256", "0" * 64])
    assert_failed(capsys, code, url, "SHA-256 mismatch", "0" * 64)
    assert not dest.exists()


def test_malformed_sha256_is_refused_before_downloading(tmp_path, capsys):
    code = download.main(["--dest", str(tmp_path), "--sha256", "abc"])
    assert_failed(capsys, code, "--sha256", "64 hexadecimal")


@pytest.mark.parametrize("members, missing", [
    ({f"other/{word}/a.wav": b"x" for word in download.WORDS}, "no mini_speech_commands/"),
    ({name: data for name, data in sample_wavs().items() if "/stop/" not in name},
     "mini_speech_commands/stop/"),
])
def test_wrong_layout(server, tmp_path, capsys, members, missing):
    url = serve(server, f"layout-{len(members)}.zip", make_zip(members))
    dest = tmp_path / "data"
    assert_failed(capsys, download.main(["--dest", str(dest), "--url", url]),
                  url, "unexpected layout", missing)
    assert not dest.exists()


def test_http_404(server, tmp_path, capsys):
    url = server.url("/missing.zip")
    dest = tmp_path / "data"
    assert_failed(capsys, download.main(["--dest", str(dest), "--url", url]),
                  url, "HTTP 404")
    assert not dest.exists()


def test_connection_refused(tmp_path, capsys):
    # Port 9 (discard) on the loopback: nothing listens there.
    url = "http://127.0.0.1:9/mini_speech_commands.zip"
    assert_failed(capsys, download.main(["--dest", str(tmp_path / "d"), "--url", url]),
                  url, "cannot download")


@pytest.mark.parametrize("evil", [
    "mini_speech_commands/../../escaped.wav",
    "../escaped.wav",
    "/tmp/escaped.wav",
])
def test_path_traversal_member(server, tmp_path, capsys, evil):
    members = sample_wavs(per_word=1)
    members[evil] = b"RIFF"
    url = serve(server, f"evil-{abs(hash(evil))}.zip", make_zip(members))
    dest = tmp_path / "a" / "b"
    assert_failed(capsys, download.main(["--dest", str(dest), "--url", url]),
                  url, "unsafe path", "escapes")
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").rglob("*"))
    assert not list(tmp_path.rglob("escaped.wav"))


def test_default_is_https_with_the_tutorials_checksum_pinned():
    assert download.DEFAULT_URL.startswith("https://")
    assert download.build_parser().parse_args([]).url == download.DEFAULT_URL
    pinned = download.KNOWN_SHA256[download.DEFAULT_URL]
    assert len(pinned) == 64 and int(pinned, 16)
    assert download.KNOWN_SHA256[download.DEFAULT_URL.replace("https:", "http:")] == pinned


def test_a_pinned_checksum_is_checked_without_sha256(server, tmp_path, capsys, monkeypatch):
    body = good_zip()
    url = serve(server, "pinned.zip", body)
    monkeypatch.setitem(download.KNOWN_SHA256, url, "ab" * 32)
    dest = tmp_path / "data"
    assert_failed(capsys, download.main(["--dest", str(dest), "--url", url]),
                  url, "SHA-256 mismatch", "ab" * 32, "pinned")
    assert not dest.exists()
    # --sha256 overrides the pinned value.
    sha = hashlib.sha256(body).hexdigest()
    assert download.main(["--dest", str(dest), "--url", url, "--sha256", sha]) == 0
    assert "--sha256 checksum matched" in capsys.readouterr().out


def test_an_unknown_url_without_sha256_says_it_was_not_checked(server, tmp_path, capsys):
    url = serve(server, "unchecked.zip", good_zip())
    assert download.main(["--dest", str(tmp_path / "data"), "--url", url]) == 0
    assert "not checked: no known checksum for this URL" in capsys.readouterr().out


def deflated_zeros(size: int, block: int = 1 << 24) -> tuple[bytes, int]:
    """(raw deflate stream, CRC-32) of `size` zero bytes, made from one compressed block.

    After a full flush the compressor starts afresh, so every block of zeros compresses
    to the same bytes: the stream is that block repeated, without compressing it all.
    """
    assert size % block == 0
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    one = compressor.compress(bytes(block)) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    zeros = bytes(block)
    for _ in range(size // block):
        crc = zlib.crc32(zeros, crc)
    return one * (size // block) + compressor.flush(), crc


def hand_made_zip(members: dict[str, bytes], bomb_name: str, bomb_size: int) -> bytes:
    """A zip of stored `members` plus one deflated member of `bomb_size` zero bytes."""
    entries = [(name, 0, data, zlib.crc32(data), len(data)) for name, data in members.items()]
    bomb, crc = deflated_zeros(bomb_size)
    entries.append((bomb_name, 8, bomb, crc, bomb_size))
    body, directory = b"", b""
    for name, method, data, crc, size in entries:
        encoded = name.encode()
        fields = struct.pack("<HHHHHIIIHH", 20, 0, method, 0, 0x21, crc, len(data), size,
                             len(encoded), 0)
        directory += (b"PK\x01\x02" + struct.pack("<H", 20) + fields
                      + struct.pack("<HHHII", 0, 0, 0, 0, len(body)) + encoded)
        body += b"PK\x03\x04" + fields + encoded + data
    end = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, len(entries), len(entries),
                                        len(directory), len(body), 0)
    return body + directory + end


def test_a_zip_bomb_of_zeros_is_refused_before_unpacking(server, tmp_path, capsys):
    size = download.MAX_UNPACKED_BYTES + (1 << 24)
    body = hand_made_zip(sample_wavs(per_word=1),
                         f"{download.TOP_FOLDER}/yes/zeros.wav", size)
    assert len(body) < 2_000_000  # a 1 GB member in a 1 MB zip
    with zipfile.ZipFile(io.BytesIO(body)) as archive:  # a well-formed zip
        assert archive.getinfo(f"{download.TOP_FOLDER}/yes/zeros.wav").file_size == size
    url = serve(server, "bomb.zip", body)
    dest = tmp_path / "data"
    dest.mkdir()
    assert_failed(capsys, download.main(["--dest", str(dest), "--url", url]),
                  url, f"over the limit of {download.MAX_UNPACKED_BYTES:,}")
    assert list(dest.iterdir()) == []


def test_too_many_members_are_refused_before_the_archive_is_read(server, tmp_path, capsys):
    members = sample_wavs(per_word=1)
    for i in range(download.MAX_MEMBERS + 1 - len(members)):
        members[f"{download.TOP_FOLDER}/go/{i}"] = b""
    url = serve(server, "many.zip", make_zip(members))
    dest = tmp_path / "data"
    assert_failed(capsys, download.main(["--dest", str(dest), "--url", url]),
                  url, f"{download.MAX_MEMBERS + 1:,} members in archive, over the limit")
    assert not dest.exists()


def test_a_download_larger_than_the_limit_is_refused_before_reading_it(
        server, tmp_path, capsys):
    url = serve(server, "huge.zip", good_zip())
    server.claimed_length["/huge.zip"] = download.MAX_DOWNLOAD_BYTES + 1
    dest = tmp_path / "data"
    assert_failed(capsys, download.main(["--dest", str(dest), "--url", url]),
                  url, "download limit")
    assert not dest.exists()


def test_an_oversized_table_of_contents_is_refused(server, tmp_path, capsys):
    # Few members with very long names: the count is fine, the directory is not.
    members = sample_wavs(per_word=1)
    long_name = "x" * 5000
    for i in range(download.MAX_DIRECTORY_BYTES // 5000 + 1):
        members[f"{download.TOP_FOLDER}/go/{i}{long_name}"] = b""
    url = serve(server, "toc.zip", make_zip(members))
    dest = tmp_path / "data"
    assert_failed(capsys, download.main(["--dest", str(dest), "--url", url]),
                  url, "table of contents, over the limit")
    assert not dest.exists()
