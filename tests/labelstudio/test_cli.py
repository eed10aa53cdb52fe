"""The `sam-engine labelstudio` sub-app: commands exist and report clearly without a server."""

import json

from typer.testing import CliRunner

from flows.labelstudio_cli import app


def test_commands_are_up_down_status_backend_push_sync():
    names = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert names == {"up", "down", "status", "backend", "push", "sync"}


def test_status_and_down_without_a_server(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["status", "--home", str(tmp_path)])
    assert result.exit_code == 0 and json.loads(result.output)["running"] is False
    result = runner.invoke(app, ["down", "--home", str(tmp_path)])
    assert result.exit_code == 0 and "not running" in result.output


class _NoServer:
    """Stands in for the HTTP server: records the backend it would serve and returns at once."""

    server_address = ("127.0.0.1", 9090)

    def __init__(self, backend):
        self.backend = backend

    def serve_forever(self):
        pass

    def server_close(self):
        pass


def _backend(monkeypatch, *args):
    """Run `labelstudio backend ARGS` without serving; returns (result, the SamBackend it built or None)."""
    import flows.labelstudio_cli

    served = []
    monkeypatch.setattr(
        flows.labelstudio_cli,
        "make_server",
        lambda backend, host, port: served.append(backend) or _NoServer(backend),
    )
    result = CliRunner().invoke(app, ["backend", *args])
    return result, (served[0] if served else None)


def _same_weights(a, b) -> bool:
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_backend_serves_the_embedded_model_when_not_told_otherwise(monkeypatch, tmp_path):
    """Without --checkpoint the backend serves the shipped embedded model, not a SAM with random weights."""
    import torch

    from sam_core.embedded import load_embedded

    result, backend = _backend(monkeypatch, "--store", (tmp_path / "store").as_uri())
    assert result.exit_code == 0, result.output
    assert "serving embedded" in result.output
    assert backend.model_version == "embedded"
    # with the text path shipped beside it: the embedded weights, exactly, and the text tensors
    served, shipped = backend.predictor.model.state_dict(), load_embedded().state_dict()
    assert set(served) > set(shipped) and all(torch.equal(served[k], v) for k, v in shipped.items())
    assert backend.health()["text_prompts"] is True


def test_backend_serves_a_registered_version_or_a_checkpoint(monkeypatch, tmp_path):
    import torch

    from sam_core.build import build_sam
    from stores import Store
    from tasks.models import register_model

    torch.manual_seed(1)
    tiny = build_sam("tiny")
    checkpoint = tmp_path / "tiny.pt"
    torch.save({"model": tiny.state_dict()}, checkpoint)
    store = (tmp_path / "store").as_uri()
    register_model(Store(store), "mine", "tiny", str(checkpoint))

    result, backend = _backend(monkeypatch, "--store", store, "-m", "latest")
    assert result.exit_code == 0, result.output
    assert backend.model_version == "mine" and _same_weights(backend.predictor.model, tiny)

    result, backend = _backend(monkeypatch, "--store", store, "--checkpoint", str(checkpoint))
    assert result.exit_code == 0, result.output
    assert backend.model_version == "tiny" and _same_weights(backend.predictor.model, tiny)


def test_backend_refuses_a_bad_model_in_one_line(monkeypatch, tmp_path):
    store = (tmp_path / "store").as_uri()
    missing = tmp_path / "missing.pt"
    cases = {
        ("-m", "nope"): f"error: unknown model_version 'nope' in store {store}; known versions: ['embedded']",
        ("--checkpoint", str(missing)): f"error: model 'tiny': checkpoint {missing} does not exist",
        ("--model", "vit_b"): "error: --model vit_b needs --checkpoint; without one the backend serves "
        "--model-version (default embedded) from the store",
    }
    for args, message in cases.items():
        result, backend = _backend(monkeypatch, "--store", store, *args)
        assert result.exit_code == 2 and backend is None
        assert result.output.strip().splitlines()[-1] == message


def test_backend_serves_a_registered_text_model_with_its_text_encoder(
    monkeypatch, tmp_path, register_text_model
):
    from stores import Store

    store = (tmp_path / "store").as_uri()
    register_text_model(Store(store), "text-v1")
    result, backend = _backend(monkeypatch, "--store", store, "-m", "text-v1")
    assert result.exit_code == 0, result.output
    assert backend.model_version == "text-v1" and backend.health()["text_prompts"] is True
    result, backend = _backend(monkeypatch, "--store", store, "--clip-checkpoint", "clip.bin")
    assert result.exit_code == 2 and backend is None
    assert result.output.strip().splitlines()[-1] == (
        "error: model 'embedded' reads text with the embedded text encoder, not CLIP's: no --clip-checkpoint"
    )
