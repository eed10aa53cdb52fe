"""The ML backend Label Studio calls for interactive SAM: `/health`, `/setup`, `/predict`.

The protocol is label-studio-ml-backend's. Label Studio forwards each smart-tool click as
`POST /predict {"tasks": [task], "params": {"context": {"result": [...]}}, ...}` where the context holds
keypointlabels (x, y in percent, `is_positive`) and rectanglelabels (x, y, width, height in percent). The answer
is `{"results": [{"result": [brushlabels result], "score", "model_version"}]}`.

Each task names its engine image by `data.image_id`. The backend takes that image's embedding from the store (and
on a first visit computes it once with the image encoder and stores it), keeps the last few in memory, and answers a
click with the prompt encoder + mask decoder only. As in the SAM paper's interactive protocol (and the simulated
annotator), a click that extends the previous request's clicks feeds that request's low-resolution logits back as
the mask prompt, so each click refines the mask the annotator sees.

A phrase typed in the project's text box (a textarea result in the context, with no click or box beside it) is
answered with the masks it names, by a text model (a version trained with scripts/train_text.py, served with its
text encoder): ``sam_core.text_instances.segment_phrase``, as ``sam-engine segment --text`` answers it, so "the
red object" gives one mask and "every red object" one per instance. A context with clicks or a box is answered as
before, whatever the text box holds. A phrase the backend cannot read (empty, over the text encoder's context
length, a word it does not know, not UTF-8) or a backend without a text model is a 400 naming the reason; Label
Studio shows only a refused request's status line, so the reason is its reason phrase too.

A token protects it: Label Studio sends it as the HTTP basic-auth password (register the backend with
auth_method=BASIC_AUTH); `Authorization: Bearer <token>` works too.
The server is the standard library's threaded HTTP server: one decoder pass per click needs nothing more, and the
predictor is guarded by a lock because it holds one image at a time.
"""

from __future__ import annotations

import base64
import hmac
import inspect
import json
import logging
import threading
import uuid
from collections import OrderedDict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import torch

from sam_core.build import build_sam
from sam_core.predictor import SamPredictor
from sam_core.text_encoder import TextEncoder, check_phrase
from sam_core.text_instances import PRESENCE_THRESHOLD, segment_phrase
from tasks.ingest import load_image
from tasks.models import (
    EMBEDDED_VERSION,
    check_checkpoint,
    check_model,
    embedding_version,
    get_text_model,
    load_model,
    load_text_model,
    resolve_version,
    ships_text_path,
)

from .convert import mask_to_brush_rle, percent_to_pixels, rect_percent_to_box
from .project import BRUSH_NAME, DEFAULT_LABELS, IMAGE_NAME, NOTE_NAME, brush_label, has_note_box

logger = logging.getLogger(__name__)


def brush_result(mask: np.ndarray, score: float, label: str, width: int, height: int) -> dict:
    """One Label Studio prediction result: ``mask`` (HxW bool, the task image's size width x height) as a brush
    region of ``label``, rated ``score`` (the decoder's predicted IoU)."""
    return {
        "id": uuid.uuid4().hex[:10],
        "from_name": BRUSH_NAME,
        "to_name": IMAGE_NAME,
        "type": "brushlabels",
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {"format": "rle", "rle": mask_to_brush_rle(mask), "brushlabels": [label]},
        "score": float(score),
        "readonly": False,
    }


