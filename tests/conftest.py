"""Shared pytest setup. Area fixtures live in tests/<area>/conftest.py."""

import importlib.util
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

# Tests run on 2 shared cores: keep BLAS/torch from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "2")

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _load_script(name: str):
    """scripts/<name>.py as a module: the scripts run as files and are not installed as a package."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses (prefect_server's) look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_script():
    """``load_script("retrain_spread")`` -> the module of scripts/retrain_spread.py."""
    return _load_script


@pytest.fixture(scope="session")
def trained_text_model():
    """(text model, its embedded text encoder), both in eval mode: the embedded model's text path trained for
    15 steps on one synthetic scene, the first train scene (``split_seeds("train", 1)[0]``), clicks and boxes off
    (about 6 s on one core). Enough for that scene's phrases to be judged present (presence about 0.68) and to
    give masks (PHRASE of test_text_autogen: 4 instances at a 16 x 16 grid here, depending on the CPU); the text
    stage, the Label Studio text box and the text round share it."""
    from sam_core.text_train import TextTrainConfig, TextTrainer

    one_scene = dict(
        dataset_size=1, scenes_per_step=1, warmup_steps=2, lr=2e-3, point_probability=0.0, box_probability=0.0
    )
    trainer = TextTrainer(TextTrainConfig(steps=15, decoder_lr_scale=0.1, **one_scene))
    for _ in range(15):
        trainer.step()
    return trainer.model.eval(), trainer.text_encoder.eval()


@pytest.fixture(scope="session")
def register_text_model(trained_text_model):
    """``register_text_model(store, version)``: the trained text model's checkpoint written to the store and
    registered as ``version`` under the embedded model's config, as scripts/train_text.py's best.pt is with
    `model add`."""
    import io

    import torch

    from sam_core.embedded import embedded_config_name
    from sam_core.text_model import text_checkpoint
    from tasks.models import register_model

    model, encoder = trained_text_model
    buffer = io.BytesIO()
    torch.save(text_checkpoint(model, encoder, config={}, metadata={}), buffer)

    def register(store, version: str) -> None:
        register_model(
            store, version, embedded_config_name(), store.write_checkpoint(version, buffer.getvalue())
        )

    return register


@pytest.fixture(scope="session")
def register_plain_model():
    """``register_plain_model(store, version)``: the embedded model's weights registered as ``version``, a model
    without a text path (the shipped ``embedded`` answers text with the text path shipped beside it)."""
    from sam_core.embedded import EMBEDDED_CHECKPOINT, embedded_config_name
    from tasks.models import register_model

    def register(store, version: str) -> None:
        uri = store.write_checkpoint(version, EMBEDDED_CHECKPOINT.read_bytes())
        register_model(store, version, embedded_config_name(), uri)

    return register


class JsonStub(BaseHTTPRequestHandler):
    """The handler of a fake HTTP service (Label Studio's API in the tests): quiet, and answers in JSON."""

    def log_message(self, *args):
        pass

    def reply(self, status: int, body) -> None:
        """``body`` as JSON. HTTP/1.0: the closed connection ends the body, so no Content-Length is needed."""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(body).encode())


@pytest.fixture
def serve_stub():
    """``serve_stub(handler_class)`` -> its URL: the class served on a free local port until the test ends."""
    servers = []

    def serve(handler: type[BaseHTTPRequestHandler]) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()
