"""Conversation linkage and request kinds in the serving layer, with a client that behaves as
NextChat does on the wire (its windowing and background requests are replayed here in Python;
the real NextChat in Chromium is tests/nextchat/). The engine is a scripted test double that
returns a distinct reply per request: the linkage only looks at texts, not at a model."""
from __future__ import annotations

import asyncio
import itertools

from inference.chat.protocol import ChatCompletionRequest
from inference.chat.serving import ChatService
from inference.engine.base import ContextLengthExceeded, Engine, EngineOutput, EngineState
from inference.request_kinds import default_request_kinds
from inference.session_ids import ConversationLinks, identify

KINDS = default_request_kinds()
EN = {"title": next(iter(t for t in KINDS.titles if t.startswith("Please generate a four"))),
      "summary": next(iter(t for t in KINDS.summaries if t.startswith("Summarize the discussion"))),
      "history": "This is a summary of the chat history as a recap: "}


class ScriptedEngine(Engine):
    """Replies ``reply-<n> …`` (numbered per request), four tokens, or refuses long prompts."""
    model_version = "scripted"

    def __init__(self, max_chars: int = 100_000):
        self.n = itertools.count()
        self.max_chars = max_chars

    async def start(self): ...
    async def stop(self): ...
    def state(self): return EngineState(True, 0, 0, 1, 1)

    async def generate(self, request):
        size = sum(len(m["content"]) for m in request.messages)
        if size > self.max_chars:
            exc = ContextLengthExceeded(f"the messages take {size} tokens")
            exc.prompt_tokens = size
            raise exc
        n = next(self.n)

        async def outputs():
            yield EngineOutput(text=f"reply-{n} ", prompt_tokens=size, completion_tokens=1)
            yield EngineOutput(text="> quoted\n\nwith a blank line  ", prompt_tokens=size, completion_tokens=3)
            yield EngineOutput(finish_reason="stop", prompt_tokens=size, completion_tokens=4)
        return outputs()


class Recorder:
    def __init__(self):
        self.turns = []

    def on_turn(self, turn):
        self.turns.append(turn)

    def on_feedback(self, feedback): ...
    def on_invalid_request(self, status): ...
    def on_unauthorized(self, turn): self.turns.append(turn)


def _service(engine=None, links=None):
    rec = Recorder()
    return ChatService(engine or ScriptedEngine(), ["deepseek-chat"], rec, links=links), rec


def _send(service, messages, stream=True, headers=None, abort_after=None):
    """One request as NextChat's DeepSeek provider sends it; returns (reply text, context)."""
    req = ChatCompletionRequest(model="deepseek-chat", messages=messages, stream=stream)

    async def run():
        ctx = service.context(req, headers or {}, "/chat/completions")
        outputs = await service.start(req, ctx)
        if not stream:
            body = await service.complete(req, ctx, outputs)
            return body["choices"][0]["message"]["content"], ctx
        import json

        text = []
        gen = service.stream(req, ctx, outputs)
        async for event in gen:
            if event.startswith("data: {"):
                text.append(json.loads(event[6:])["choices"][0]["delta"].get("content") or "")
            if abort_after is not None and len("".join(text)) >= abort_after:
                await gen.aclose()  # the user pressed stop: the client closes the stream
                break
        return "".join(text), ctx

    return asyncio.run(run())


class NextChatLike:
    """NextChat's store logic for one conversation (app/store/chat.ts): the last 4 messages,
    the memory message once summarised, a title request after the first reply (50+ chars)
    and a summary request once the unsummarised history passes 1,000 characters."""

    def __init__(self, service, lang=EN):
        self.service, self.lang = service, lang
        self.messages: list[dict] = []
        self.memory, self.last_summarized, self.titled = "", 0, False

    def _memory(self):
        return [{"role": "system", "content": self.lang["history"] + self.memory}] if self.memory else []

    def turn(self, text, abort_after=None):
        window = [m for m in self.messages[-4:]]
        sent = self._memory() + window + [{"role": "user", "content": text}]
        reply, ctx = _send(self.service, sent, abort_after=abort_after)
        # NextChat stores the reply without quoted/blank lines on the way back (DeepSeek provider)
        shown = "\n".join(ln for ln in reply.split("\n") if not ln.startswith("> ") and ln.strip()).strip()
        self.messages += [{"role": "user", "content": text}, {"role": "assistant", "content": shown}]
        if not self.titled and sum(len(m["content"]) for m in self.messages) >= 50:
            self.titled = True
            _send(self.service, self.messages[-4:] + [{"role": "user", "content": self.lang["title"]}], stream=False)
        todo = self.messages[self.last_summarized:]
        if sum(len(m["content"]) for m in todo) > 1000:
            reply, _ = _send(self.service, self._memory() + todo + [{"role": "system", "content": self.lang["summary"]}])
            self.memory, self.last_summarized = reply, len(self.messages)
        return ctx


def test_a_truncated_summarised_conversation_stays_one_session_and_background_requests_do_not_count():
    service, rec = _service()
    chat = NextChatLike(service)
    for i in range(10):
        chat.turn(("请详细解释第%d个问题，" % i) * 25 if i % 2 else f"Question {i}: " + "explain this in detail. " * 12)
    kinds = [t.request_kind for t in rec.turns]
    assert kinds.count("title") == 1 and kinds.count("summary") >= 2  # the background requests happened
    chats = [t for t in rec.turns if t.request_kind == "chat"]
    assert [t.turn_index for t in chats] == list(range(10))
    assert len({t.session_id for t in rec.turns}) == 1  # chat, title and summaries: one conversation
    # a background request takes the index of the chat turn it follows, never a new one
    for i, t in enumerate(rec.turns):
        if t.request_kind != "chat":
            prev = [c for c in rec.turns[:i] if c.request_kind == "chat"][-1]
            assert t.turn_index == prev.turn_index


