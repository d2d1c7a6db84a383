"""The real NextChat, built from source, in Debian's Chromium, against real nodes on loopback.

Every host but 127.0.0.1 is blocked in the browser (NextChat's page asks for fonts, analytics,
plugin lists); NextChat's own server can reach nothing outside this machine either, so a
request that would leave (e.g. titles to api.deepseek.com) fails instead of leaving.

One NextChat build (cached by source hash, tests/nextchat/build.py), two nodes on the tiny
model (short replies for conversations, long ones for the stop button), one NextChat server
per provider configuration, each made from the README's recipe exactly as written.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import time
from pathlib import Path

import httpx
import pytest
import yaml

from contracts.defaults import default_config_path
from contracts.supervisor import ProcessSpec, start
from contracts.log_schema import validate_record
from tests.fixtures.node import start_node
from tests.fixtures.metrics import node_metric
from tests.fixtures.ports import free_port, wait_for_port
from tests.fixtures.tools import require_tool

from .build import BuildError, build

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-nextchat-e2e"

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def standalone() -> Path:
    for tool in ("node", "npm"):
        require_tool(tool, installed_by="scripts/setup.d/40-nextchat.sh")
    try:
        return build()
    except BuildError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def node_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nextchat-node")
    (tmp / "keys.txt").write_text(KEY + "\n")
    # a cost model under which a short turn costs dollars, so the balance view shows real figures
    cost = yaml.safe_load(default_config_path("cost").read_text("utf-8"))
    cost["modes"][cost["deployment"]]["monthly_usd"] = 5_000_000
    cost["allocation"] = {**cost["allocation"], "method": "tokens", "reference_tokens_per_s": 1}
    cost["monthly_budget_usd"] = 4321
    (tmp / "cost.yaml").write_text(yaml.safe_dump(cost, allow_unicode=True), "utf-8")
    return tmp


@pytest.fixture(scope="module")
def node(tiny_model_dir, node_dir):
    """Short replies (NextChat sends no max_tokens): conversations stay quick and small."""
    n = start_node(node_dir, "--model", str(tiny_model_dir), "--api-key-file", str(node_dir / "keys.txt"),
                   "--cost-config", str(node_dir / "cost.yaml"), "--default-max-tokens", "24")
    yield n
    n.stop()


@pytest.fixture(scope="module")
def slow_node(tiny_model_dir, node_dir):
    """Long replies (seconds of streaming), for the stop button."""
    n = start_node(node_dir, "--model", str(tiny_model_dir), "--api-key-file", str(node_dir / "keys.txt"),
                   "--default-max-tokens", "3000")
    yield n
    n.stop()


class NextChatServer:
    def __init__(self, standalone: Path, env: dict[str, str], log: Path):
        self.port = free_port()
        # only what the recipe sets: no variable of this machine may leak into NextChat's config
        keep = ("PATH", "HOME", "LANG")
        self.proc = start(ProcessSpec(
            name="nextchat", argv=["node", "server.js"], output=log, cwd=standalone,
            env={**env, "HOSTNAME": "127.0.0.1", "PORT": str(self.port), "NEXT_TELEMETRY_DISABLED": "1"},
            unset_env=[k for k in os.environ if k not in keep and k not in env]))
        wait_for_port(self.port, timeout=60)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.proc.stop()  # the one supervisor: nothing of NextChat may outlive the test


def readme_recipe(name: str, node_url: str) -> dict[str, str]:
    """The server variables of the README's ``<!-- nextchat:NAME -->`` block, with ``<node>:8000``
    and ``<key>`` filled in; comments dropped."""
    text = (ROOT / "README.md").read_text("utf-8")
    block = re.search(rf"<!-- nextchat:{name} -->\s*```bash\n(.*?)```\s*<!-- /nextchat:{name} -->", text, re.S)
    assert block, f"README.md lost its nextchat:{name} recipe"
    env = {}
    for line in block.group(1).splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            k, _, v = line.partition("=")
            env[k] = v.replace("http://<node>:8000", node_url).replace("<key>", KEY)
    assert env and not any("<" in v for v in env.values()), env
    return env


@pytest.fixture(scope="module")
def servers(standalone, node, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nextchat-servers")
    started = {}
    try:
        started["deepseek"] = NextChatServer(standalone, readme_recipe("deepseek", node.base_url), tmp / "deepseek.log")
        started["openai"] = NextChatServer(standalone, readme_recipe("openai", node.base_url), tmp / "openai.log")
        started["plain"] = NextChatServer(standalone, {}, tmp / "plain.log")  # the in-app custom endpoint
        yield started
    finally:
        for s in started.values():
            s.stop()


def _only_loopback(route):
    if route.request.url.startswith(("http://127.0.0.1", "data:", "blob:")):
        route.continue_()
    else:
        route.abort()


def new_page(browser, locale: str = "en-US"):
    """A fresh browser profile (NextChat keeps its settings in localStorage) whose UI language
    follows ``locale``; every host but 127.0.0.1 blocked."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, locale=locale)
    ctx.route("**/*", _only_loopback)
    page = ctx.new_page()
    page.set_default_timeout(60_000)
    return page


