"""A Cloud Storage server on loopback, for tests of everything that reads or writes gs://.

Test modules import the fixture by name::

    from tests.gcs import gcs_server  # noqa: F401  (pytest finds fixtures by name)

    def test_something(gcs_server):
        bucket = gcs_server            # an empty bucket on the emulator
        ...  # gs://{bucket}/... works through google-cloud-storage and Beam's FileSystems

The server is `gcp-storage-emulator`'s, run in a thread of the test process on a free
127.0.0.1 port with in-memory storage. Two clients have to be pointed at it:

* google-cloud-storage's `Client()` reads `STORAGE_EMULATOR_HOST`: it then talks to that
  endpoint and, when it is given no credentials, uses anonymous ones.
* Beam's `GcsIO` (apache_beam/io/gcp/gcsio.py, `create_storage_client`) builds the same
  `storage.Client`, but first asks `google.auth.default()` for credentials, retrying four
  times with exponential backoff (about 20 s) before it falls back to an anonymous client,
  and on a machine without credentials `google.auth` also probes the GCE metadata server.
  `GOOGLE_APPLICATION_CREDENTIALS` therefore names an `authorized_user` file that carries an
  access token valid until 2999: `google.auth` loads it without any network call, the token
  never needs refreshing, and the emulator ignores the Authorization header it ends up in.
  Beam caches these credentials for the life of the process, which is harmless: they hold
  no endpoint, only the token.
"""

from __future__ import annotations

import json
import logging
import socket
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from gcp_storage_emulator.server import create_server

HOST = "127.0.0.1"
PROJECT = "kws-emulated"
# An access token that google.auth considers valid, so nothing ever asks for a new one.
_CREDENTIALS = {
    "type": "authorized_user",
    "client_id": "emulator",
    "client_secret": "emulator",
    "refresh_token": "emulator",
    "token": "emulator",
    "expiry": "2999-01-01T00:00:00Z",
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def emulator_environment(endpoint: str, credentials_file: Path) -> dict[str, str]:
    """The environment that sends google-cloud-storage and Beam's GcsIO to `endpoint`.

    Args:
      endpoint: the emulator's base URL, e.g. http://127.0.0.1:PORT.
      credentials_file: where the placeholder credentials were written.

    Returns:
      Variable name -> value, for `monkeypatch.setenv` or a subprocess's `env`.
    """
    return {
        "STORAGE_EMULATOR_HOST": endpoint,
        "GOOGLE_APPLICATION_CREDENTIALS": str(credentials_file),
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        # Belt and braces for subprocesses and late imports (google.auth reads these when
        # first imported): should anything still look for a GCE metadata server, it finds
        # a closed port on loopback instead of going out to 169.254.169.254.
        "NO_GCE_CHECK": "true",
        "GCE_METADATA_HOST": f"{HOST}:{free_port()}",
        "GCE_METADATA_IP": f"{HOST}:{free_port()}",
    }


@pytest.fixture
def gcs_server(tmp_path_factory: pytest.TempPathFactory,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Starts an emulated Cloud Storage on loopback; yields the name of an empty bucket.

    The environment variables of `emulator_environment` are set for the duration of the
    test (subprocesses inherit them) and the server is stopped afterwards.
    """
    bucket = f"kws-test-{uuid.uuid4().hex[:12]}"
    credentials_file = tmp_path_factory.mktemp("gcs") / "credentials.json"
    credentials_file.write_text(json.dumps(_CREDENTIALS))
    port = free_port()
    endpoint = f"http://{HOST}:{port}"
    # The emulator logs every request, and warns about each response it sends as a string;
    # tests only want to hear about its errors.
    logging.getLogger("gcp_storage_emulator").setLevel(logging.ERROR)
    server = create_server(HOST, port, in_memory=True, default_bucket=bucket)
    server.start()  # returns once the socket is bound and serving
    try:
        for name, value in emulator_environment(endpoint, credentials_file).items():
            monkeypatch.setenv(name, value)
        yield bucket
    finally:
        server.stop()

