"""The chat logic: turns a validated request into an engine request, and the engine's
outputs into OpenAI's response or SSE stream, timing the turn for the observer.

Byte-level compatibility with OpenAI's stream matters because NextChat and the ``openai``
client parse it strictly: a role delta first, content deltas, a final chunk with
``finish_reason``, the usage chunk (empty ``choices``) when ``stream_options.include_usage``
is set, then ``data: [DONE]``. A delta never carries both ``content`` and
``reasoning_content`` (NextChat would drop the content).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import AsyncIterator, Mapping, Sequence

from contracts.jsonline import dumps_line
from inference.chat.protocol import ChatCompletionRequest, ChatMessage, PromptRequest, error_body, usage
from inference.chat.reasoning import ReasoningSplitter
from inference.engine.base import Engine, EngineError, EngineOutput, GenerationRequest, SamplingParams
from inference.request_kinds import CHAT, OTHER, SUMMARY, RequestKinds, default_request_kinds
from inference.session_ids import ConversationLinks, identify, new_request_id, session_id_for, turn_index
from inference.turns import TurnObserver, TurnRecord


class ModelNotFound(EngineError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


@dataclass
class TurnContext:
    """Identifiers of one request, decided before generation starts."""

    request_id: str
    session_id: str
    turn_index: int
    created: int
    started_mono: float
    started_wall: float
    endpoint: str
    request_kind: str = CHAT
    #: the request's last message, and the assistant message before it: the reply is
    #: remembered with them (conversation linkage)
    answered: str = ""
    previous_reply: str = ""


def _sse(obj: dict) -> str:
    return "data: " + dumps_line(obj) + "\n\n"


class _ChunkFormat:
    """The SSE events of one streamed reply: every chunk but the text is the same, so it is
    encoded once and each text delta is spliced in (one ``dumps_line`` of the text instead
    of the whole chunk, which was about a tenth of the node's CPU per streamed token).
    The bytes are exactly those of ``_sse(chunk_dict)``; a test holds them to it."""

    def __init__(self, base: dict, include_usage: bool):
        self.base, self.include_usage = base, include_usage
        head = dumps_line(base)[:-1]  # the base object without its closing brace
        self._head = f'data: {head},"choices":[{{"index":0,"delta":{{"'
        self._tail = '},"logprobs":null,"finish_reason":null}]' + (',"usage":null' if include_usage else "") + "}\n\n"

    def delta(self, key: str, text: str) -> str:
        """The chunk carrying ``{key: text}`` as its delta (``content`` or ``reasoning_content``)."""
        return self._head + key + '":' + dumps_line(text) + self._tail

    def chunk(self, delta: dict, finish: str | None = None) -> str:
        """Any other chunk (the first, with the role; the last, with the finish reason)."""
        body = dict(self.base, choices=[{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}])
        if self.include_usage:
            body["usage"] = None
        return _sse(body)


class ChatService:
    def __init__(self, engine: Engine, served_model_names: Sequence[str], observer: TurnObserver,
                 default_temperature: float = 0.7, default_top_p: float = 1.0,
                 request_kinds: RequestKinds | None = None, links: ConversationLinks | None = None,
                 default_max_tokens: int | None = None):
        self.engine = engine
        #: for requests that send no max_tokens (NextChat sends none); None: the context's room
        self.default_max_tokens = default_max_tokens
        self.request_kinds = request_kinds or default_request_kinds()
        self.links = links if links is not None else ConversationLinks()
        self.served_model_names = list(served_model_names)
        self.observer = observer
        self.default_temperature = default_temperature
        self.default_top_p = default_top_p

    # -- request preparation -----------------------------------------------------------
    def check_model(self, model: str) -> str:
        if model not in self.served_model_names:
            raise ModelNotFound(f"The model '{model}' does not exist on this server; "
                                f"available: {', '.join(self.served_model_names)}")
        return model

    def context(self, req: ChatCompletionRequest, headers: Mapping[str, str], endpoint: str,
                arrival: tuple[float, float] | None = None) -> TurnContext:
        """``arrival`` is (monotonic, wall) time the request reached the server; now if unknown."""
        pairs = [(m.role, m.text()) for m in req.messages]
        mono, wall = arrival or (time.monotonic(), time.time())
        ident = identify(headers, req.user, pairs, self.request_kinds, self.links)
        if ident.request_kind == CHAT:
            self.links.note_turn(ident.session_id, ident.turn_index)
        return TurnContext(
            request_id=new_request_id(),
            session_id=ident.session_id,
            turn_index=ident.turn_index,
            created=int(time.time()),
            started_mono=mono,
            started_wall=wall,
            endpoint=endpoint,
            request_kind=ident.request_kind,
            answered=pairs[-1][1] if pairs else "",
            previous_reply=pairs[-2][1] if len(pairs) >= 2 and pairs[-2][0] == "assistant" else "",
        )

    def max_tokens(self, req: ChatCompletionRequest) -> int | None:
        return req.effective_max_tokens() or self.default_max_tokens

    def _generation_request(self, req: ChatCompletionRequest, ctx: TurnContext) -> GenerationRequest:
        sp = SamplingParams(
            temperature=self.default_temperature if req.temperature is None else req.temperature,
            top_p=self.default_top_p if req.top_p is None else req.top_p,
            max_tokens=self.max_tokens(req),
            stop=tuple(req.stop or ()),
            presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0,
            ignore_eos=req.ignore_eos,
            min_tokens=req.min_tokens,
            seed=req.seed,
        )
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in req.messages]
        return GenerationRequest(request_id=ctx.request_id, model=req.model, messages=messages,
                                 sampling=sp, user=req.user)

    def _turn(self, req: ChatCompletionRequest, ctx: TurnContext) -> TurnRecord:
        last_user = next((m.text() for m in reversed(req.messages) if m.role == "user"), "")
        return TurnRecord(
            request_id=ctx.request_id, session_id=ctx.session_id, turn_index=ctx.turn_index,
            endpoint=ctx.endpoint, stream=req.stream, model=req.model,
            model_version=self.engine.model_version, prompt=last_user, started_at=ctx.started_wall,
            user=req.user, temperature=req.temperature, top_p=req.top_p,
            max_tokens=self.max_tokens(req), request_kind=ctx.request_kind,
        )

    def reject(self, req: ChatCompletionRequest, ctx: TurnContext, exc: EngineError) -> None:
        """Record a turn refused before generation (unknown model, full queue, too long)."""
        turn = self._turn(req, ctx)
        turn.rejected = True
        turn.http_status = exc.status_code
        turn.error_type, turn.error_message, turn.error_code = exc.error_type, str(exc), exc.code
        turn.prompt_tokens = exc.prompt_tokens
        turn.e2e_s = time.monotonic() - ctx.started_mono
        self.observer.on_turn(turn)

    def unauthorized(self, endpoint: str, headers: Mapping[str, str], body: bytes | None,
                     arrival: tuple[float, float] | None, status: int, message: str) -> TurnRecord:
        """The record of a request refused for its key (401/403), before anything else.

        It carries no prompt or reply text (whoever sent it is not a known user), is not
        linked to a conversation (the session id it would get must not tell an unknown caller
        whether a text was a reply of this node), and is tokenised by nobody. When the body of
        a chat request parses, its kind (a NextChat user's turn or a background request), model
        and stand-alone session id are kept, so a client with a wrong key shows up as failing
        chat turns in completion; any other request is ``other`` in session ``unauthenticated``."""
        mono, wall = arrival or (time.monotonic(), time.time())
        kind, session, turn_no, model, stream = OTHER, "unauthenticated", 0, "", False
        if body is not None:
            try:
                if endpoint == "/chat":  # the minimal endpoint: one prompt, a user turn
                    prompt = PromptRequest.model_validate_json(body)
                    req = ChatCompletionRequest(model=self.served_model_names[0],
                                                messages=[ChatMessage(role="user", content=prompt.prompt)])
                else:
                    req = ChatCompletionRequest.model_validate_json(body)
                pairs = [(m.role, m.text()) for m in req.messages]
                kind = self.request_kinds.classify(pairs)
                session, turn_no = session_id_for(headers, req.user, pairs), turn_index(pairs)
                model, stream = req.model, req.stream
            except Exception:  # not a chat request the node can read: stays "other"
                pass
        return TurnRecord(
            request_id=new_request_id(), session_id=session, turn_index=turn_no, endpoint=endpoint,
            stream=stream, model=model or self.served_model_names[0], model_version=self.engine.model_version,
            prompt="", started_at=wall, rejected=True, http_status=status,
            error_type="invalid_request_error" if status == 401 else "permission_error",
            error_message=message, error_code="invalid_api_key" if status == 401 else "forbidden",
            e2e_s=time.monotonic() - mono, request_kind=kind)

    def _finish(self, turn: TurnRecord, ctx: TurnContext) -> None:
        """A turn that reached the model ended: remember its reply for conversation linkage
        (a chat reply comes back in the client's history, a summary inside its memory
        message; a title never comes back), then hand the turn to the observer."""
        if ctx.request_kind == CHAT:
            self.links.remember_reply(ctx.answered, turn.response, ctx.session_id, ctx.turn_index,
                                      ctx.previous_reply)
        elif ctx.request_kind == SUMMARY:
            self.links.remember_summary(turn.response, ctx.session_id, ctx.turn_index)
        self.observer.on_turn(turn)

    async def start(self, req: ChatCompletionRequest, ctx: TurnContext) -> AsyncIterator[EngineOutput]:
        """Admit the request to the engine; raises :class:`EngineError` (and records the
        rejected turn) when it cannot start."""
        try:
            self.check_model(req.model)
            return await self.engine.generate(self._generation_request(req, ctx))
        except EngineError as exc:
            self.reject(req, ctx, exc)
            raise

    # -- non-streaming -----------------------------------------------------------------
    async def complete(self, req: ChatCompletionRequest, ctx: TurnContext,
                       outputs: AsyncIterator[EngineOutput]) -> dict:
        turn = self._turn(req, ctx)
        splitter = ReasoningSplitter()
        content, reasoning = [], []
        try:
            async for out in outputs:
                self._account(turn, out, ctx)
                r, c = splitter.feed(out.text)
                reasoning.append(out.reasoning + r)
                content.append(c)
            r, c = splitter.flush()
            reasoning.append(r)
            content.append(c)
        except BaseException as exc:
            self._fail(turn, exc, ctx)
            raise
        turn.response, turn.reasoning = "".join(content), "".join(reasoning)
        turn.e2e_s = time.monotonic() - ctx.started_mono
        self._finish(turn, ctx)
        message = {"role": "assistant", "content": turn.response}
        if turn.reasoning:
            message["reasoning_content"] = turn.reasoning
        return {
            "id": ctx.request_id, "object": "chat.completion", "created": ctx.created,
            "model": req.model, "system_fingerprint": None,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": turn.finish_reason}],
            "usage": usage(turn.prompt_tokens, turn.completion_tokens),
        }

    # -- streaming ---------------------------------------------------------------------
    async def stream(self, req: ChatCompletionRequest, ctx: TurnContext,
                     outputs: AsyncIterator[EngineOutput]) -> AsyncIterator[str]:
        turn = self._turn(req, ctx)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        base = {"id": ctx.request_id, "object": "chat.completion.chunk", "created": ctx.created,
                "model": req.model, "system_fingerprint": None}
        fmt = _ChunkFormat(base, include_usage)
        chunk = fmt.chunk

        splitter = ReasoningSplitter()
        content, reasoning = [], []
        finished = False
        try:
            yield chunk({"role": "assistant", "content": ""})
            async for out in outputs:
                self._account(turn, out, ctx)
                r, c = splitter.feed(out.text)
                r = out.reasoning + r
                if out.finish_reason is not None:
                    fr, fc = splitter.flush()
                    r, c = r + fr, c + fc
                if r:
                    reasoning.append(r)
                    yield fmt.delta("reasoning_content", r)
                if c:
                    content.append(c)
                    yield fmt.delta("content", c)
            turn.response, turn.reasoning = "".join(content), "".join(reasoning)
            yield chunk({}, turn.finish_reason or "stop")
            if include_usage:
                yield _sse(dict(base, choices=[], usage=usage(turn.prompt_tokens, turn.completion_tokens)))
            yield "data: [DONE]\n\n"
            finished = True
        except EngineError as exc:
            turn.response, turn.reasoning = "".join(content), "".join(reasoning)
            self._fail(turn, exc, ctx)
            finished = True
            yield _sse(error_body(str(exc), exc.error_type, exc.code))
            yield "data: [DONE]\n\n"
            return
        finally:
            if not finished:  # the client went away: the engine stream was closed above us
                turn.response, turn.reasoning = "".join(content), "".join(reasoning)
                turn.aborted = True
                turn.http_status = 499
                turn.e2e_s = time.monotonic() - ctx.started_mono
                self._finish(turn, ctx)
            await _aclose(outputs)
        turn.e2e_s = time.monotonic() - ctx.started_mono
        self._finish(turn, ctx)

    # -- shared ------------------------------------------------------------------------
    @staticmethod
    def _account(turn: TurnRecord, out: EngineOutput, ctx: TurnContext) -> None:
        if out.queue_s is not None:
            turn.queue_s = out.queue_s
        if turn.ttft_s is None and (out.text or out.reasoning):
            turn.ttft_s = time.monotonic() - ctx.started_mono
        turn.prompt_tokens = out.prompt_tokens or turn.prompt_tokens
        turn.completion_tokens = out.completion_tokens or turn.completion_tokens
        if out.finish_reason is not None:
            turn.finish_reason = out.finish_reason

    def _fail(self, turn: TurnRecord, exc: BaseException, ctx: TurnContext) -> None:
        turn.e2e_s = time.monotonic() - ctx.started_mono
        if isinstance(exc, EngineError):
            turn.error_type, turn.error_message, turn.error_code = exc.error_type, str(exc), exc.code
            turn.http_status = exc.status_code
        else:  # cancelled: the client went away
            turn.aborted = True
            turn.http_status = 499
        self._finish(turn, ctx)


async def _aclose(it) -> None:
    close = getattr(it, "aclose", None)
    if close is not None:
        try:
            await close()
        except Exception:  # closing a finished generator never matters to the client
            pass
