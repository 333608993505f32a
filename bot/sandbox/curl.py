"""Ready-made curl lines for the bot's webhooks, as the sandbox prints them: signed the way the bot checks.

The datagen hook's signature covers a timestamp the bot allows 300 s of skew on, so its line computes the
signature when it is run (openssl), not when it is printed (see bot.monitors.hook.sign for the format).
"""
from __future__ import annotations

import json
import shlex
from datetime import datetime, timedelta
from pathlib import Path

from bot.config import Config
from bot.monitors.history import run_date_at

DATAGEN_SECRET = "sandbox-datagen-secret"
ALERTMANAGER_TOKEN = "sandbox-alertmanager-token"


def example_alert(config: Config, now: datetime) -> dict:
    """A firing Alertmanager group about the first model's prod, labelled as the config reads labels."""
    model = next(iter(config.models), "model")
    labels = {"alertname": "TritonHighLatency", "severity": "critical", config.alertmanager.model_label: model,
              config.alertmanager.env_label: "prod"}
    alert = {"status": "firing", "labels": labels, "annotations": {"summary": f"{model} prod p99 over its SLO"},
             "startsAt": (now - timedelta(minutes=5)).isoformat(), "fingerprint": "5a4db0c1e2f3a4b5"}
    return {"version": "4", "groupKey": '{}:{alertname="TritonHighLatency"}', "status": "firing",
            "receiver": "mlops-bot", "groupLabels": {"alertname": "TritonHighLatency"}, "commonLabels": labels,
            "commonAnnotations": alert["annotations"], "alerts": [alert]}


def _newest_record(source: str) -> Path | None:
    template = Path(source)
    if "://" in source or not template.parent.is_dir():
        return None
    return max(template.parent.glob(template.name.replace("{date}", "*")), default=None)


def hook_lines(config: Config, url: str, state: Path, now: datetime) -> list[str]:
    """One line saying what each hook does, then its curl line; the example alert is written into `state`."""
    alert = state / "example-alert.json"
    alert.write_text(json.dumps(example_alert(config, now), indent=1))
    lines = [
        f"# an Alertmanager notification (bearer token {ALERTMANAGER_TOKEN}):",
        f"curl -sS {url}/hooks/alertmanager -H 'Authorization: Bearer {ALERTMANAGER_TOKEN}' "
        f"-H 'Content-Type: application/json' --data-binary @{shlex.quote(str(alert))}",
    ]
    for name, job in config.datagen.jobs.items():
        record = _newest_record(job.source)
        if record is None:
            continue
        query = f"job={name}&date={run_date_at(job, now).isoformat()}"
        lines += [
            f"# today's datagen record for {name} (an example's content), signed with {DATAGEN_SECRET}:",
            f"body={shlex.quote(str(record))}; q='{query}'; ts=$(date +%s); "
            f"sig=$( {{ printf 'v1\\n%s\\nPOST\\n/hooks/datagen\\n%s\\n' \"$ts\" \"$q\"; cat \"$body\"; }} "
            f"| openssl dgst -sha256 -hmac '{DATAGEN_SECRET}' -r | cut -d' ' -f1); "
            f"curl -sS \"{url}/hooks/datagen?$q\" -H \"X-Datagen-Timestamp: $ts\" "
            f"-H \"X-Datagen-Signature: v1=$sig\" --data-binary @\"$body\"",
        ]
    return lines
