"""A real ComfyUI server for the end-to-end tests: started on loopback with `--cpu` and a temporary
--base-directory holding our pack, stopped whatever happens.

Needs COMFYUI_DIR (a ComfyUI checkout); the server runs with COMFYUI_PYTHON (default: this
interpreter), which must have ComfyUI's requirements plus ours.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
PACK_NAME = "comfyui-colorflow"
START_TIMEOUT = 180
RUN_TIMEOUT = 300


class Server:
    """HTTP access to a running ComfyUI (JSON in and out) plus its log."""

    def __init__(self, url: str, base: Path, log: Path) -> None:
        self.url, self.base, self.log = url, base, log

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, payload: dict) -> tuple[int, dict]:
        request = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def run(self, prompt: dict) -> dict:
        """Queue ``prompt`` and wait for its history entry."""
        status, answer = self.post("/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})
        assert status == 200, answer
        prompt_id = answer["prompt_id"]
        deadline = time.monotonic() + RUN_TIMEOUT
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                return history[prompt_id]
            time.sleep(1)
        raise AssertionError(f"prompt did not finish in {RUN_TIMEOUT} s; server log:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def base_with_pack(base: Path) -> Path:
    """A --base-directory whose custom_nodes/ holds this repository as the pack."""
    (base / "custom_nodes").mkdir(parents=True)
    (base / "custom_nodes" / PACK_NAME).symlink_to(REPO, target_is_directory=True)
    return base


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(base: Path) -> Iterator[Server]:
    """ComfyUI serving ``base`` on a free loopback port until the block ends."""
    port = _free_port()
    log = base / "server.log"
    command = [os.environ.get("COMFYUI_PYTHON", sys.executable), "main.py", "--cpu", "--listen", "127.0.0.1",
               "--port", str(port), "--base-directory", str(base), "--database-url", "sqlite:///:memory:",
               "--disable-auto-launch"]
    with open(log, "w") as log_file:
        process = subprocess.Popen(command, cwd=os.environ["COMFYUI_DIR"], stdout=log_file,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", base, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"ComfyUI exited with {process.returncode} during start-up:\n{server.log_tail()}")
            try:
                server.get("/system_stats")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    pytest.fail(f"ComfyUI not ready after {START_TIMEOUT} s:\n{server.log_tail()}")
                time.sleep(1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)