# --------------------------------------------------------------------------- helpers


def open_chat(page, server) -> None:
    page.goto(server.url + "/#/chat", wait_until="domcontentloaded")
    page.wait_for_selector("#chat-input")
    page.wait_for_timeout(1000)  # NextChat fetches its server config after the first paint


def new_chat(page) -> None:
    """The sidebar's New Chat. NextChat first shows its mask splash screen (no chat input
    there) unless told not to show it; "Just Start" opens a plain new chat from it."""
    page.locator("[class*=sidebar]").get_by_text("New Chat", exact=True).first.click()
    start = page.get_by_text("Just Start", exact=True)
    page.locator("#chat-input").or_(start).first.wait_for(timeout=15_000)
    if start.is_visible():
        start.click()
    page.wait_for_selector("#chat-input")


def pick_model(page, label: str, within_s: float = 60) -> None:
    """The chat's model list (the input action showing the current model) → ``label``.

    NextChat fills the list from its server config (``/api/config``), fetched after the
    first paint; under load the list can be opened before that answer is in, and an open list
    does not update. So while ``label`` is not in it, the page is loaded again (a new fetch)
    and the list reopened."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    deadline = time.monotonic() + within_s
    while True:
        page.locator("[class*=chat-input-action]", has_text=re.compile(r"gpt-|deepseek")).last.click()
        option = page.get_by_text(label, exact=True)
        try:
            option.wait_for(state="visible", timeout=5_000)
        except PlaywrightTimeout:
            if time.monotonic() > deadline:
                raise
            page.reload(wait_until="domcontentloaded")
            page.wait_for_selector("#chat-input")
            page.wait_for_timeout(1000)
            continue
        option.click()
        return


def use_custom_endpoint(page, server, node_url: str, key: str) -> None:
    """Settings → Custom Endpoint → provider DeepSeek, endpoint, key (English UI labels)."""
    page.goto(server.url + "/#/settings", wait_until="domcontentloaded")
    page.get_by_label("Custom Endpoint").check()
    page.get_by_label("Model Provider").select_option("DeepSeek")
    page.get_by_label("Endpoint Address").fill(node_url)
    page.get_by_label("DeepSeek API Key").fill(key)
    page.wait_for_timeout(300)


def send(page, text: str) -> None:
    page.fill("#chat-input", text)
    page.keyboard.press("Enter")


def records(n) -> list[dict]:
    out = []
    for f in sorted(n.log_dir.glob("*.jsonl")):
        out += [json.loads(ln) for ln in f.read_text("utf-8").splitlines() if ln.strip()]
    return [r for r in out if r["event"]["dataset"] == "seekwatch.session"]


def wait_records(n, since: int, pred, what: str, page, timeout: float = 60) -> list[dict]:
    """Poll the node's log until ``pred(new records)``. Waits through ``page`` (Playwright's sync
    API runs the browser's route handlers only inside its own calls: a plain sleep would hold
    every request of the page, ours included)."""
    deadline = time.monotonic() + timeout
    while True:
        new = records(n)[since:]
        if pred(new):
            return new
        if time.monotonic() > deadline:
            shown = page.inner_text("body")[-1500:]
            raise AssertionError(f"timed out waiting for {what}; records: "
                                 + json.dumps([(r["request_kind"], r["turn_index"], r["status"]) for r in new])
                                 + f"; NextChat shows: {shown}")
        page.wait_for_timeout(200)


metric = node_metric


def chats(recs):
    return [r for r in recs if r["request_kind"] == "chat"]


# --------------------------------------------------------------------------- tests

TURNS = [
    "我们公司打算在内网部署一个大模型客服系统，" * 8,
    "What hardware would we need to serve about two hundred concurrent users with short answers? " * 3,
    "如果高峰期请求突然翻倍，应该如何扩容，监控哪些指标最关键？" * 5,
    "How do we keep personal data such as phone numbers and e-mail addresses out of the logs? " * 3,
    "对话完成率下降的时候，值班工程师应该先看哪些日志和图表？" * 5,
    "Finally, summarise the monthly cost of running two replicas on premises versus in the cloud. " * 3,
]


def test_a_six_turn_chinese_english_conversation_is_one_session(browser, servers, node):
    """DeepSeek provider from the README's server variables, Chinese UI: NextChat truncates to
    the last 4 messages and adds its memory message, yet the node logs one session with turns
    0…5, and the title and summary requests with their kinds, outside the turns."""
    page = new_page(browser, "zh-CN")
    sent = []
    page.on("request", lambda r: sent.append(json.loads(r.post_data)) if "/api/deepseek/chat/completions" in r.url else None)
    since = len(records(node))
    open_chat(page, servers["deepseek"])
    pick_model(page, "deepseek-chat (DeepSeek)")
    for i, text in enumerate(TURNS):
        if i == len(TURNS) - 1:  # the history passed 1,000 characters: NextChat has summarised it
            wait_records(node, since, lambda rs: any(r["request_kind"] == "summary" for r in rs),
                         "the summary request", page)
            page.wait_for_timeout(1000)  # NextChat stores the summary as the memory message
        send(page, text)
        wait_records(node, since, lambda rs, i=i: len(chats(rs)) == i + 1, f"chat turn {i}", page)
        page.wait_for_timeout(800)  # let NextChat finish the turn (and start its background requests)
    wait_records(node, since, lambda rs: any(r["request_kind"] == "title" for r in rs), "the title request", page)
    page.wait_for_timeout(1500)
    recs = records(node)[since:]
    page.context.close()
    for r in recs:
        validate_record(r)
    # NextChat really did truncate and summarise: a late turn lacks the first message and
    # carries the memory message (a summary reply of the node)
    chat_bodies = [b for b in sent if b["messages"][-1]["role"] == "user" and b["messages"][-1]["content"] in TURNS]
    last = chat_bodies[-1]["messages"]
    assert TURNS[0] not in [m["content"] for m in last]
    order = [(r["request_kind"], r["turn_index"]) for r in recs]
    assert last[0]["role"] == "system" and last[0]["content"].startswith("这是历史聊天总结作为前情提要："), (
        order, [[m["role"] for m in b["messages"]] for b in sent])
    assert [r["turn_index"] for r in chats(recs)] == list(range(6))
    assert len({r["session_id"] for r in recs}) == 1, {(r["request_kind"], r["session_id"]) for r in recs}
    kinds = {r["request_kind"] for r in recs}
    assert kinds == {"chat", "title", "summary"}
    for r in recs:  # a background request follows a chat turn; it never opens a new one
        assert r["turn_index"] <= 5
    assert all(r["status"] in ("completed", "truncated") for r in recs)


def _chat_turns(n) -> float:
    return sum(metric(n, "seekwatch_requests_total", {"status": s, "request_kind": "chat"})
               for s in ("completed", "error", "aborted", "truncated", "refused", "rejected"))


def test_the_stop_button_gives_one_aborted_turn(browser, servers, slow_node):
    """In-app custom endpoint (the browser calls the node directly): stop mid-stream is one
    ``aborted`` chat turn; a title or summary NextChat sends after it is not a turn.

    The tiny model's random weights end about a third of its replies within a few hundred
    tokens (under a second): when a reply ended before the stop button could be pressed, or
    between the click and the node seeing the disconnect (the turn is then rightly
    ``completed``), the attempt is left behind and a new chat tries again; the assertions
    are about the chat in which stop took effect."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page = new_page(browser)
    use_custom_endpoint(page, servers["plain"], slow_node.base_url, KEY)
    open_chat(page, servers["plain"])
    stop = page.locator("[class*=chat-input-action]", has_text=re.compile(r"^Stop$")).last
    for attempt in range(6):
        since, chat_before = len(records(slow_node)), _chat_turns(slow_node)
        pick_model(page, "deepseek-chat (DeepSeek)")
        send(page, f"Tell me a very long story about a lighthouse keeper and the sea, please ({attempt}).")
        try:
            stop.wait_for(state="visible", timeout=60_000)
            page.wait_for_function("document.querySelectorAll('[class*=chat-message-item]').length >= 3")
            stop.click(timeout=3_000)
        except PlaywrightTimeout:  # the reply was over first: let it land, then a new chat
            wait_records(slow_node, since, lambda rs: len(chats(rs)) >= 1, "the finished turn", page)
            new_chat(page)
            continue
        stop.wait_for(state="detached", timeout=10_000)  # NextChat stopped streaming
        wait_records(slow_node, since, lambda rs: len(chats(rs)) >= 1, "the aborted turn", page)
        if [r["status"] for r in chats(records(slow_node)[since:])] != ["completed"]:
            break
        # the reply's last token left the node before the click's disconnect arrived: the
        # turn is rightly complete; leave this chat and try again
        new_chat(page)
    else:
        raise AssertionError("every reply ended before the stop button took effect")
    page.wait_for_timeout(3000)  # anything NextChat sends after the stop arrives meanwhile
    recs = records(slow_node)[since:]
    page.context.close()
    seen = [(r["request_kind"], r["status"], r["latency_ms"], r["gen_ai"]["usage"]["output_tokens"]) for r in recs]
    assert [(r["request_kind"], r["status"]) for r in chats(recs)] == [("chat", "aborted")], seen
    assert all(r["request_kind"] in ("title", "summary") for r in recs if r["request_kind"] != "chat")
    assert _chat_turns(slow_node) - chat_before == 1


