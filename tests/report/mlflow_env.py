"""MLflow for the tracking test, installed by the test itself into a cache (no change to the project's venv):
the server (full `mlflow`, its own venv) and the client the stage programs import (`mlflow-skinny` and the
packages it needs beyond the venv's, --no-deps into a private site that goes on PYTHONPATH)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

VERSION = "3.17.2"
CACHE = Path(os.environ.get("PIPELINE_TEST_CACHE", Path.home() / ".cache" / "pipeline-tests"))
# `pip install --dry-run mlflow-skinny==3.17.2` over the project's venv: what it would add (nothing it would upgrade).
CLIENT = [f"mlflow-skinny=={VERSION}", "GitPython==3.2.1", "annotated-doc==0.0.7", "cachetools==7.3.3",
          "databricks-sdk==0.162.0", "fastapi==0.165.0", "gitdb==4.0.12", "google-auth==2.63.0",
          "importlib_metadata==9.1.0", "opentelemetry-api==1.45.2", "opentelemetry-proto==1.45.2",
          "opentelemetry-sdk==1.45.2", "opentelemetry-semantic-conventions==0.66b2", "protobuf==7.36.2",
          "pyasn1==0.6.5", "pyasn1_modules==0.4.2", "smmap==5.0.3", "sqlparse==0.6.1", "starlette==1.10.0",
          "uvicorn==0.54.0", "zipp==4.1.2"]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pip(argv: list[str], python: str = sys.executable) -> None:
    done = subprocess.run([python, "-m", "pip", "install", "--quiet", *argv], capture_output=True, text=True,
                          timeout=900, check=False)
    assert done.returncode == 0, f"pip install {argv[-1]} failed: {done.stderr[-1500:]}"


# Likewise for `tensorboard==2.21.0` (torch.utils.tensorboard's SummaryWriter needs it).
TENSORBOARD = ["tensorboard==2.21.0", "Markdown==3.11.3", "grpcio==1.85.3", "protobuf==7.36.2",
               "tensorboard-data-server==0.7.2"]


def tensorboard_site() -> Path:
    site = CACHE / "tensorboard-2.21.0"
    if not (site / "tensorboard" / "__init__.py").is_file():
        _pip(["--no-deps", "--target", str(site), *TENSORBOARD])
    return site


def client_site() -> Path:
    site = CACHE / f"mlflow-client-{VERSION}"
    if not (site / "mlflow" / "__init__.py").is_file():
        _pip(["--no-deps", "--target", str(site), *CLIENT])
    return site


def server_python() -> Path:
    venv = CACHE / f"mlflow-server-{VERSION}"
    if not (venv / "bin" / "mlflow").is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        _pip([f"mlflow=={VERSION}"], str(venv / "bin" / "python"))
    return venv / "bin" / "mlflow"


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """`mlflow server` on loopback with a SQLite store and proxied artifacts, stopped after the test."""
    port = free_port()
    log = open(tmp_path / "mlflow-server.log", "wb")  # noqa: SIM115 (open while the server runs, across the yield)
    server = subprocess.Popen([str(server_python()), "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                               "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.read().strip() == b"OK":
                    break
        except OSError:
            pass
        assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "mlflow-server.log").read_text()
        time.sleep(1)
    try:
        yield url
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
        log.close()
