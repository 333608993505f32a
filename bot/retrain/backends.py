"""Where a retrain runs: a local command or an Airflow DAG, started, found again after a restart, stopped."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from bot.airflow import AirflowClient, AirflowError, client_for, ui_link
from bot.config import RetrainConfig
from bot.context import Context
from bot.programs import scrub
from bot.retrain.command import RECORD_FILE, CommandRun, start_command
from bot.retrain.messages import Run
from bot.retrain.status import RunStatus, airflow_status


class Backend(Protocol):
    async def status(self) -> RunStatus: ...
    async def cancel(self) -> None: ...
    async def failure_tail(self, status: RunStatus) -> list[str]: ...


@dataclass(frozen=True)
class CommandBackend:
    run: CommandRun

    async def status(self) -> RunStatus:
        return await self.run.status()

    async def cancel(self) -> None:
        await self.run.cancel()

    async def failure_tail(self, status: RunStatus) -> list[str]:
        return status.tail


@dataclass(frozen=True)
class AirflowBackend:
    client: AirflowClient
    dag_id: str
    run_id: str
    ui_url: str | None

    async def status(self) -> RunStatus:
        status = await airflow_status(self.client, self.dag_id, self.run_id)
        return replace(status, url=ui_link(status.url, self.client, self.ui_url)) if status.url else status

    async def cancel(self) -> None:
        await self.client.cancel(self.dag_id, self.run_id)

    async def failure_tail(self, status: RunStatus) -> list[str]:
        if not status.failed_tasks:
            return []
        try:
            # A task log is the pipeline's output too: a secret it printed never reaches Slack.
            return [scrub(line) for line in await self.client.log_tail(self.dag_id, self.run_id, status.failed_tasks[0])]
        except AirflowError as exc:
            return [f"(no log: {exc})"]


class Backends:
    """Starts runs and finds them again; the Airflow client is made on first use and closed at stop."""

    def __init__(self, ctx: Context, runs_dir: Path):
        self.ctx = ctx
        self.runs_dir = runs_dir
        self._airflow: AirflowClient | None = None

    def airflow(self) -> AirflowClient:
        if self._airflow is None:
            self._airflow = client_for(self.ctx.config.airflow, self.ctx.secrets)
        return self._airflow

    async def launch(self, cfg: RetrainConfig, model: str, run_id: str, actor: str,
                     args: dict[str, str]) -> dict[str, str]:
        """Start the run on its backend; returns the handle that finds it again after a restart."""
        registry = self.ctx.config.models[model].registry
        if cfg.backend == "airflow":
            assert cfg.dag_id is not None  # the config requires it for this backend
            conf = {**cfg.conf, **args, "model": model, "requested_by": actor, "registry": registry}
            unpause = self.ctx.config.airflow.unpause if self.ctx.config.airflow else False
            await self.airflow().trigger(cfg.dag_id, conf, run_id=run_id, unpause=unpause)
            return {"dag_id": cfg.dag_id}
        run_dir = self.runs_dir / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        await start_command(cfg.command, run_id=run_id, model=model, requested_by=actor, registry=registry,
                            run_dir=run_dir, args=args, cwd=run_dir, pass_env=cfg.env)
        return {"run_dir": str(run_dir)}

    def of(self, run: Run) -> Backend:
        if run.backend == "airflow":
            ui_url = self.ctx.config.airflow.ui_url if self.ctx.config.airflow else None
            return AirflowBackend(self.airflow(), run.handle["dag_id"], run.run_id, ui_url)
        return CommandBackend(CommandRun.attach(Path(run.handle["run_dir"])))

    def launched(self, run: Run) -> dict[str, str] | None:
        """The handle of a run left `starting` whose command did start (its run record is written), else None."""
        run_dir = self.runs_dir / run.run_id
        if run.backend == "command" and (run_dir / RECORD_FILE).is_file():
            return {"run_dir": str(run_dir)}
        return None

    async def close(self) -> None:
        if self._airflow is not None:
            await self._airflow.close()
            self._airflow = None
