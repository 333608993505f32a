"""Airflow's REST API through aiohttp: runs, task instances, logs, clearing failed tasks.

v2 is Airflow 3 (`/api/v2`, a JWT from `POST /auth/token` or a bearer token); v1 is Airflow 2
(`/api/v1`, basic auth). The two differ only in the path prefix, the auth scheme and the UI link.
Every failure surfaces as `AirflowError` with a message a person can act on. The retrain flow starts and
follows runs with it; the pipeline watch reads runs and clears failed tasks.
"""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Any, Literal
from urllib.parse import quote

import aiohttp

from bot.config import AirflowConfig, Secrets

AuthMode = Literal["token", "bearer", "basic", "none"]

DAG_HINT = "check the DAG id in the bot's config (a model's retrain.dag_id, or pipelines.airflow.dags)"
CREDENTIALS_HINT = (
    "set AIRFLOW_USERNAME and AIRFLOW_PASSWORD (or AIRFLOW_TOKEN for a bearer token) in the bot's environment"
)


class AirflowError(Exception):
    """A request to Airflow failed; `str()` says what happened and what to do about it."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def log_lines(content: str | list[Any]) -> list[str]:
    """A task log as text lines: Airflow 2 sends one string, Airflow 3 a list of structured records."""
    if isinstance(content, str):
        return [line for line in content.splitlines() if line.strip()]
    lines: list[str] = []
    for record in content:
        if isinstance(record, str):
            lines.append(record)
            continue
        event = str(record.get("event", ""))
        if event.startswith("::"):  # "::group::" markers around the log's source list
            continue
        lines.append(event)
        lines.extend(f"{e.get('exc_type')}: {e.get('exc_value')}" for e in record.get("error_detail") or [])
    return lines


class AirflowClient:
    """A small async client for the parts of Airflow's REST API the retrain flow needs.

    Use as `async with AirflowClient(...) as client:` or call `close()`; the HTTP session is created on
    first use so the client can be built outside the event loop.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_version: Literal[1, 2] = 2,
        auth: AuthMode = "token",
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
    ) -> None:
        """`timeout` bounds a whole call, its retries included: a person waiting on a retrain hears within it."""
        if auth in ("token", "basic") and not (username and password):
            raise AirflowError(f"Airflow auth '{auth}' needs a username and a password: {CREDENTIALS_HINT}")
        if auth == "bearer" and not token:
            raise AirflowError(f"Airflow auth 'bearer' needs a token: {CREDENTIALS_HINT}")
        self.base_url = base_url.rstrip("/")
        self.api_version = api_version
        self._api = f"{self.base_url}/api/v{api_version}"
        self._auth_mode = auth
        self._username = username
        self._password = password
        self._token = token if auth == "bearer" else None
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._retries = retries
        self._backoff = backoff
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AirflowClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # The retrain flow's operations.

    async def trigger(
        self, dag_id: str, conf: dict[str, Any], *, run_id: str | None = None, unpause: bool = False
    ) -> str:
        """Start a run of `dag_id` with `conf` and return its run id.

        The run id is chosen here (or by the caller), so a retried POST cannot start a second run:
        Airflow answers a repeated id with 409, which means the earlier attempt got through.
        """
        run_id = run_id or f"mlops__{uuid.uuid4().hex}"
        if unpause:
            await self.unpause(dag_id)
        body: dict[str, Any] = {"dag_run_id": run_id, "conf": conf}
        if self.api_version == 2:
            body["logical_date"] = None  # Airflow 3 requires the key; null lets runs share a moment
        path = f"/dags/{_seg(dag_id)}/dagRuns"
        await self._request("POST", path, json=body, what=f"DAG '{dag_id}'", hint=DAG_HINT, ok_conflict=True)
        return run_id

    async def dag(self, dag_id: str) -> dict[str, Any]:
        return await self._request("GET", f"/dags/{_seg(dag_id)}", what=f"DAG '{dag_id}'", hint=DAG_HINT)

    async def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return await self._request("GET", f"/dags/{_seg(dag_id)}/dagRuns/{_seg(run_id)}",
                                   what=f"run '{run_id}' of DAG '{dag_id}'")

    async def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        found = await self._request("GET", f"/dags/{_seg(dag_id)}/dagRuns/{_seg(run_id)}/taskInstances",
                                    what=f"run '{run_id}' of DAG '{dag_id}'")
        return found.get("task_instances", [])

    async def dag_runs(self, dag_id: str, *, updated_since: datetime | None = None, limit: int = 25) -> list[dict[str, Any]]:
        """The DAG's runs changed since `updated_since` (all when None), the most recently started first."""
        query = f"?order_by=-start_date&limit={limit}"
        if updated_since is not None:
            query += "&updated_at_gte=" + quote(updated_since.isoformat(), safe="")
        found = await self._request("GET", f"/dags/{_seg(dag_id)}/dagRuns{query}", what=f"DAG '{dag_id}'", hint=DAG_HINT)
        return found.get("dag_runs", [])

    async def clear_failed(self, dag_id: str, run_id: str) -> list[str]:
        """Clear the run's failed task instances so the scheduler runs them again; returns the tasks cleared."""
        body = {"dry_run": False, "only_failed": True, "reset_dag_runs": True, "dag_run_id": run_id}
        found = await self._request("POST", f"/dags/{_seg(dag_id)}/clearTaskInstances", json=body,
                                    what=f"the failed tasks of run '{run_id}' of DAG '{dag_id}'", hint=DAG_HINT)
        return [ti["task_id"] for ti in (found or {}).get("task_instances", [])]

    async def unpause(self, dag_id: str) -> None:
        path = f"/dags/{_seg(dag_id)}"
        await self._request("PATCH", path, json={"is_paused": False}, what=f"DAG '{dag_id}'", hint=DAG_HINT)

    async def cancel(self, dag_id: str, run_id: str) -> None:
        """Mark the run failed; Airflow then stops its running tasks."""
        await self.set_run_state(dag_id, run_id, "failed")

    async def set_run_state(self, dag_id: str, run_id: str, state: str) -> None:
        await self._request("PATCH", f"/dags/{_seg(dag_id)}/dagRuns/{_seg(run_id)}", json={"state": state},
                            what=f"run '{run_id}' of DAG '{dag_id}'")

    async def mark_task_success(self, dag_id: str, run_id: str, task_id: str, *, note: str | None = None) -> None:
        """Set a task instance's state to success, as "Mark success" in Airflow's UI does (the run's own state is
        left as it was: see `set_run_state`). v2 keeps `note` on the task instance; v1 has no such field."""
        body: dict[str, Any] = {"new_state": "success"}
        if self.api_version == 2 and note:
            body["note"] = note[:1000]  # Airflow's limit on a note
        await self._request("PATCH", f"/dags/{_seg(dag_id)}/dagRuns/{_seg(run_id)}/taskInstances/{_seg(task_id)}",
                            json=body, what=f"task '{task_id}' in run '{run_id}' of DAG '{dag_id}'")

    async def log_tail(
        self, dag_id: str, run_id: str, task_id: str, *, try_number: int | None = None, lines: int = 20
    ) -> list[str]:
        """The last `lines` lines of a task's log (its latest attempt unless `try_number` is given)."""
        task_path = f"/dags/{_seg(dag_id)}/dagRuns/{_seg(run_id)}/taskInstances/{_seg(task_id)}"
        what = f"task '{task_id}' in run '{run_id}' of DAG '{dag_id}'"
        if try_number is None:
            try_number = max(1, (await self._request("GET", task_path, what=what)).get("try_number") or 1)
        log = await self._request("GET", f"{task_path}/logs/{try_number}", what=f"log of {what}")
        return log_lines(log.get("content") or "")[-lines:]

    def run_url(self, dag_id: str, run_id: str) -> str:
        """Where a person sees the run in Airflow's UI."""
        if self.api_version == 2:
            return f"{self.base_url}/dags/{_seg(dag_id)}/runs/{_seg(run_id)}"
        return f"{self.base_url}/dags/{_seg(dag_id)}/grid?dag_run_id={quote(run_id, safe='')}"

    # HTTP plumbing.

    async def _request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        hint: str = "",
        json: dict[str, Any] | None = None,
        ok_conflict: bool = False,
    ) -> Any:
        url = self._api + path
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self._timeout.total or 0)
        refreshed = False
        attempt = 0
        while True:
            attempt += 1
            try:
                headers = {"Accept": "application/json", **await self._auth_headers(deadline)}
                async with self._http().request(method, url, json=json, headers=headers,
                                                timeout=self._left(deadline)) as response:
                    if response.status == 401 and self._auth_mode == "token" and not refreshed:
                        self._token, refreshed = None, True  # the JWT expired: fetch a new one, once
                        continue
                    if response.status == 409 and ok_conflict:
                        return None
                    if response.status < 400:
                        return await response.json()
                    error = _http_error(response.status, await response.text(), method, url, what, hint)
            except AirflowError as exc:  # from fetching a token
                error = exc
            except TimeoutError:
                error = self._no_answer(f"{method} {path}")
            except aiohttp.ClientConnectionError as exc:
                error = AirflowError(
                    f"cannot reach Airflow at {self.base_url} ({exc}); check that it runs and that the URL is right"
                )
            transient = error.status is None or error.status >= 500
            pause = self._backoff * 2 ** (attempt - 1)
            if not transient or attempt > self._retries or loop.time() + pause >= deadline:
                raise error
            await asyncio.sleep(pause)

    def _left(self, deadline: float) -> aiohttp.ClientTimeout:
        """What is left of a call's budget, for its next request."""
        return aiohttp.ClientTimeout(total=max(0.01, deadline - asyncio.get_running_loop().time()))

    def _no_answer(self, request: str) -> AirflowError:
        return AirflowError(f"Airflow at {self.base_url} did not answer {request} within {self._timeout.total:g}s; "
                            "check that Airflow runs and is not overloaded")

    async def _auth_headers(self, deadline: float) -> dict[str, str]:
        if self._auth_mode == "basic":
            return {"Authorization": aiohttp.BasicAuth(self._username or "", self._password or "").encode()}
        if self._auth_mode == "none":
            return {}
        if self._token is None:
            self._token = await self._fetch_token(deadline)
        return {"Authorization": f"Bearer {self._token}"}

    async def _fetch_token(self, deadline: float) -> str:
        url = f"{self.base_url}/auth/token"
        body = {"username": self._username, "password": self._password}
        try:
            async with self._http().post(url, json=body, timeout=self._left(deadline)) as response:
                if response.status >= 400:
                    raise _http_error(response.status, await response.text(), "POST", url, "a login token")
                return (await response.json())["access_token"]
        except TimeoutError:
            raise self._no_answer("POST /auth/token") from None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session


