"""The README's production section, run word for word against real processes.

The commands come from the README's `## Running in production` code block, so the README cannot drift from what
is tested. Only the values of the variables differ: a PostgreSQL database of the test's own (created on the
suite's server, dropped at the end), a broker of the kind the README names (a RabbitMQ node of the test's own, or
the suite's Redis), the suite's Redis for the relay, a free port on 127.0.0.1, a temporary STATIC_ROOT and
beat schedule, one gunicorn worker process (so a stream that held its process would block every other request)
and a model silence longer than gunicorn's timeout, kept short so the test takes about a minute.
"""

import json
import os
import re
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urljoin

import openai
import psycopg
import pytest
import requests
from django.db import connection

from tests.faults.runs_support import OwnRabbit, free_port

REPO = Path(__file__).resolve().parents[2]
SERVICES = (".venv/bin/gunicorn", ".venv/bin/celery")  # long-running: started, then stopped at the end
GUNICORN_TIMEOUT = 10
SILENCE_SECONDS = 24  # the model's silence before its first chunk: well past GUNICORN_TIMEOUT
PING_SECONDS = 3
ASSET_REFERENCE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")


def readme_production_block() -> list[str]:
    """The lines of the first `sh` block of the README's production section, without blanks and comments."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Running in production\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block, "the README's production section has no ```sh block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.lstrip().startswith("#")]


def readme_environment(exports: list[str], *, base: dict[str, str]) -> dict[str, str]:
    """The environment the README's `export` lines give, evaluated by bash as a reader's shell would."""
    script = "\n".join([*exports, "env -0"])
    result = subprocess.run(["bash", "-c", script], env=base, cwd=REPO, capture_output=True, timeout=60, check=True)
    return dict(item.split("=", 1) for item in result.stdout.decode().split("\0") if "=" in item)


@pytest.fixture
def production_database(postgres, django_db_setup, django_db_blocker) -> Iterator[str]:
    """A database of this test's own on the suite's PostgreSQL server; its URL. Dropped at the end."""
    settings_dict = connection.settings_dict
    host, port = settings_dict["HOST"] or "127.0.0.1", int(settings_dict["PORT"] or 5432)
    user, password = settings_dict["USER"], settings_dict["PASSWORD"] or ""
    server = {"host": host, "port": port, "user": user, "password": password or None}
    name = f"steplens_prod_test_{secrets.token_hex(4)}"

    def run_on_server(statement: str) -> None:
        # From the suite's own test database: CREATE DATABASE copies template1, which must have no sessions.
        with (
            django_db_blocker.unblock(),
            psycopg.connect(dbname=settings_dict["NAME"], autocommit=True, **server) as db,
        ):
            db.execute(statement)

    run_on_server(f'CREATE DATABASE "{name}"')
    credentials = quote(user, safe="") + (f":{quote(password, safe='')}" if password else "")
    try:
        yield f"postgres://{credentials}@{host}:{port}/{name}"
    finally:
        run_on_server(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Deployment:
    """What running the README's block left: the base URL, credentials, and the services' logs."""

    base_url: str
    api_key: str
    admin_username: str
    admin_password: str
    beat_schedule: Path
    logs: dict[str, Path] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return urljoin(self.base_url, path)

    def get(self, path: str, **kwargs) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.api_key}", **kwargs.pop("headers", {})}
        return requests.get(self.url(path), headers=headers, timeout=30, **kwargs)

    def post(self, path: str, body: dict, **kwargs) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.api_key}", **kwargs.pop("headers", {})}
        return requests.post(self.url(path), json=body, headers=headers, timeout=30, **kwargs)


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def _wait_until_served(url: str, *, services: list[subprocess.Popen], logs: dict[str, Path]) -> None:
    deadline = time.monotonic() + 90
    while True:
        for process, (name, log) in zip(services, logs.items(), strict=True):
            assert process.poll() is None, f"{name} exited:\n{log.read_text()[-3000:]}"
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, f"nothing answered {url}"
        time.sleep(0.5)


@pytest.fixture
def readme_broker(request) -> Iterator[str]:
    """A broker of the kind the README's block names: a RabbitMQ node of the test's own (nobody else's workers
    share its queues), or the suite's Redis."""
    line = next((line for line in readme_production_block() if line.startswith("export CELERY_BROKER_URL=")), "")
    assert line, "the README's production block does not set CELERY_BROKER_URL"
    if not line.split("=", 1)[1].startswith("amqp://"):
        yield request.getfixturevalue("redis_url")
        return
    rabbit = OwnRabbit()
    try:
        rabbit.start()
        yield rabbit.url
    finally:
        rabbit.destroy()


