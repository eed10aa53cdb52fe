"""Start moto's standalone S3 server on 127.0.0.1 at a free port: a local S3 for tests and for trying s3:// stores.

    .venv/bin/python scripts/s3_server.py            # prints the endpoint and the env to use, Ctrl-C stops it

then, in another shell:
    export AWS_ENDPOINT_URL=http://127.0.0.1:<port> AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
    python -c "import stores; stores.Store('s3://engine/root')"   # create the bucket first, e.g. with s3fs

From Python (tests): `with S3Server() as server: server.endpoint_url ...` starts it in a subprocess and stops it
(by its own pid) on exit. The credentials are fake; moto accepts any.
"""

import argparse
import subprocess
import sys
import time
import urllib.request

from stores.fsio import free_port

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class S3Server:
    """moto_server in a child process on `host`:`port` (a free port by default)."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, start_timeout: float = 30.0):
        self.host = host
        self.port = port or free_port(host)
        self.start_timeout = start_timeout
        self.process: subprocess.Popen | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "S3Server":
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"moto server exited with code {self.process.returncode} (port {self.port} taken?)"
                )
            try:
                with urllib.request.urlopen(self.endpoint_url + "/moto-api/", timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto server did not answer on {self.endpoint_url} within {self.start_timeout} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> "S3Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="default: a free port")
    args = parser.parse_args()
    with S3Server(args.host, args.port) as server:
        print(f"S3 endpoint: {server.endpoint_url}")
        print(
            f"export AWS_ENDPOINT_URL={server.endpoint_url}",
            *(f"{k}={v}" for k, v in FAKE_CREDENTIALS.items()),
        )
        sys.stdout.flush()
        try:
            server.process.wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
