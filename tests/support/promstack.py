"""A real Prometheus, Alertmanager and webhook receiver on loopback, for live tests.

Debian's `prometheus` (2.42) and `prometheus-alertmanager` (0.25) run as child processes
with their own temporary config and storage; the webhook receiver is a plain HTTP server
in the test process that keeps every notification Alertmanager delivers."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.kernel_helpers import free_port


def _get_json(url: str, timeout: float = 10) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def _wait_ready(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready at {url}")


class Webhook:
    """Collects Alertmanager webhook notifications (JSON bodies)."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        store = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with store._cond:
                    store.notifications.append(json.loads(body))
                    store._cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/alerts"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def wait_for(self, alertname: str, status: str, timeout: float) -> dict[str, Any]:
        """The first delivered alert named `alertname` with `status` (firing/resolved)."""

        def find() -> dict[str, Any] | None:
            for n in self.notifications:
                for a in n.get("alerts", []):
                    if a["labels"].get("alertname") == alertname and a["status"] == status:
                        return dict(a)
            return None

        with self._cond:
            self._cond.wait_for(lambda: find() is not None, timeout)
            found = find()
        if found is None:
            seen = [
                (a["labels"].get("alertname"), a["status"])
                for n in self.notifications
                for a in n.get("alerts", [])
            ]
            raise AssertionError(f"no {status} {alertname} delivered in {timeout} s; got {seen}")
        return found

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class Alertmanager:
    def __init__(self, workdir: Path, webhook_url: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = workdir / "alertmanager.yml"
        cfg.write_text(json.dumps({  # JSON is YAML
            "route": {"receiver": "test", "group_by": ["alertname", "instance"],
                      "group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"},
            "receivers": [{"name": "test", "webhook_configs": [
                {"url": webhook_url, "send_resolved": True}]}],
        }))  # fmt: skip
        self.proc = subprocess.Popen(
            ["prometheus-alertmanager", f"--config.file={cfg}",
             f"--storage.path={workdir / 'am-data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address="],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_ready(self.url + "/-/ready", self.proc, "alertmanager")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


class Prometheus:
    def __init__(
        self,
        workdir: Path,
        targets: list[str],
        rule_files: list[Path],
        alertmanager_url: str | None,
        job: str = "linnix-exporter",
        extra_args: Sequence[str] = (),
    ) -> None:
        """Scrapes `targets` (none: a central server fed by remote write, with
        extra_args ["--web.enable-remote-write-receiver"])."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        scrape = [{"job_name": job, "static_configs": [{"targets": targets}]}] if targets else []
        config: dict[str, Any] = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": scrape,
            "rule_files": [str(p) for p in rule_files],
        }
        if alertmanager_url:
            host = urllib.parse.urlsplit(alertmanager_url).netloc
            config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [host]}]}]}
        cfg = workdir / "prometheus.yml"
        cfg.write_text(json.dumps(config))
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}",
             "--rules.alert.resend-delay=1s", *extra_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_ready(self.url + "/-/ready", self.proc, "prometheus")

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; raises on a PromQL error (so a bad panel query fails)."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            body = _get_json(url)
        except urllib.error.HTTPError as e:
            raise AssertionError(f"query failed: {expr}: {e.read().decode()}") from None
        assert body["status"] == "success", body
        result = body["data"]["result"]
        return result if isinstance(result, list) else [result]

    def wait_query(self, expr: str, timeout: float = 60) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.5)

    def alert_states(self) -> dict[str, set[str]]:
        """alertname -> states ("pending", "firing") active now."""
        out: dict[str, set[str]] = {}
        for a in _get_json(self.url + "/api/v1/alerts")["data"]["alerts"]:
            out.setdefault(a["labels"]["alertname"], set()).add(a["state"])
        return out

    def rules_health(self) -> list[tuple[str, str, str]]:
        """(rule name, health, lastError) for every loaded rule."""
        groups = _get_json(self.url + "/api/v1/rules")["data"]["groups"]
        return [
            (r["name"], r["health"], r.get("lastError", "")) for g in groups for r in g["rules"]
        ]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


class Agent:
    """Prometheus in agent mode (`--enable-feature=agent`): scrapes and remote-writes,
    stores nothing queryable. `config` is the YAML text of its configuration."""

    def __init__(self, workdir: Path, config: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        cfg = workdir / "agent.yml"
        cfg.write_text(config)
        self.proc = subprocess.Popen(
            ["prometheus", "--enable-feature=agent", f"--config.file={cfg}",
             f"--storage.agent.path={workdir / 'wal'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_ready(self.url + "/-/ready", self.proc, "prometheus agent")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