@pytest.fixture
def deployment(production_database, readme_broker, redis_url, tmp_path) -> Iterator[Deployment]:
    """Every line of the README's block run as written; the services stay up for the test."""
    lines = readme_production_block()
    exports = [line for line in lines if line.startswith("export ")]
    commands = [line for line in lines if not line.startswith("export ")]
    # The suite's own settings stay out: what the processes see is the README's block and the values below.
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("DJANGO_", "CELERY_", "STEPLENS_", "OTEL_", "GUNICORN_"))
        and name not in {"DATABASE_URL", "REDIS_URL", "CACHE_URL", "STATIC_ROOT"}
    }
    environment = readme_environment(exports, base=inherited)
    port = free_port()
    substitutes = {
        "DATABASE_URL": production_database,
        "CELERY_BROKER_URL": readme_broker,
        "REDIS_URL": redis_url,
        "GUNICORN_BIND": f"127.0.0.1:{port}",
    }
    missing = [name for name in substitutes if not any(line.startswith(f"export {name}=") for line in exports)]
    assert not missing, f"the README's production block does not set {missing}"
    environment.update(substitutes)
    # Not in the README (its defaults are the production values): kept out of the checkout, and short.
    environment.update(
        STATIC_ROOT=str(tmp_path / "static"),
        CELERY_BEAT_SCHEDULE_FILENAME=str(tmp_path / "celerybeat-schedule"),
        GUNICORN_WORKERS="1",
        GUNICORN_TIMEOUT=str(GUNICORN_TIMEOUT),
        STEPLENS_SLOW_FIRST_TOKEN_SECONDS=str(SILENCE_SECONDS),
        STEPLENS_SSE_PING_SECONDS=str(PING_SECONDS),
    )

    services: list[subprocess.Popen] = []
    logs: dict[str, Path] = {}
    api_key = ""
    try:
        for index, command in enumerate(commands):
            if command.startswith(SERVICES):
                log = tmp_path / f"service-{index}.log"
                logs[command.split()[0].rsplit("/", 1)[-1] + f"-{index}"] = log
                with log.open("wb") as out:
                    services.append(
                        subprocess.Popen(
                            ["bash", "-c", command],
                            cwd=REPO,
                            env=environment,
                            stdout=out,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                        )
                    )
                continue
            result = subprocess.run(
                ["bash", "-c", command], cwd=REPO, env=environment, capture_output=True, text=True, timeout=600
            )
            assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            if "create_api_key" in command:
                api_key = result.stdout.strip().splitlines()[-1]  # the README: "the last line printed"
        superuser = next(command for command in commands if "createsuperuser" in command)
        assert api_key.startswith("sl-"), "create_api_key printed no key on its last line"
        started = [command.split("#")[0].split() for command in commands if command.startswith(SERVICES)]
        assert (
            sum(words[0] == ".venv/bin/gunicorn" for words in started) == 1
            and any("worker" in words for words in started)
            and sum("beat" in words for words in started) == 1
        ), f"the README should start one web process, workers and one beat, not {started}"

        base_url = f"http://127.0.0.1:{port}/"
        _wait_until_served(urljoin(base_url, "admin/login/"), services=services, logs=logs)
        yield Deployment(
            base_url=base_url,
            api_key=api_key,
            admin_username=re.search(r"--username (\S+)", superuser).group(1),
            admin_password=re.search(r"DJANGO_SUPERUSER_PASSWORD=(\S+)", superuser).group(1),
            beat_schedule=Path(environment["CELERY_BEAT_SCHEDULE_FILENAME"]),
            logs=logs,
        )
        exited = [name for process, name in zip(services, logs, strict=True) if process.poll() is not None]
        assert not exited, f"{exited} stopped during the test"
    finally:
        _stop(services)


def _log_in(deployment: Deployment) -> requests.Session:
    session = requests.Session()
    login_url = deployment.url("admin/login/")
    session.get(login_url, timeout=30)
    answer = session.post(
        login_url,
        data={
            "username": deployment.admin_username,
            "password": deployment.admin_password,
            "csrfmiddlewaretoken": session.cookies["csrftoken"],
            "next": "/admin/",
        },
        headers={"Referer": login_url},
        timeout=30,
    )
    assert answer.status_code == 200 and answer.url == deployment.url("admin/"), answer.text[-2000:]
    return session


@dataclass
class StreamRecord:
    """The lines of one SSE answer with the monotonic time each arrived."""

    status_code: int = 0
    content_type: str = ""
    lines: list[tuple[float, str]] = field(default_factory=list)
    error: BaseException | None = None

    def first_data_at(self) -> float | None:
        return next((at for at, line in self.lines if line.startswith("data: ")), None)


def _read_stream(response: requests.Response, record: StreamRecord) -> None:
    try:
        record.status_code, record.content_type = response.status_code, response.headers.get("Content-Type", "")
        for line in response.iter_lines(decode_unicode=True):
            if line:
                record.lines.append((time.monotonic(), line))
    except BaseException as exc:  # handed to the test, which fails with it
        record.error = exc