def test_a_wrong_key_shows_in_nextchat_and_on_the_node(browser, servers, node):
    page = new_page(browser)
    since = len(records(node))
    failures = metric(node, "seekwatch_auth_failures_total", {})
    use_custom_endpoint(page, servers["plain"], node.base_url, "sk-wrong-key")
    open_chat(page, servers["plain"])
    pick_model(page, "deepseek-chat (DeepSeek)")
    send(page, "Is anybody there? My question has a phone number 13812345678 in it.")
    page.get_by_text("Incorrect API key provided", exact=False).first.wait_for(timeout=30_000)
    recs = wait_records(node, since, lambda rs: len(chats(rs)) >= 1, "the 401 record", page)
    page.context.close()
    rec = chats(recs)[0]
    validate_record(rec)
    assert rec["status"] == "rejected" and rec["error"]["code"] == "invalid_api_key"
    assert rec["prompt"] == "" and "13812345678" not in json.dumps(recs)
    assert metric(node, "seekwatch_auth_failures_total", {}) >= failures + 1
    assert metric(node, "seekwatch_requests_total", {"status": "rejected", "request_kind": "chat"}) >= 1


def _js_number(x: float) -> str:
    """How JavaScript prints a number (12, not 12.0)."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def test_openai_provider_recipe_and_the_balance_view(browser, servers, node):
    """The README's OpenAI-provider recipe: chat turns go to /v1/chat/completions, the title
    request to the node too (DEEPSEEK_URL), and Settings → Account Balance shows the node's
    figures for this month."""
    page = new_page(browser)
    since = len(records(node))
    open_chat(page, servers["openai"])
    pick_model(page, "deepseek-chat (OpenAI)")
    for i, text in enumerate(TURNS[1:3]):
        send(page, text)
        wait_records(node, since, lambda rs, i=i: len(chats(rs)) == i + 1, f"chat turn {i}", page)
        page.wait_for_timeout(800)
    recs = wait_records(node, since, lambda rs: any(r["request_kind"] == "title" for r in rs), "the title request", page)
    assert [(r["endpoint"], r["turn_index"]) for r in chats(recs)] == [("/v1/chat/completions", 0), ("/v1/chat/completions", 1)]
    title = [r for r in recs if r["request_kind"] == "title"][0]
    assert title["endpoint"] == "/chat/completions" and title["session_id"] == chats(recs)[0]["session_id"]

    page.goto(servers["openai"].url + "/#/settings", wait_until="domcontentloaded")
    balance = page.locator("[class*=list-item__]", has_text="Account Balance").first
    balance.get_by_role("button").click()  # Check: ask again now
    page.wait_for_timeout(2000)
    shown = balance.inner_text()
    page.context.close()
    # the same query NextChat's server forwards (this month, in the browser's time zone, UTC here)
    today = dt.date.today()
    q = {"start_date": today.replace(day=1).isoformat(), "end_date": (today + dt.timedelta(days=1)).isoformat()}
    auth = {"Authorization": f"Bearer {KEY}"}
    usage = httpx.get(node.base_url + "/dashboard/billing/usage", params=q, headers=auth, timeout=10).json()
    sub = httpx.get(node.base_url + "/dashboard/billing/subscription", headers=auth, timeout=10).json()
    used = math.floor(usage["total_usage"] + 0.5) / 100  # JavaScript's Math.round, then cents to dollars
    assert used > 0 and sub["hard_limit_usd"] == 4321
    assert f"Used this month ${_js_number(used)}, subscription ${_js_number(sub['hard_limit_usd'])}" in shown, shown
