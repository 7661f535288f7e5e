"""The live page (`GET /`, issue #21) in a real headless browser against a real worker fed by the simulator.

Debian's chromium through chromium-driver (deploy/system-deps.sh installs both; a missing one fails the test).
One worker with WEB_TOKEN on an embedded broker of its own, `attribution simulate` for 20 s:

* without the token the page and the API answer 401, with it they serve; `/metrics` stays open;
* the browser logs in through the form, the page loads in under 1 s (measured: the document's load event and
  the first table filled with figures) and logs no console error;
* the table's figures are `/api/v1/kpis`' for every channel, in both windows; the charts hold data points;
* a spend report sent after that shows on the page within 5 s of the API having it, without a reload;
* restarted without WEB_TOKEN, the worker says once that the page is open, and it is.

`PAGE_SCREENSHOT=docs/web-page.png PAGE_SIMULATE_S=90` also saves the 1280x800 screenshot the README shows.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import math
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.commands.demo import DEMO_DEFAULTS
from streams.commands.top import total_row
from streams.kafka.embedded_broker import EmbeddedBroker
from tests.integration.services import WorkerProcess, produce

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "page-test-token-7f3a"
KPI_KEYS = {"spend", "revenue", "romi", "roas", "roi", "cpl", "cpa", "cac", "cpc", "cpm", "ctr", "conversion_rate",
            "aov", "impressions", "clicks", "leads", "orders"}
RULE_MODELS = {"last_click", "first_click", "linear", "time_decay", "position_based"}
READ_TABLE = """
const table = document.getElementById('kpi-table');
return {start: table.dataset.windowStart, rows: [...table.tBodies[0].rows].map((tr) => ({
  channel: tr.dataset.channel, signal: tr.querySelector('td.signal').textContent,
  values: Object.fromEntries([...tr.querySelectorAll('td[data-key]')].map((td) => [td.dataset.key, td.dataset.value])),
  texts: Object.fromEntries([...tr.querySelectorAll('td[data-key]')].map((td) => [td.dataset.key, td.textContent]))}))};
"""

READ_TOTAL = """return Object.fromEntries([...document.querySelectorAll('#kpi-table tfoot td[data-key]')]
  .map((td) => [td.dataset.key, td.dataset.value]));"""


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An embedded broker of this module's own: no other test's topics in the trends."""
    embedded = EmbeddedBroker(run_dir=tmp_path_factory.mktemp("page-broker"))
    yield embedded.start()
    embedded.stop()