class BackendError(Exception):
    """A request the backend refuses; status is the HTTP code it answers with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# Answers kept for the next click's mask prompt: one 1 x 256 x 256 float32 logits array each (256 KiB).
ANSWERS_KEPT = 64
SPATIAL_PROMPTS = ("keypointlabels", "rectanglelabels")
TEXT_PROMPT = "textarea"  # what Label Studio calls a TextArea's result


def _kind(prompt) -> str:
    return str(prompt.get("type", "")).lower() if isinstance(prompt, dict) else ""


class SamBackend:
    """The backend's logic, without HTTP (tests and the benchmark call it directly too).

    store: a stores.Store (images table, embeddings). model: a sam_core Sam. model_version: the key of
    the embeddings it reads and writes. token: required on /setup and /predict when set. cache_size: embeddings kept
    in memory. text_encoder: the encoder a text model's text path was trained with (None: phrases are refused);
    presence_threshold: the presence below which a phrase is judged absent from the image (no mask).
    """

    def __init__(
        self,
        store,
        model,
        model_version: str,
        token: str | None = None,
        cache_size: int = 8,
        text_encoder: TextEncoder | None = None,
        presence_threshold: float = PRESENCE_THRESHOLD,
    ):
        self.store = store
        self.model_version = model_version
        # Embeddings are read and written under the version that owns the model's image encoder.
        self._embeddings = embedding_version(store, model_version)
        self._token = token
        self.predictor = SamPredictor(model, text_encoder=text_encoder)
        self.presence_threshold = float(presence_threshold)
        # sam_core's predictor can upsample only the best of the three masks: a third of the post-processing.
        self._best_only = "best_only" in inspect.signature(self.predictor.predict).parameters
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = int(cache_size)
        self._current: str | None = None
        # (image_id, prompts) -> the low-res logits (1 x 4h x 4w) answered for them, the next click's mask prompt.
        self._answered: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._images: dict[str, tuple[str, int, int]] | None = None

    def __repr__(self) -> str:
        return f"SamBackend(model_version={self.model_version!r}, protected={self._token is not None})"

    # -- auth ----------------------------------------------------------------------------------------------------

    def authorized(self, header: str | None) -> bool:
        """True when no token is required, or the Authorization header carries it (basic password or bearer)."""
        if self._token is None:
            return True
        if not header:
            return False
        scheme, _, value = header.partition(" ")
        given = ""
        if scheme.lower() == "basic":
            try:
                given = base64.b64decode(value.strip()).decode("utf-8").partition(":")[2]
            except (ValueError, UnicodeDecodeError):
                return False
        elif scheme.lower() in ("bearer", "token"):
            given = value.strip()
        return hmac.compare_digest(given.encode(), self._token.encode())

    # -- images and embeddings -----------------------------------------------------------------------------------

    def _image(self, image_id: str) -> tuple[str, int, int]:
        if self._images is None or image_id not in self._images:
            table = self.store.images()  # re-read on a miss: images may have been ingested since start
            self._images = {
                str(r.image_id): (str(r.uri), int(r.height), int(r.width))
                for r in table.itertuples(index=False)
            }
        if image_id not in self._images:
            raise BackendError(
                HTTPStatus.NOT_FOUND, f"unknown image_id {image_id!r}: not in the store's images"
            )
        return self._images[image_id]

    def _embedding(self, image_id: str, uri: str) -> np.ndarray:
        if image_id in self._cache:
            self._cache.move_to_end(image_id)
            return self._cache[image_id]
        if self.store.has_embedding(image_id, self._embeddings):
            emb = self.store.get_embedding(image_id, self._embeddings)
        else:  # first visit: pay the image encoder once, then every click is decoder-only
            with torch.inference_mode():
                self.predictor.set_image(load_image(uri))
            emb = self.predictor.get_image_embedding()[0].cpu().numpy()
            self.store.put_embedding(image_id, self._embeddings, emb)
        self._cache[image_id] = emb
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return emb

    def _use_image(self, image_id: str) -> tuple[int, int]:
        """Make image_id the predictor's image (embedding only). Returns (height, width)."""
        uri, height, width = self._image(image_id)
        if self._current != image_id:
            emb = self._embedding(image_id, uri)
            # A recognizer text model reads the pixels beside the embedding (sam_core.text_recognition).
            pixels = load_image(uri) if self.predictor.recognizes_text else None
            self.predictor.set_embedding(emb, (height, width), image=pixels)
            self._current = image_id
        return height, width

    # -- protocol ------------------------------------------------------------------------------------------------

    def health(self) -> dict:
        return {
            "status": "UP",
            "model_class": "SamBackend",
            "model_version": self.model_version,
            "text_prompts": self.predictor.text_encoder is not None,
        }

    def setup(self, body: dict) -> dict:
        return {"model_version": self.model_version}

    def predict(self, body: dict) -> dict:
        """One prediction per task: the mask for the context's clicks/box, else the masks of its phrase (empty
        when there is no context)."""
        if not isinstance(body, dict) or not isinstance(body.get("tasks"), list):
            raise BackendError(
                HTTPStatus.BAD_REQUEST, "predict body must be a JSON object with a 'tasks' list"
            )
        params = body.get("params") or {}
        context = params.get("context") or body.get("context") or {}
        prompts = (context or {}).get("result") or []
        kinds = {_kind(prompt) for prompt in prompts}
        texts = [p for p in prompts if _kind(p) == TEXT_PROMPT] if not kinds & set(SPATIAL_PROMPTS) else []
        results = []
        for task in body["tasks"]:
            data = (task.get("data") or {}) if isinstance(task, dict) else {}
            image_id = data.get("image_id")
            task_id = task.get("id") if isinstance(task, dict) else None
            if image_id is None:
                raise BackendError(HTTPStatus.BAD_REQUEST, f"task {task_id}: data has no image_id")
            if not prompts:
                self._image(str(image_id))  # still refuse unknown images
                results.append({"result": [], "score": 0.0, "model_version": self.model_version})
                continue
            if texts:
                results.append(self._predict_text(str(image_id), task_id, texts, body.get("label_config")))
                continue
            results.append(self._predict_one(str(image_id), task_id, prompts))
        return {"results": results}

    def _predict_one(self, image_id: str, task_id, prompts: list) -> dict:
        points, labels, box, label = [], [], None, DEFAULT_LABELS[0]
        used = []  # the prompts in the order given, as hashable tuples: the key of this answer
        with self._lock:
            height, width = self._use_image(image_id)
            for prompt in prompts:
                kind = str(prompt.get("type", "")).lower()
                value = prompt.get("value") or {}
                try:
                    if kind == "keypointlabels":
                        points.append(percent_to_pixels(float(value["x"]), float(value["y"]), width, height))
                        positive = prompt.get("is_positive", value.get("is_positive", True))
                        labels.append(1 if positive in (True, 1, "true", "1") else 0)
                        used.append(("point", *points[-1], labels[-1]))
                    elif kind == "rectanglelabels":
                        box = rect_percent_to_box(value, width, height)
                        used.append(("box", *box))
                    else:
                        continue
                except (KeyError, TypeError, ValueError) as exc:
                    raise BackendError(
                        HTTPStatus.BAD_REQUEST, f"task {task_id}: bad {kind} prompt: {exc}"
                    ) from exc
                chosen = value.get(kind) or []
                if chosen:
                    label = str(chosen[0])
            if not points and box is None:
                raise BackendError(
                    HTTPStatus.BAD_REQUEST, f"task {task_id}: context has no keypoint or rectangle"
                )
            # One point is ambiguous (part or whole): ask for three masks and keep the one the model rates best.
            multimask = len(points) == 1 and box is None
            extra = {"best_only": True} if multimask and self._best_only else {}
            # One more click than a request already answered: that answer is this one's mask prompt.
            previous = self._answered.get((image_id, tuple(used[:-1]))) if len(used) > 1 else None
            with torch.inference_mode():  # thread-local: the server thread needs its own
                masks, scores, low_res = self.predictor.predict(
                    point_coords=np.asarray(points, dtype=np.float32) if points else None,
                    point_labels=np.asarray(labels, dtype=np.int64) if points else None,
                    box=np.asarray(box, dtype=np.float32) if box is not None else None,
                    mask_input=previous,
                    multimask_output=multimask,
                    **extra,
                )
            best = int(np.argmax(scores))
            self._remember((image_id, tuple(used)), np.asarray(low_res[best : best + 1]))
        score = float(scores[best])
        result = brush_result(masks[best], score, label, width, height)
        return {"result": [result], "score": score, "model_version": self.model_version}

    def _phrase(self, task_id, texts: list) -> str:
        """The one phrase of the context's text-box results, checked by the text encoder as the CLI checks it
        (its words and context length too); BackendError 400 naming what is wrong."""
        phrases = []
        for prompt in texts:
            given = (prompt.get("value") or {}).get("text")
            phrases += given if isinstance(given, list) else [given]
        if len(phrases) != 1:
            raise BackendError(
                HTTPStatus.BAD_REQUEST,
                f"task {task_id}: the text box holds {len(phrases)} phrases; the backend answers one at a time",
            )
        encoder = self.predictor.text_encoder
        if encoder is None:
            raise BackendError(
                HTTPStatus.BAD_REQUEST,
                f"task {task_id}: a phrase needs a text model, and this backend serves {self.model_version!r}, "
                f"which has no text path; {get_text_model()}, then serve it: sam-engine labelstudio backend -m NAME",
            )
        try:
            phrase = check_phrase(phrases[0], encoder.name)
            encoder.tokenize([phrase])  # its words and length, before the image is touched
        except (TypeError, ValueError) as exc:
            raise BackendError(HTTPStatus.BAD_REQUEST, f"task {task_id}: bad text prompt: {exc}") from exc
        return phrase

    def _predict_text(self, image_id: str, task_id, texts: list, config: str | None) -> dict:
        """The masks the context's phrase names on the image (segment_phrase), one brush result each (labelled
        with the labeling ``config``'s first brush label), best first; an empty answer carries ``why_empty``, and
        says it in the config's note box when it has one."""
        phrase = self._phrase(task_id, texts)
        with self._lock:
            height, width = self._use_image(image_id)
            with torch.inference_mode():
                found = segment_phrase(self.predictor, phrase, self.presence_threshold)
        label = brush_label(config)
        results = [
            brush_result(mask, score, label, width, height)
            for mask, score in zip(found.masks, found.scores, strict=True)
        ]
        answer = {
            "result": results,
            "score": max(found.scores, default=0.0),
            "model_version": self.model_version,
            "presence": found.presence,
        }
        if found.why_empty:
            logger.info("ml backend task %s, image %s: %s", task_id, image_id, found.why_empty)
            answer["why_empty"] = found.why_empty
            if has_note_box(config):
                results.append(note_result(found.why_empty))
        return answer

    def _remember(self, key: tuple, low_res: np.ndarray) -> None:
        self._answered[key] = low_res
        self._answered.move_to_end(key)
        while len(self._answered) > ANSWERS_KEPT:
            self._answered.popitem(last=False)


