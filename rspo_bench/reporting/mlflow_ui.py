"""How to open a sweep in the MLflow UI: the commands that start the UI and the URL of the sweep's runs."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit, urlunsplit

UI_HOST = "127.0.0.1"
# The default --port of `rspo-bench ui` and of `mlflow ui`.
UI_PORT = 5000
# `rspo-bench --workdir DIR` stores its runs at sqlite:///DIR/mlruns.db.
_WORKDIR_STORE = re.compile(r"^sqlite:///(?P<workdir>.+)/mlruns\.db$")
_SERVER_SCHEMES = ("http", "https")


@dataclass
class MlflowUiView:
    """Commands that start an MLflow UI for the store, and URLs of the sweep's runs in it."""

    commands: list[str] = field(default_factory=list)
    runs_url: str = ""
    parent_url: str = ""
    search_filter: str = ""
    # True when the tracking URI had a password, which the commands show as ***.
    password_hidden: bool = False


def mlflow_ui_view(tracking_uri: str, experiment_id: str, parent_run_id: str) -> MlflowUiView:
    """Describe how to browse a sweep: ``rspo-bench ui`` and ``mlflow ui`` commands and run-list URLs.

    A tracking server (http or https URI) already serves the UI, so it gets no
    command and its URLs start with the tracking URI. Every other store gets a
    local UI on 127.0.0.1:5000, the default of both commands. The URL paths
    follow the UI routes of MLflow 3.17 (``#/experiments/<id>/runs?searchFilter=``),
    where the filtered list shows the trials nested under their sweep run.
    """
    parts = urlsplit(tracking_uri)
    hidden = parts.password is not None
    shown_uri = redact_uri(tracking_uri)
    search_filter = f"tags.`mlflow.parentRunId` = '{parent_run_id}'"

    if parts.scheme in _SERVER_SCHEMES:
        commands: list[str] = []
        base = shown_uri.rstrip("/")
    else:
        base = f"http://{UI_HOST}:{UI_PORT}"
        workdir = _WORKDIR_STORE.match(tracking_uri)
        if workdir:
            first = f"rspo-bench ui --workdir {shlex.quote(workdir.group('workdir'))}"
        else:
            first = f"rspo-bench ui --tracking-uri {shlex.quote(shown_uri)}"
        commands = [
            first,
            f"mlflow ui --backend-store-uri {shlex.quote(shown_uri)} --host {UI_HOST} --port {UI_PORT}",
        ]

    view = MlflowUiView(commands=commands, search_filter=search_filter, password_hidden=hidden)
    if experiment_id:
        encoded_filter = quote(search_filter, safe="")
        view.runs_url = f"{base}/#/experiments/{experiment_id}/runs?searchFilter={encoded_filter}"
        if parent_run_id:
            view.parent_url = f"{base}/#/experiments/{experiment_id}/runs/{parent_run_id}"
    return view


def redact_uri(uri: str) -> str:
    """Replace the password in a URI (for example a PostgreSQL tracking URI) with ``***``."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username or ''}:***@{host}"
    return urlunsplit(parts._replace(netloc=netloc))
