"""A small REST client for Label Studio: retries, clear errors, and a token that never reaches a log.

Only the calls the engine needs, over plain httpx (the SDK's generated client hides status codes we must act on).
Connection errors and 5xx answers are retried with exponential backoff, then raised as `LabelStudioUnavailable`;
a refused token raises `LabelStudioAuthError`; any other 4xx raises `LabelStudioError` with the server's message.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx

logger = logging.getLogger(__name__)


class LabelStudioError(RuntimeError):
    """Label Studio answered with an error, or a request could not be made."""


class LabelStudioUnavailable(LabelStudioError):
    """Label Studio could not be reached, or kept answering 5xx, after all retries."""


class LabelStudioAuthError(LabelStudioError):
    """Label Studio refused the API token (401/403)."""


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "<redacted>") if secret else text


class LabelStudioClient:
    """REST calls to one Label Studio server.

    url, token: default to env SAM_ENGINE_LS_URL / SAM_ENGINE_LS_TOKEN. A 40-hex legacy token is sent as
    `Authorization: Token ...`. retries: extra attempts after a connection error or a 5xx; backoff: first wait (s).
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        retries: int = 3,
        backoff: float = 0.5,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ):
        url = url or os.environ.get("SAM_ENGINE_LS_URL")
        token = token or os.environ.get("SAM_ENGINE_LS_TOKEN")
        if not url:
            raise ValueError("Label Studio url missing: pass url= or set SAM_ENGINE_LS_URL")
        if not token:
            raise ValueError("Label Studio token missing: pass token= or set SAM_ENGINE_LS_TOKEN")
        self.url = url.rstrip("/")
        self._token = token
        self.retries = int(retries)
        self.backoff = float(backoff)
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Token {token}"},
            timeout=timeout,
            transport=transport,
        )
        self._users: dict[int, str] | None = None

    def __repr__(self) -> str:
        return f"LabelStudioClient(url={self.url!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LabelStudioClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ---------------------------------------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One API call with retries. Returns the decoded JSON body (None for an empty body)."""
        what = f"{method} {self.url}{path}"
        last: str = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                resp = self._http.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {_redact(str(exc), self._token)}"
                logger.warning("Label Studio %s failed (attempt %d): %s", what, attempt + 1, last)
                continue
            if resp.status_code >= 500:
                last = f"HTTP {resp.status_code}: {_redact(resp.text[:200], self._token)}"
                logger.warning(
                    "Label Studio %s answered %s (attempt %d)", what, resp.status_code, attempt + 1
                )
                continue
            if resp.status_code in (401, 403):
                raise LabelStudioAuthError(
                    f"Label Studio at {self.url} refused the API token ({resp.status_code}) for {method} {path}; "
                    "check SAM_ENGINE_LS_TOKEN or the token passed in (a legacy 40-hex token needs "
                    "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true on the server)"
                )
            if resp.status_code >= 400:
                raise LabelStudioError(
                    f"{what} answered {resp.status_code}: {_redact(resp.text[:500], self._token)}"
                )
            if not resp.content:
                return None
            return resp.json()
        raise LabelStudioUnavailable(
            f"Label Studio unavailable: {what} failed {self.retries + 1} times; last: {last}"
        )

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params or None)

    def post(self, path: str, body: Any, **params: Any) -> Any:
        return self.request("POST", path, json=body, params=params or None)

    def patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, json=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    # -- the calls the engine makes ----------------------------------------------------------------------------

    def whoami(self) -> dict:
        """The user the token logs in as (checks url and token in one call)."""
        return self.get("/api/current-user/whoami")

    def user_emails(self) -> dict[int, str]:
        """User id -> email (cached per client): annotations name their annotator by id."""
        if self._users is None:
            users = self.get("/api/users")
            self._users = {int(u["id"]): u.get("email") or u.get("username") or str(u["id"]) for u in users}
        return self._users

    def create_project(self, title: str, label_config: str, **fields: Any) -> dict:
        if len(title) < 3:
            raise ValueError(f"project title must be at least 3 characters, got {title!r}")
        return self.post("/api/projects", {"title": title, "label_config": label_config, **fields})

    def get_project(self, project_id: int) -> dict:
        return self.get(f"/api/projects/{int(project_id)}")

    def find_project(self, title: str) -> dict | None:
        """The first project with exactly this title, or None."""
        page = 1
        while True:
            body = self.get("/api/projects", title=title, page=page, page_size=100)
            results = body["results"] if isinstance(body, dict) else body
            for project in results:
                if project["title"] == title:
                    return project
            if not isinstance(body, dict) or not body.get("next"):
                return None
            page += 1

    def import_tasks(self, project_id: int, tasks: list[dict]) -> list[int]:
        """Import tasks ({"data": ..., "predictions": [...]}) and return their new ids, in order."""
        body = self.post(f"/api/projects/{int(project_id)}/import", tasks, return_task_ids="true")
        return [int(t) for t in body["task_ids"]]

    def iter_tasks(self, project_id: int, page_size: int = 100) -> Iterator[dict]:
        """Every task of a project with its annotations (results included), page by page."""
        page = 1
        seen = 0
        while True:
            body = self.get(
                "/api/tasks", project=int(project_id), fields="all", page=page, page_size=page_size
            )
            tasks = body.get("tasks", [])
            yield from tasks
            seen += len(tasks)
            if not tasks or seen >= int(body.get("total", 0)):
                return
            page += 1

    def get_task(self, task_id: int) -> dict:
        return self.get(f"/api/tasks/{int(task_id)}")

    def create_annotation(self, task_id: int, result: list[dict], lead_time: float | None = None) -> dict:
        body: dict[str, Any] = {"result": result}
        if lead_time is not None:
            body["lead_time"] = float(lead_time)
        return self.post(f"/api/tasks/{int(task_id)}/annotations", body)

    def update_annotation(
        self, annotation_id: int, result: list[dict], lead_time: float | None = None
    ) -> dict:
        body: dict[str, Any] = {"result": result}
        if lead_time is not None:
            body["lead_time"] = float(lead_time)
        return self.patch(f"/api/annotations/{int(annotation_id)}", body)

    def delete_annotation(self, annotation_id: int) -> None:
        self.delete(f"/api/annotations/{int(annotation_id)}")

    def add_ml_backend(
        self,
        project_id: int,
        url: str,
        title: str = "SAM",
        token: str | None = None,
        interactive: bool = True,
    ) -> dict:
        """Register an ML backend with a project (Label Studio calls its /health and /setup at once).

        token: sent by Label Studio as the HTTP basic-auth password on every call to the backend.
        """
        body: dict[str, Any] = {"url": url, "project": int(project_id), "title": title}
        body["is_interactive"] = bool(interactive)
        if token:
            body.update(auth_method="BASIC_AUTH", basic_auth_user="label-studio", basic_auth_pass=token)
        return self.post("/api/ml", body)

    def interactive_annotating(self, ml_backend_id: int, task_id: int, context: dict) -> dict:
        """What the browser calls after a smart-tool click: Label Studio forwards it to the ML backend's /predict."""
        return self.post(
            f"/api/ml/{int(ml_backend_id)}/interactive-annotating", {"task": task_id, "context": context}
        )