def client_for(cfg: AirflowConfig | None, secrets: Secrets) -> AirflowClient:
    """The client of the config's `airflow` section, with the credentials from the environment."""
    if cfg is None:
        raise AirflowError("the bot's config has no `airflow` section; add airflow.base_url")
    return AirflowClient(cfg.base_url, api_version=cfg.api_version, auth=cfg.auth, username=secrets.airflow_username,
                         password=secrets.airflow_password, token=secrets.airflow_token, timeout=cfg.timeout_seconds)


def ui_link(url: str, client: AirflowClient, ui_url: str | None) -> str:
    """`url` (made from the API's base) on the UI's host, when the UI lives elsewhere than the API the bot calls."""
    return ui_url.rstrip("/") + url.removeprefix(client.base_url) if ui_url else url


def _seg(value: str) -> str:
    """One URL path segment: run ids hold ':' and '+' ("manual__2026-11-22T10:00:00+00:00")."""
    return quote(value, safe="")


def _http_error(status: int, body: str, method: str, url: str, what: str, hint: str = "") -> AirflowError:
    detail = body.strip()[:300]
    if status == 401:
        message = f"Airflow at {url} rejected the bot's credentials (401): {CREDENTIALS_HINT}"
    elif status == 403:
        message = f"Airflow's user for the bot may not {method} {what} (403): grant it access in Airflow"
    elif status == 404:
        message = f"Airflow has no {what} (404 at {url})" + (f"; {hint}" if hint else "")
    elif status >= 500:
        message = f"Airflow failed on {method} {url} ({status}): {detail}; check the Airflow API server's log"
    else:
        message = f"Airflow refused {method} {what} ({status}): {detail}"
    return AirflowError(message, status=status)