def test_a_stopped_reply_does_not_break_the_chain_and_a_restart_starts_over():
    links = ConversationLinks()
    service, rec = _service(links=links)
    chat = NextChatLike(service)
    chat.turn("first question, long enough for a title request to follow it")
    chat.turn("second question", abort_after=3)  # the client kept a prefix of the reply
    chat.turn("third question")
    chats = [t for t in rec.turns if t.request_kind == "chat"]
    assert [t.turn_index for t in chats] == [0, 1, 2] and chats[1].aborted
    assert len({t.session_id for t in chats}) == 1
    # a restarted node has no memory of the replies: the window's opening gives a new session
    service2, rec2 = _service()
    chat.service = service2
    chat.turn("fourth question")
    assert rec2.turns[0].session_id != chats[0].session_id and rec2.turns[0].session_id.startswith("fp-")


def test_explicit_ids_win_over_the_linkage():
    service, rec = _service()
    first, _ = _send(service, [{"role": "user", "content": "hello"}])
    msgs = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": first},
            {"role": "user", "content": "again"}]
    _send(service, msgs, headers={"x-session-id": "mine-1"})
    assert (rec.turns[-1].session_id, rec.turns[-1].turn_index) == ("mine-1", 1)
    _send(service, msgs)
    assert rec.turns[-1].session_id == rec.turns[0].session_id


def test_same_reply_text_in_two_conversations_links_by_the_message_it_answered():
    links = ConversationLinks()
    links.remember_reply("question A", "Sure.", "s-a", 0)
    links.remember_reply("question B", "Sure.", "s-b", 3)
    find = lambda q: links.find([("user", q), ("assistant", "Sure."), ("user", "next")], KINDS)
    assert find("question A") == ("s-a", 1) and find("question B") == ("s-b", 4) and find("other") is None


def test_a_common_exchange_does_not_merge_conversations_when_the_reply_before_it_is_sent():
    """Two customers ask the same question and get the same answer: each later turn stays in
    its own conversation because the reply before the question differs."""
    links = ConversationLinks()
    links.remember_reply("How do I return an order?", "Open the order page.", "s-a", 2, previous_reply="About shoes.")
    links.remember_reply("How do I return an order?", "Open the order page.", "s-b", 5, previous_reply="About a phone.")
    window = lambda before: [("user", "x"), ("assistant", before), ("user", "How do I return an order?"),
                             ("assistant", "Open the order page."), ("user", "thanks")]
    assert links.find(window("About shoes."), KINDS) == ("s-a", 3)
    assert links.find(window("About a phone."), KINDS) == ("s-b", 6)
    assert links.find(window("Something else."), KINDS) is None


def test_the_reply_memory_is_bounded_in_entries_and_time():
    now = [0.0]
    links = ConversationLinks(max_entries=6, ttl_s=60, clock=lambda: now[0])
    for i in range(5):
        links.remember_reply(f"q{i}", f"r{i}", f"s{i}", 0)
    assert len(links) == 6  # two keys a reply: the three newest replies
    hist = lambda i: [("user", f"q{i}"), ("assistant", f"r{i}"), ("user", "x")]
    assert links.find(hist(0), KINDS) is None and links.find(hist(4), KINDS) == ("s4", 1)
    now[0] = 61.0
    assert links.find(hist(4), KINDS) is None


def test_kinds_come_from_the_last_message_only():
    title, summary = EN["title"], EN["summary"]
    assert KINDS.classify([("user", "hi"), ("assistant", "yo"), ("user", title)]) == "title"
    assert KINDS.classify([("user", "hi"), ("system", "  " + summary.replace(" ", "\n ", 2))]) == "summary"
    assert KINDS.classify([("user", title), ("assistant", "t"), ("user", "thanks")]) == "chat"
    assert KINDS.classify([("user", "please translate: " + title)]) == "chat"
    ident = identify({}, None, [("user", "hi"), ("assistant", "yo"), ("user", title)], KINDS, ConversationLinks())
    assert (ident.request_kind, ident.turn_index) == ("title", 0)


def test_a_rejected_turn_carries_the_prompt_tokens_the_node_counted():
    service, rec = _service(ScriptedEngine(max_chars=50))
    req = ChatCompletionRequest(model="deepseek-chat", messages=[{"role": "user", "content": "x" * 80}])

    async def run():
        ctx = service.context(req, {}, "/v1/chat/completions")
        try:
            await service.start(req, ctx)
        except ContextLengthExceeded:
            pass

    asyncio.run(run())
    assert rec.turns[-1].rejected and rec.turns[-1].prompt_tokens == 80


def test_a_summary_request_over_the_context_is_a_rejected_summary_not_a_failed_turn():
    service, rec = _service(ScriptedEngine(max_chars=400))
    first, _ = _send(service, [{"role": "user", "content": "short question"}])
    req = ChatCompletionRequest(model="deepseek-chat", stream=True, messages=[
        {"role": "user", "content": "short question"}, {"role": "assistant", "content": first},
        {"role": "user", "content": "a long follow-up " * 30}, {"role": "system", "content": EN["summary"]}])

    async def run():
        ctx = service.context(req, {}, "/chat/completions")
        try:
            await service.start(req, ctx)
        except ContextLengthExceeded:
            pass

    asyncio.run(run())
    last = rec.turns[-1]
    assert (last.request_kind, last.rejected, last.session_id, last.turn_index) == ("summary", True, rec.turns[0].session_id, 1)
    assert last.prompt_tokens > 400