def _chat_completion_stream(deployment: Deployment, *, agent_name: str) -> str:
    """The text the official openai client assembles from a streamed chat completion."""
    client = openai.OpenAI(base_url=deployment.url("v1"), api_key=deployment.api_key, max_retries=0, timeout=120)
    chunks = client.chat.completions.create(
        model=agent_name, messages=[{"role": "user", "content": "hello from the openai client"}], stream=True
    )
    return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)


def _static_assets(html: str) -> list[str]:
    return [url for url in ASSET_REFERENCE.findall(html) if not url.startswith(("#", "/admin/", "data:"))]


@pytest.mark.django_db  # the suite's test database is where this test creates and drops its own
def test_readme_production_section_serves_a_styled_admin_docs_and_streams_that_outlive_silence(deployment):
    # A styled admin: the login page's stylesheets come from this server, under their hashed names and the plain one.
    login_page = requests.get(deployment.url("admin/login/"), timeout=30)
    stylesheets = [url for url in _static_assets(login_page.text) if url.endswith(".css")]
    assert any(re.fullmatch(r"/static/admin/css/base\.[0-9a-f]{12}\.css", url) for url in stylesheets), stylesheets
    for url in [*stylesheets, "/static/admin/css/base.css"]:
        css = requests.get(deployment.url(url), timeout=30)
        assert (css.status_code, css.headers["Content-Type"].split(";")[0]) == (200, "text/css"), url
        assert "body" in css.text, url  # the stylesheet itself, not an empty answer
    admin = _log_in(deployment).get(deployment.url("admin/"), timeout=30)
    assert admin.status_code == 200 and 'id="logout-form"' in admin.text  # signed in, not sent back to the login

    # The API docs load Swagger UI from this server only.
    docs = requests.get(deployment.url("v1/docs"), timeout=30)
    assert docs.status_code == 200
    assets = _static_assets(docs.text)
    assert any("swagger-ui-bundle" in url for url in assets), assets
    assert not re.findall(r"https?://", docs.text)
    for url in assets:
        assert url.startswith("/static/"), url
        assert requests.get(deployment.url(url), timeout=30).status_code == 200, url

    # A stream whose model is silent longer than gunicorn's timeout stays up with pings and ends with [DONE],
    # while the only gunicorn process keeps answering other requests (a chat-completions stream among them).
    slow = deployment.post("v1/agents", {"name": "readme-slow", "model_handle": "scripted/slow-first-token"})
    echo = deployment.post("v1/agents", {"name": "readme-echo", "model_handle": "scripted/slow-echo"})
    assert (slow.status_code, echo.status_code) == (201, 201), (slow.text, echo.text)
    started = time.monotonic()
    response = deployment.post(
        f"v1/agents/{slow.json()['id']}/messages/stream",
        {"messages": [{"role": "user", "content": "answer after a long silence"}]},
        headers={"Accept": "text/event-stream"},
        stream=True,
    )
    record = StreamRecord()
    reader = threading.Thread(target=_read_stream, args=(response, record), daemon=True)
    reader.start()

    answered_during_silence = 0
    chat_text = None
    while reader.is_alive() and record.first_data_at() is None:
        for path in ("v1/agents", "v1/runs?limit=5"):
            assert deployment.get(path).status_code == 200, path
        if record.first_data_at() is None:
            answered_during_silence += 1
        if answered_during_silence >= 3 and chat_text is None:
            # The chat run needs a second Celery process; with one CPU it waits for the slow run, which is fine.
            chat_text = _chat_completion_stream(deployment, agent_name="readme-echo")
        time.sleep(1)
    if chat_text is None:
        chat_text = _chat_completion_stream(deployment, agent_name="readme-echo")
    reader.join(timeout=SILENCE_SECONDS + 60)

    assert record.error is None, repr(record.error)
    assert (record.status_code, record.content_type) == (200, "text/event-stream")
    assert chat_text == "Echo: hello from the openai client"
    first_data = record.first_data_at()
    assert first_data is not None and first_data - started > GUNICORN_TIMEOUT
    pings = [line for at, line in record.lines if at < first_data and line == ": ping"]
    assert len(pings) >= GUNICORN_TIMEOUT // PING_SECONDS, record.lines[:20]
    assert answered_during_silence >= 3
    assert record.lines[-1][1] == "data: [DONE]", record.lines[-5:]
    events = [json.loads(line[6:]) for _, line in record.lines if line.startswith("data: {")]
    answer = "".join(event["content"] for event in events if event["message_type"] == "assistant_message")
    assert answer == "Echo: answer after a long silence"
    gunicorn_log = next(path for name, path in deployment.logs.items() if name.startswith("gunicorn")).read_text()
    assert "WORKER TIMEOUT" not in gunicorn_log
    # Beat keeps its schedule where CELERY_BEAT_SCHEDULE_FILENAME says, never in the checkout's root.
    assert list(deployment.beat_schedule.parent.glob(deployment.beat_schedule.name + "*"))
    assert not list(REPO.glob("celerybeat-schedule*"))
