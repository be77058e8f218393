from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.services import chroma_server


@pytest.fixture(scope="session")
def dev_idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The project's dev OIDC issuer: real RSA keys, discovery and JWKS over HTTP."""
    from capture.devidp import serve

    server = serve("127.0.0.1", 0, tmp_path_factory.mktemp("idp"))
    try:
        yield server.issuer_url
    finally:
        server.shutdown()


@pytest.fixture(scope="session")
def chroma_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Chroma server (`chroma run`) from the peers venv."""
    with chroma_server(tmp_path_factory.mktemp("chroma") / "data") as url:
        yield url


@pytest.fixture
def gw_tmp(tmp_path: Path) -> Path:
    return tmp_path