def get(port: int, path: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - local test URL
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def post_login(port: int, token: str, next_path: str = "/") -> tuple[int, dict[str, str]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        body = urllib.parse.urlencode({"token": token, "next": next_path})
        connection.request("POST", "/login", body, {"Content-Type": "application/x-www-form-urlencoded"})
        response = connection.getresponse()
        response.read()
        return response.status, dict(response.getheaders())
    finally:
        connection.close()


def api(port: int, path: str) -> Any:
    status, body = get(port, path, TOKEN)
    assert status == 200, (path, status, body[:300])
    return orjson.loads(body)


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:.0f} s")
        time.sleep(every)


def settled_kpis(port: int, timeout: float = 45.0) -> list[dict[str, Any]]:
    """`/api/v1/kpis` once it stays the same for 3 s (the simulator has stopped and the grace is over)."""
    last = api(port, "/api/v1/kpis")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(3.0)
        now = api(port, "/api/v1/kpis")
        if now == last:
            return now
        last = now
    raise AssertionError("the KPIs did not settle")


def same_figures(page: dict[str, Any], kpis: list[dict[str, Any]]) -> list[str]:
    """Differences between the page's table and the API's messages of the window the table shows."""
    start = int(page["start"])
    wanted = {m["channel"]: m for m in kpis if m["window_start"] == start}
    shown = {row["channel"]: row for row in page["rows"]}
    problems = [f"channels: page {sorted(shown)} api {sorted(wanted)}"] if set(shown) != set(wanted) else []
    for channel, row in shown.items():
        message = wanted.get(channel, {})
        missing = KPI_KEYS - set(row["values"])
        if missing:
            problems.append(f"{channel}: no column for {sorted(missing)}")
        for key, text in row["values"].items():
            expected = message.get(key)
            if (expected is None and text != "") or (expected is not None and (text == "" or float(text) != expected)):
                problems.append(f"{channel} {key}: page {text!r} api {expected!r}")
    return problems


def visible_text_matches(page: dict[str, Any], kpis: list[dict[str, Any]]) -> None:
    """What a person reads: money in USD with cents, counts with thousands separators, `—` for no ratio."""
    start = int(page["start"])
    by_channel = {m["channel"]: m for m in kpis if m["window_start"] == start}
    for row in page["rows"]:
        message = by_channel[row["channel"]]
        assert row["texts"]["spend"] == f"${message['spend']:,.2f}"
        assert row["texts"]["impressions"] == f"{message['impressions']:,.0f}"
        assert row["texts"]["cpl"] == ("—" if message["cpl"] is None else f"${message['cpl']:,.2f}")


def console_errors(driver: Any) -> list[dict[str, Any]]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_the_live_page(broker: str, browser: Any, tmp_path: Path) -> None:
    env = {**DEMO_DEFAULTS, "WEB_TOKEN": TOKEN, "LOG_LEVEL": "WARNING"}
    workers: list[WorkerProcess] = []

    def start(name: str, args: tuple[str, ...], extra: dict[str, str]) -> WorkerProcess:
        process = WorkerProcess({**env, **extra}, bootstrap=broker, log_dir=tmp_path, name=name, args=args)
        workers.append(process)
        return process.start()

    try:
        worker = start("worker", ("worker",), {})
        port = worker.web_port
        worker.wait_http("/metrics", timeout=90)
        seconds = os.environ.get("PAGE_SIMULATE_S", "20")  # longer for a screenshot with more history
        simulator = start("simulator", ("simulate", "--rate", "300", "--duration", seconds, "--seed", "21"), {})

        # --- access: 401 without the token, served with it; /metrics stays open
        for path in ("/", "/api/v1/kpis", "/api/v1/ltv", "/api/v1/state", "/api/v1/trends", "/api/v1/models",
                     "/api/v1/signals", "/api/v1/health", "/api/v1/info"):
            assert get(port, path)[0] == 401, path
            assert get(port, path, "wrong-token")[0] == 401, path
            assert get(port, path, TOKEN)[0] == 200, path
        status, body = get(port, "/")
        assert b'name="token"' in body  # the login form
        assert get(port, "/metrics")[0] == 200
        assert get(port, "/api/v1/trends?windows=0", TOKEN)[0] == 400
        assert post_login(port, "wrong-token")[0] == 401
        status, headers = post_login(port, TOKEN, "https://elsewhere.example/")
        assert status == 303 and headers["Location"] == "/"  # never sent to another site
        cookie = headers["Set-Cookie"].split(";")[0]
        assert TOKEN not in cookie and "HttpOnly" in headers["Set-Cookie"]
        with_cookie = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/kpis", headers={"Cookie": cookie})
        with urllib.request.urlopen(with_cookie, timeout=5) as response:  # noqa: S310 - local test URL
            assert response.status == 200

        # --- figures from the simulator in every part of the page's data
        wait_for("trends over 3 windows", lambda: len({m["window_start"] for m in api(port, "/api/v1/trends")}) >= 3,
                 90)
        wait_for("credits under every rule model",
                 lambda: set(api(port, "/api/v1/models")["models"]) >= RULE_MODELS, 60)
        wait_for("lifetime value", lambda: api(port, "/api/v1/ltv"), 60)

        # --- log in through the form; the screenshot while the simulator still runs
        base = f"http://127.0.0.1:{port}"
        browser.get(base + "/")
        browser.find_element("name", "token").send_keys(TOKEN)
        browser.find_element("css selector", "button[type=submit]").click()
        wait_for("the page after login", lambda: browser.execute_script("return window.__page?.renders > 1"), 10)
        assert [e for e in console_errors(browser) if "401" not in e["message"]] == []  # only the login form's
        history = max(1, int(seconds) // 10 - 2)  # windows of 10 s: a screenshot with some history, signals given
        wait_for(f"{history} windows", lambda: len({m["window_start"] for m in api(port, "/api/v1/trends")}) >= history,
                 int(seconds))
        time.sleep(1.5)
        screenshot = tmp_path / "web-page.png"
        browser.save_screenshot(str(screenshot))
        if os.environ.get("PAGE_SCREENSHOT"):
            shutil.copyfile(screenshot, ROOT / os.environ["PAGE_SCREENSHOT"])
            height = browser.execute_script("return document.documentElement.scrollHeight")
            whole = browser.execute_cdp_cmd("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": 1280, "height": height, "scale": 1}})
            full = ROOT / os.environ["PAGE_SCREENSHOT"].replace(".png", "-full.png")
            full.write_bytes(base64.b64decode(whole["data"]))
        assert simulator.process is not None and simulator.process.wait(60 + int(seconds)) == 0

        kpis = settled_kpis(port)

        # --- load time, with the session cookie: the document, then the table filled with figures
        browser.get(base + "/")
        wait_for("figures on the page", lambda: browser.execute_script("return window.__page.firstDataMs"), 10, 0.05)
        timing = browser.execute_script(
            "const n = performance.getEntriesByType('navigation')[0];"
            "return {load: n.loadEventEnd, data: window.__page.firstDataMs};")
        print(f"page load: document {timing['load']:.0f} ms, first figures {timing['data']:.0f} ms")
        (tmp_path / "page-load.json").write_bytes(orjson.dumps(timing))
        assert timing["load"] < 1000 and timing["data"] < 1000, timing

        # --- the table equals /api/v1/kpis for every channel, in the current and the last window
        page = wait_for("the table equal to the API", lambda: (
            lambda p: p if not same_figures(p, kpis) else None)(browser.execute_script(READ_TABLE)), 5)
        assert len(page["rows"]) >= 5
        visible_text_matches(page, kpis)
        expected_total = total_row([m for m in kpis if m["window_start"] == int(page["start"])])
        for key, text in browser.execute_script(READ_TOTAL).items():  # the total row: `attribution top`'s
            want = expected_total[key]
            assert (text == "") if want is None else math.isclose(float(text), want, rel_tol=1e-9, abs_tol=1e-9), key
        browser.find_element("id", "tab-last").click()
        last = browser.execute_script(READ_TABLE)
        assert int(last["start"]) < int(page["start"]) and same_figures(last, kpis) == []
        browser.find_element("id", "tab-current").click()

        # --- sortable: by spend, highest first, then lowest first; by channel name
        def column(key: str) -> list[Any]:
            rows = browser.execute_script(READ_TABLE)["rows"]
            return [row["channel"] if key == "channel" else float(row["values"][key] or "nan") for row in rows]

        spends = column("spend")
        assert spends == sorted(spends, reverse=True)  # the default order
        browser.find_element("css selector", "#kpi-table th[data-key=spend]").click()
        assert column("spend") == sorted(spends)
        browser.find_element("css selector", "#kpi-table th[data-key=channel]").click()
        assert column("channel") == sorted(column("channel"))
        browser.find_element("css selector", "#kpi-table th[data-key=spend]").click()

        def signals_shown() -> bool:  # a signal can still change after the figures settled: read both again
            signals = {s["channel"]: s for s in api(port, "/api/v1/signals") if not s.get("campaign")}
            rows = browser.execute_script(READ_TABLE)["rows"]
            return bool(signals) and all(
                row["signal"] == signals[row["channel"]]["action"] + signals[row["channel"]]["reason"]
                if row["channel"] in signals else row["signal"] == "—" for row in rows)

        wait_for("each row with its signal and reason", signals_shown, 5)

        # --- charts hold points; lifetime value and every model the API returns are shown
        points = browser.execute_script("return window.__page.chartPoints()")
        assert all(points[chart] > 0 for chart in ("chart-money", "chart-romi", "chart-cpl", "chart-events")), points
        models = api(port, "/api/v1/models")["models"]
        shown_models = browser.execute_script(
            "return [...document.querySelectorAll('#models-table th[data-model]')].map((th) => th.dataset.model)")
        assert sorted(shown_models) == sorted(models)
        ltv_rows = browser.execute_script("return document.querySelectorAll('#ltv-table tbody tr').length")
        assert ltv_rows == len(api(port, "/api/v1/ltv"))

        # --- more events: a spend report; the page shows the new figure within 5 s of the API, no reload
        browser.execute_script("window.__sameDocument = 42")
        start_ms = int(page["start"])
        before = {m["channel"]: m for m in api(port, "/api/v1/kpis") if m["window_start"] == start_ms}["google_ads"]
        sent = time.monotonic()
        report = {"event_id": f"page-{uuid.uuid4()}", "type": "spend", "ts": start_ms + 1, "channel": "google_ads",
                  "campaign": "brand", "amount": 1234.5}
        asyncio.run(produce(broker, "spend", [orjson.dumps(report)]))
        expected = round(before["spend"] + 1234.5, 6)

        def api_spend() -> float | None:
            rows = [m for m in api(port, "/api/v1/kpis")
                    if m["window_start"] == start_ms and m["channel"] == "google_ads"]
            return rows[0]["spend"] if rows and round(rows[0]["spend"], 6) == expected else None

        new_spend = wait_for("the spend report in the API", api_spend, 30, 0.05)
        in_api = time.monotonic()
        cell = "#kpi-table tr[data-channel='google_ads'] td[data-key=spend]"
        page_has_it = f'return document.querySelector("{cell}")?.dataset.value === "{new_spend!r}"'
        wait_for("the new spend on the page", lambda: browser.execute_script(page_has_it), 5, 0.05)
        on_page = time.monotonic()
        print(f"new figures: in the API {in_api - sent:.2f} s after sending, "
              f"on the page {on_page - in_api:.2f} s later")
        assert browser.execute_script("return window.__sameDocument") == 42  # no reload
        assert on_page - in_api <= 5.0
        assert console_errors(browser) == []

        # --- log out: the login form again
        browser.find_element("css selector", "#logout button").click()
        wait_for("the login form after logging out", lambda: browser.find_elements("name", "token"), 5)
        assert get(port, "/api/v1/info", TOKEN)[0] == 200 and api(port, "/api/v1/info")["login"] is True

    finally:
        for process in reversed(workers):
            process.stop(timeout=15)
            print(f"--- {process.name} log ---\n{process.tail(30)}")


def test_without_web_token_the_page_is_open_and_the_log_says_so_once(tmp_path: Path) -> None:
    embedded = EmbeddedBroker(run_dir=tmp_path / "broker")  # a group of its own: no worker without Redis beside it
    try:
        with WorkerProcess({"WEB_TOKEN": "", "LOG_LEVEL": "WARNING"}, bootstrap=embedded.start(),
                           log_dir=tmp_path) as worker:
            worker.wait_http("/api/v1/kpis", timeout=90)
            assert get(worker.web_port, "/")[0] == 200
            assert get(worker.web_port, "/api/v1/kpis") == (200, b"[]")
            assert orjson.loads(get(worker.web_port, "/api/v1/info")[1])["login"] is False
            assert worker.log_text().count("WEB_TOKEN is unset") == 1
    finally:
        embedded.stop()
