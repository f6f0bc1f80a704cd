"""OpenAI's wire format for the simulator, as pure functions: requests in, response bodies out.

``parse_request`` validates a decoded JSON body as the real API would, raising InvalidRequest
for what it answers with 400; the rest builds the bodies the simulator sends (completions,
the model list, errors). No I/O and no aiohttp here: server.py reads the request, calls in, and
writes the bytes out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

from synthd.errors import InvalidRequest
from synthd.sim import content

Kind = Literal["chat", "text"]

MAX_N = 128
MAX_STOP = 4
DEFAULT_MAX_TOKENS: dict[Kind, int] = {"chat": 256, "text": 16}
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


# --- requests --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimRequest:
    """A validated completion request. ``prompts`` has one entry for chat (the messages' text)
    and one per prompt for a batched legacy completion; each gets ``n`` choices."""

    kind: Kind
    model: str
    prompts: tuple[str, ...]
    prompt_tokens: int
    n: int
    max_tokens: int
    stop: tuple[str, ...]
    json_mode: bool

    @property
    def charged_tokens(self) -> int:
        """The rate-limit charge at admission: prompt + max_tokens for every choice (as OpenAI)."""
        return self.prompt_tokens + self.max_tokens * self.n * len(self.prompts)


def _type_name(value: object) -> str:
    return {
        str: "a string", bool: "a boolean", int: "an integer", float: "a number",
        list: "an array", dict: "an object", type(None): "null",
    }.get(type(value), type(value).__name__)  # fmt: skip


def _wrong_type(param: str, expected: str, value: object) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid type for '{param}': expected {expected}, but got {_type_name(value)} instead.",
        param,
    )


def _int(body: dict[str, Any], param: str, default: int, low: int, high: int) -> int:
    value = body.get(param)
    if value is None:
        return default
    if type(value) is not int:
        raise _wrong_type(param, "an integer", value)
    if value < low:
        raise InvalidRequest(f"{value} is less than the minimum of {low} - '{param}'", param)
    if value > high:
        raise InvalidRequest(f"{value} is greater than the maximum of {high} - '{param}'", param)
    return value


def _number(body: dict[str, Any], param: str, low: float, high: float) -> None:
    value = body.get(param)
    if value is None:
        return
    if type(value) not in (int, float):
        raise _wrong_type(param, "a number", value)
    if value < low:
        raise InvalidRequest(f"{value} is less than the minimum of {low:g} - '{param}'", param)
    if value > high:
        raise InvalidRequest(f"{value} is greater than the maximum of {high:g} - '{param}'", param)


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise _wrong_type("stop", "a string or an array of strings", value)
    if len(value) > MAX_STOP:
        raise InvalidRequest(
            f"Invalid 'stop': array too long. Expected an array with maximum length {MAX_STOP}, "
            f"but got an array with length {len(value)} instead.",
            "stop",
        )
    return tuple(s for s in value if s)  # an empty stop sequence would match everywhere


def _message_text(i: int, message: object) -> str:
    if not isinstance(message, dict):
        raise _wrong_type(f"messages[{i}]", "an object", message)
    role = message.get("role")
    if role is None:
        raise InvalidRequest(
            f"Missing required parameter: 'messages[{i}].role'.", f"messages[{i}].role"
        )
    if role not in _ROLES:
        raise InvalidRequest(
            f"Invalid value: '{role}'. Supported values are: {', '.join(sorted(_ROLES))}.",
            f"messages[{i}].role",
        )
    value = message.get("content")
    param = f"messages[{i}].content"
    if isinstance(value, str):
        return value
    if value is None:
        raise InvalidRequest(f"Missing required parameter: '{param}'.", param)
    if not isinstance(value, list) or not value:
        raise _wrong_type(param, "a string or a non-empty array of content parts", value)
    texts = []
    for j, part in enumerate(value):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _wrong_type(f"{param}[{j}]", "an object with a 'type'", part)
        if part["type"] == "text":
            if not isinstance(part.get("text"), str):
                raise _wrong_type(f"{param}[{j}].text", "a string", part.get("text"))
            texts.append(part["text"])
    return "\n".join(texts)


def _prompts(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("prompt")
    if value is None:
        raise InvalidRequest("Missing required parameter: 'prompt'.", "prompt")
    if isinstance(value, str):
        prompts: tuple[str, ...] = (value,)
    elif isinstance(value, list) and value and all(isinstance(p, str) for p in value):
        prompts = tuple(value)
    else:
        # Token-id prompts are valid for OpenAI but the simulator does not decode tokens.
        raise _wrong_type("prompt", "a string or an array of strings", value)
    if not all(prompts):
        raise InvalidRequest("Invalid 'prompt': the prompt must not be empty.", "prompt")
    return prompts


def parse_request(kind: Kind, body: object) -> SimRequest:
    """Validate a decoded JSON body as OpenAI would; raises InvalidRequest for a 400.

    Unknown fields are ignored, as the real API ignores most of them. ``stream`` is refused:
    the simulator answers only whole responses.
    """
    if not isinstance(body, dict):
        raise InvalidRequest("Invalid request body: expected a JSON object.")
    model = body.get("model")
    if model is None:
        raise InvalidRequest("you must provide a model parameter", "model")
    if not isinstance(model, str) or not model:
        raise _wrong_type("model", "a non-empty string", model)
    if body.get("stream"):
        raise InvalidRequest("The simulator does not support 'stream'.", "stream")

    json_mode = False
    if kind == "chat":
        messages = body.get("messages")
        if messages is None:
            raise InvalidRequest("Missing required parameter: 'messages'.", "messages")
        if not isinstance(messages, list):
            raise _wrong_type("messages", "an array", messages)
        if not messages:
            raise InvalidRequest(
                "Invalid 'messages': empty array. Expected an array with minimum length 1, "
                "but got an empty array instead.",
                "messages",
            )
        texts = [_message_text(i, m) for i, m in enumerate(messages)]
        prompts: tuple[str, ...] = ("\n".join(texts),)
        prompt_tokens = content.chat_prompt_tokens(texts)
        fmt = body.get("response_format")
        if fmt is not None:
            if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str):
                raise _wrong_type("response_format", "an object with a 'type'", fmt)
            json_mode = fmt["type"] in ("json_object", "json_schema")
        max_param = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    else:
        prompts = _prompts(body)
        prompt_tokens = sum(content.count_tokens(p) for p in prompts)
        max_param = "max_tokens"

    n = _int(body, "n", 1, 1, MAX_N)
    max_tokens = _int(body, max_param, DEFAULT_MAX_TOKENS[kind], 1, 1 << 31)
    _number(body, "temperature", 0.0, 2.0)
    _number(body, "top_p", 0.0, 1.0)
    _number(body, "presence_penalty", -2.0, 2.0)
    _number(body, "frequency_penalty", -2.0, 2.0)
    return SimRequest(
        kind=kind,
        model=model,
        prompts=prompts,
        prompt_tokens=prompt_tokens,
        n=n,
        max_tokens=max_tokens,
        stop=_stop(body),
        json_mode=json_mode,
    )


# Fields that limit or shape delivery but not what a seeded model samples: leaving them out of
# the content key makes a request with stop or a smaller max_tokens (or a larger n) get a prefix
# of (or more of) the same answers, as a real model sampling with a fixed seed would.
_DELIVERY_FIELDS = frozenset({"n", "max_tokens", "max_completion_tokens", "stop", "stream", "user"})


def content_key(body: dict[str, Any]) -> bytes:
    """The canonical bytes a request's content is seeded from: the body without delivery
    fields, keys sorted, so key order and whitespace do not change the answer either."""
    return orjson.dumps(
        {k: v for k, v in body.items() if k not in _DELIVERY_FIELDS}, option=orjson.OPT_SORT_KEYS
    )


def api_key(authorization: str | None) -> str:
    """The key a request is limited under: the bearer token, or "anonymous" without one."""
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or "anonymous"
    return "anonymous"


# --- responses -------------------------------------------------------------------------------


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )


# Fixed bodies, encoded once rather than per response.
INVALID_JSON = error_body(
    "We could not parse the JSON body of your request. (HINT: This likely means "
    "you aren't using your HTTP library correctly.)",
    "invalid_request_error",
)
SERVER_ERROR = error_body(
    "The server had an error while processing your request. Sorry about that!", "server_error"
)
OVERLOADED = error_body(
    "The engine is currently overloaded, please try again later.", "server_error"
)
# What an nginx in front of the API sends when the upstream fails: not JSON at all.
BAD_GATEWAY_HTML = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


def list_page(ids: list[str], after: str | None, limit: int) -> tuple[slice, bool]:
    """A list endpoint's page over ``ids`` (newest first): up to ``limit`` after the id
    ``after`` (none when it is not one of them), and whether more follow."""
    start = 0
    if after is not None:
        start = ids.index(after) + 1 if after in ids else len(ids)
    return slice(start, start + limit), len(ids) - start > limit


def models_body(models: tuple[str, ...], created: int) -> bytes:
    """The body of GET /v1/models: a list object with one model object per name."""
    return orjson.dumps(
        {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": created, "owned_by": "synthd-sim"}
                for m in models
            ],
        }
    )


def completion_body(
    req: SimRequest,
    id_: str,
    created: int,
    choices: list[tuple[str | None, str]],
    completion_tokens: int,
    with_usage: bool = True,
) -> dict[str, Any]:
    """An OpenAI chat.completion or text_completion object for (content, finish_reason) pairs."""
    if req.kind == "chat":
        body: dict[str, Any] = {
            "id": "chatcmpl-" + id_,
            "object": "chat.completion",
            "created": created,
            "model": req.model,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish,
                }
                for i, (text, finish) in enumerate(choices)
            ],
            "system_fingerprint": "fp_synthd_sim",
        }
    else:
        body = {
            "id": "cmpl-" + id_,
            "object": "text_completion",
            "created": created,
            "model": req.model,
            "choices": [
                {"text": text or "", "index": i, "logprobs": None, "finish_reason": finish}
                for i, (text, finish) in enumerate(choices)
            ],
        }
    if with_usage:
        body["usage"] = {
            "prompt_tokens": req.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": req.prompt_tokens + completion_tokens,
        }
    return body