def note_result(text: str) -> dict:
    """A Label Studio result that fills the labeling config's note box (project.NOTE_NAME) with ``text``: how a
    person at the image learns why their phrase got no mask."""
    return {"from_name": NOTE_NAME, "to_name": IMAGE_NAME, "type": "textarea", "value": {"text": [text]}}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: Label Studio and the benchmark reuse connections
    backend: SamBackend

    def log_message(self, format: str, *args) -> None:  # route to logging, never print headers
        logger.debug("ml backend %s - %s", self.address_string(), format % args)

    def _send(self, status: int, body: dict, reason: str | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status, _status_line_text(reason) if reason else None)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.rstrip("/") in ("/health", ""):
            self._send(HTTPStatus.OK, self.backend.health())
        else:
            self._send(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: GET {self.path}"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        route = self.path.split("?")[0].rstrip("/")
        handlers = {"/setup": self.backend.setup, "/predict": self.backend.predict}
        if route == "/health":
            return self._send(HTTPStatus.OK, self.backend.health())
        if route not in handlers:
            return self._send(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: POST {self.path}"})
        if not self.backend.authorized(self.headers.get("Authorization")):
            return self._send(HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong ML backend token"})
        try:
            body = json.loads(raw or b"{}")
        except UnicodeDecodeError as exc:
            error = (
                f"body is not valid UTF-8: byte 0x{raw[exc.start : exc.start + 1].hex()} at offset {exc.start} "
                f"({exc.reason}); send JSON encoded as UTF-8"
            )
            return self._send(HTTPStatus.BAD_REQUEST, {"error": error}, error)
        except json.JSONDecodeError as exc:
            return self._send(HTTPStatus.BAD_REQUEST, {"error": f"body is not JSON: {exc}"})
        try:
            self._send(HTTPStatus.OK, handlers[route](body))
        except BackendError as exc:
            logger.info("ml backend %s refused: %s", route, exc)
            self._send(exc.status, {"error": str(exc)}, str(exc))
        except Exception as exc:  # noqa: BLE001 - answer 500 with the reason instead of dropping the connection
            logger.exception("ml backend %s failed", route)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(exc).__name__}: {exc}"})


def _status_line_text(reason: str, limit: int = 400) -> str:
    """A refusal's reason as an HTTP reason phrase: Label Studio reports a refused /predict to the browser as
    "400 Client Error: <reason phrase> for url: ..." and drops the body. One line of Latin-1 (the status line's
    charset), cut at ``limit`` characters."""
    line = " ".join(reason.split())
    line = line if len(line) <= limit else line[: limit - 3] + "..."
    return line.encode("latin-1", "replace").decode("latin-1")


def make_server(backend: SamBackend, host: str = "127.0.0.1", port: int = 9090) -> ThreadingHTTPServer:
    """An HTTP server for backend (port 0 picks a free one: read server.server_address)."""
    handler = type("SamBackendHandler", (_Handler,), {"backend": backend})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def serve_in_thread(backend: SamBackend, host: str = "127.0.0.1", port: int = 0):
    """Start the server on a daemon thread. Returns (server, url); stop with server.shutdown()."""
    server = make_server(backend, host, port)
    thread = threading.Thread(target=server.serve_forever, name="sam-ml-backend", daemon=True)
    thread.start()
    return server, f"http://{server.server_address[0]}:{server.server_address[1]}"


def build_model(name: str = "tiny", checkpoint: str | None = None):
    """A Sam from sam_core by config name and checkpoint path/URL (None: random weights, for tests and benchmarks
    of the protocol; the CLI serves ``serving_model``)."""
    return build_sam(name, checkpoint)


def serving_model(
    store,
    model_version: str | None = None,
    config: str | None = None,
    checkpoint: str | None = None,
    clip_checkpoint: str | None = None,
):
    """(the Sam the backend serves, in eval mode; the model version its answers and embeddings carry; the text
    encoder of a text model, which the text box needs, else None).

    Without ``checkpoint``: the store's ``model_version`` (default ``embedded``, the shipped model; ``latest``,
    or any registered version), so a backend started with no options answers with trained weights, never random
    ones. With ``checkpoint`` (a path or fsspec URL): that file built as SAM config ``config`` (default tiny),
    labelled ``model_version`` (default the config name). An unknown version raises ValueError naming the known
    ones; a missing checkpoint raises FileNotFoundError naming it. A registered text model (scripts/train_text.py)
    is served with its text encoder, and so is ``embedded`` with the text path shipped beside it;
    ``clip_checkpoint``: a CLIP text model's open_clip weights file here (default: the file it was trained with).
    """
    if checkpoint is None:
        version = resolve_version(store, model_version or EMBEDDED_VERSION)
        check_model(store, version)
        model = load_model(store, version)
        if model.prompt_encoder.text_dim or ships_text_path(version):
            model, text_encoder = load_text_model(store, version, clip_checkpoint=clip_checkpoint)
            return model, version, text_encoder
        if clip_checkpoint is not None:
            raise ValueError(
                f"--clip-checkpoint is for a CLIP text model; model {version!r} has no text path"
            )
        return model, version, None
    config = config or "tiny"
    version = model_version or config
    if clip_checkpoint is not None:
        raise ValueError(
            "--clip-checkpoint is for a registered CLIP text model (-m VERSION), not --checkpoint"
        )
    check_checkpoint(checkpoint, version)
    return build_sam(config, checkpoint).eval(), version, None
