"""The simulator over real sockets: OpenAI schema, request semantics, 400s, determinism, stats."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion

from synthd.sim import RunningSim, SimConfig, running_sim
from synthd.sim.content import count_tokens

CHAT = "/chat/completions"
TEXT = "/completions"
QUESTIONS = "Write five questions about photosynthesis, chlorophyll and sunlight in green leaves."


def chat(content: str = QUESTIONS, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-sim", "messages": [{"role": "user", "content": content}], **extra}


@pytest.fixture
async def sim() -> AsyncIterator[RunningSim]:
    async with running_sim(SimConfig(port=0)) as s:
        yield s


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def post(
    session: aiohttp.ClientSession, sim: RunningSim, path: str, body: Any
) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with session.post(sim.base_url + path, data=data) as resp:
        return resp.status, orjson.loads(await resp.read())


async def test_chat_completion_schema(sim: RunningSim, session: aiohttp.ClientSession) -> None:
    messages = [
        {"role": "system", "content": "You write questions."},
        {"role": "user", "content": [{"type": "text", "text": QUESTIONS}]},
    ]
    status, body = await post(session, sim, CHAT, {"model": "m-1", "messages": messages})
    assert status == 200
    parsed = ChatCompletion.model_validate(body)
    assert parsed.id.startswith("chatcmpl-") and parsed.object == "chat.completion"
    assert parsed.model == "m-1" and abs(parsed.created - sim.stats()["started"]) < 60
    (choice,) = parsed.choices
    assert choice.index == 0 and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length") and choice.message.content
    usage = parsed.usage
    assert usage is not None
    assert (
        usage.prompt_tokens
        == count_tokens("You write questions.") + 4 + count_tokens(QUESTIONS) + 4
    )
    assert usage.completion_tokens == count_tokens(choice.message.content)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_text_completion_schema_and_default_max_tokens(
    sim: RunningSim, session: aiohttp.ClientSession
) -> None:
    status, body = await post(session, sim, TEXT, {"model": "m-2", "prompt": "Tell me a story"})
    assert status == 200
    parsed = Completion.model_validate(body)
    assert parsed.id.startswith("cmpl-") and parsed.object == "text_completion"
    assert parsed.model == "m-2"
    (choice,) = parsed.choices
    assert choice.logprobs is None and body["choices"][0]["logprobs"] is None
    # Legacy default of 16 tokens: the story is longer, so it is cut.
    assert (choice.finish_reason, count_tokens(choice.text)) == ("length", 16)
    assert parsed.usage is not None and parsed.usage.prompt_tokens == count_tokens(
        "Tell me a story"
    )


async def test_chat_default_max_tokens_is_256(
    sim: RunningSim, session: aiohttp.ClientSession
) -> None:
    # Long prose: three paragraphs of the "text" mode exceed 256 tokens for some choice.
    _, body = await post(session, sim, CHAT, chat("Write an essay about gardens", n=20))
    tokens = [count_tokens(c["message"]["content"]) for c in body["choices"]]
    assert max(tokens) == 256
    assert all(
        c["finish_reason"] == "length"
        for c in body["choices"]
        if count_tokens(c["message"]["content"]) == 256
    )


async def test_n_gives_n_different_choices(sim: RunningSim, session: aiohttp.ClientSession) -> None:
    _, body = await post(session, sim, CHAT, chat(n=4))
    ChatCompletion.model_validate(body)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert len({c["message"]["content"] for c in body["choices"]}) == 4
    total = sum(count_tokens(c["message"]["content"]) for c in body["choices"])
    assert body["usage"]["completion_tokens"] == total


async def test_batched_prompts_get_n_choices_each(
    sim: RunningSim, session: aiohttp.ClientSession
) -> None:
    _, body = await post(session, sim, TEXT, {"model": "m", "prompt": ["one story", "two"], "n": 2})
    Completion.model_validate(body)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert body["usage"]["prompt_tokens"] == count_tokens("one story") + count_tokens("two")


async def test_max_tokens_truncates_with_finish_length(
    sim: RunningSim, session: aiohttp.ClientSession
) -> None:
    _, body = await post(session, sim, CHAT, chat(n=3, max_tokens=5))
    for c in body["choices"]:
        assert c["finish_reason"] == "length" and len(c["message"]["content"]) == 20
    assert body["usage"]["completion_tokens"] == 15


async def test_max_completion_tokens_is_honoured(
    sim: RunningSim, session: aiohttp.ClientSession
) -> None:
    _, body = await post(session, sim, CHAT, chat(max_completion_tokens=3))
    assert body["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize("stop", ["2.", ["?", "2."]])
async def test_stop_cuts_at_the_first_occurrence(
    sim: RunningSim, session: aiohttp.ClientSession, stop: str | list[str]
) -> None:
    _, full = await post(session, sim, CHAT, chat(n=8))
    _, cut = await post(session, sim, CHAT, chat(n=8, stop=stop))
    stops = [stop] if isinstance(stop, str) else stop
    for whole, part in zip(full["choices"], cut["choices"], strict=True):
        text, cut_text = whole["message"]["content"], part["message"]["content"]
        # Stop is a delivery option: the answer is the same, only cut earlier.
        ends = [i for i in (text.find(s) for s in stops) if i != -1]
        assert cut_text == text[: min(ends)] if ends else cut_text == text
        assert part["finish_reason"] == "stop"


async def test_speaker_stop_truncates_a_conversation(
    sim: RunningSim, session: aiohttp.ClientSession
) -> None:
    prompt = "Write a conversation between COACH: and USER: about sleep."
    _, body = await post(session, sim, CHAT, chat(prompt, n=5, stop=["USER:"]))
    for c in body["choices"]:
        assert c["message"]["content"].startswith("COACH:")
        assert "USER:" not in c["message"]["content"] and c["finish_reason"] == "stop"


def _error(param: str | None) -> dict[str, Any]:
    return {"type": "invalid_request_error", "param": param, "code": None}


BAD_CHAT: list[tuple[Any, str | None]] = [
    (b"{not json", None),
    (b"", None),
    ([1, 2], None),
    ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
    ({"model": 5, "messages": [{"role": "user", "content": "hi"}]}, "model"),
    ({"model": "m"}, "messages"),
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": "hi"}, "messages"),
    ({"model": "m", "messages": ["hi"]}, "messages[0]"),
    ({"model": "m", "messages": [{"content": "hi"}]}, "messages[0].role"),
    ({"model": "m", "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"model": "m", "messages": [{"role": "user"}]}, "messages[0].content"),
    ({"model": "m", "messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    (chat(n=0), "n"),
    (chat(n="2"), "n"),
    (chat(n=1.5), "n"),
    (chat(n=True), "n"),
    (chat(n=129), "n"),
    (chat(max_tokens=0), "max_tokens"),
    (chat(max_tokens="10"), "max_tokens"),
    (chat(temperature=2.5), "temperature"),
    (chat(temperature=-0.1), "temperature"),
    (chat(temperature="hot"), "temperature"),
    (chat(top_p=1.5), "top_p"),
    (chat(stop=5), "stop"),
    (chat(stop=["a", 1]), "stop"),
    (chat(stop=["a", "b", "c", "d", "e"]), "stop"),
    (chat(stream=True), "stream"),
]
BAD_TEXT: list[tuple[Any, str | None]] = [
    ({"model": "m"}, "prompt"),
    ({"model": "m", "prompt": ""}, "prompt"),
    ({"model": "m", "prompt": []}, "prompt"),
    ({"model": "m", "prompt": [1, 2, 3]}, "prompt"),
    ({"model": "m", "prompt": "hi", "max_tokens": -1}, "max_tokens"),
]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [(CHAT, b, p) for b, p in BAD_CHAT] + [(TEXT, b, p) for b, p in BAD_TEXT],
)
async def test_invalid_requests_get_openai_400s(
    sim: RunningSim, session: aiohttp.ClientSession, path: str, body: Any, param: str | None
) -> None:
    status, error = await post(session, sim, path, body)
    assert status == 400
    assert set(error) == {"error"} and set(error["error"]) == {"message", "type", "param", "code"}
    assert error["error"] | {"message": None} == _error(param) | {"message": None}
    assert isinstance(error["error"]["message"], str) and error["error"]["message"]


async def test_valid_edge_values_are_accepted(
    sim: RunningSim, session: aiohttp.ClientSession
) -> None:
    for body in (
        chat(n=128, max_tokens=1, temperature=0, top_p=1, stop=None),
        chat(temperature=2.0, stop=["a", "b", "c", "d"], max_tokens=None, response_format=None),
        chat(stop="", unknown_field={"x": 1}),
    ):
        status, _ = await post(session, sim, CHAT, body)
        assert status == 200


async def test_authorization_is_optional_and_free_form(
    sim: RunningSim, session: aiohttp.ClientSession
) -> None:
    for headers in ({}, {"Authorization": "Bearer sk-x"}, {"Authorization": "garbage"}):
        async with session.post(sim.base_url + CHAT, json=chat(), headers=headers) as resp:
            assert resp.status == 200


async def test_same_request_same_answer(sim: RunningSim, session: aiohttp.ClientSession) -> None:
    _, a = await post(session, sim, CHAT, chat(n=2, temperature=0.7))
    # Same fields in another order and layout: still the same request.
    raw = (
        b'{ "temperature": 0.7, "n": 2,\n'
        b' "messages": [{"content": "%s", "role": "user"}], "model": "gpt-sim"}'
    )
    _, b = await post(session, sim, CHAT, raw % QUESTIONS.encode())
    assert a["id"] != b["id"]
    for body in (a, b):
        del body["id"], body["created"]
    assert a == b


async def test_choices_do_not_depend_on_n(sim: RunningSim, session: aiohttp.ClientSession) -> None:
    _, one = await post(session, sim, CHAT, chat(n=1))
    _, three = await post(session, sim, CHAT, chat(n=3))
    assert one["choices"][0] == three["choices"][0]


async def test_the_server_seed_changes_answers(session: aiohttp.ClientSession) -> None:
    answers = []
    for seed in (1, 2):
        async with running_sim(SimConfig(port=0, seed=seed)) as s:
            _, body = await post(session, s, CHAT, chat())
            answers.append(body["choices"][0]["message"]["content"])
    assert answers[0] != answers[1]


@pytest.mark.parametrize(
    ("prompt", "check"),
    [
        (QUESTIONS, lambda t: "1. " in t),
        ("A dialogue between MAYA: and CLIENT:", lambda t: t.startswith("MAYA: ")),
        ("Return JSON", lambda t: t.startswith("{")),
        ("Describe a garden", lambda t: t[0].isupper() and "1. " not in t and ":" not in t),
    ],
)
async def test_auto_mode_follows_the_prompt(
    sim: RunningSim, session: aiohttp.ClientSession, prompt: str, check: Any
) -> None:
    _, body = await post(session, sim, CHAT, chat(prompt, n=3))
    assert all(check(c["message"]["content"]) for c in body["choices"])


async def test_forced_mode_and_response_format(session: aiohttp.ClientSession) -> None:
    async with running_sim(SimConfig(port=0, mode="conversation")) as s:
        _, body = await post(session, s, CHAT, chat("Return JSON"))
        assert body["choices"][0]["message"]["content"].startswith("USER: ")
    async with running_sim(SimConfig(port=0)) as s:
        fmt = {"type": "json_object"}
        _, body = await post(session, s, CHAT, chat("Describe a garden", response_format=fmt))
        assert body["choices"][0]["message"]["content"].startswith("{")


async def test_models_health_and_unknown_urls(session: aiohttp.ClientSession) -> None:
    async with running_sim(SimConfig(port=0, models=("a", "b"))) as s:
        async with session.get(s.base_url + "/models") as resp:
            models = await resp.json()
        assert [m["id"] for m in models["data"]] == ["a", "b"]
        assert models["object"] == "list" and models["data"][0]["object"] == "model"
        async with session.get(s.url + "/health") as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "ok"
        async with session.get(s.base_url + "/engines") as resp:
            assert (
                resp.status == 404
                and (await resp.json())["error"]["type"] == "invalid_request_error"
            )
        async with session.get(s.base_url + CHAT) as resp:
            assert resp.status == 404


async def test_stats_count_requests_tokens_and_seconds(
    sim: RunningSim, session: aiohttp.ClientSession
) -> None:
    usages = []
    for body in (chat(n=2, max_tokens=50), chat("other", max_tokens=10)):
        _, resp = await post(session, sim, CHAT, body)
        usages.append(resp["usage"])
    _, resp = await post(session, sim, TEXT, {"model": "m", "prompt": "hello"})
    usages.append(resp["usage"])
    await post(session, sim, CHAT, {"model": "m"})  # a 400

    async with session.get(sim.url + "/stats") as r:
        stats = await r.json()
    assert stats == sim.stats() | {"started": stats["started"]}
    assert stats["requests"] == 4
    assert stats["by_status"] == {"200": 3, "400": 1}
    assert stats["faults"] == {} and stats["rate_limited"] == 0
    assert stats["prompt_tokens"] == sum(u["prompt_tokens"] for u in usages)
    assert stats["completion_tokens"] == sum(u["completion_tokens"] for u in usages)
    charged = [usages[0]["prompt_tokens"] + 50 * 2, usages[1]["prompt_tokens"] + 10, 2 + 16]
    assert stats["accepted_tokens"] == sum(charged)
    assert sum(count for _, count in stats["per_second"]) == 3
    assert all(math.isclose(s, stats["started"], abs_tol=60) for s, _ in stats["per_second"])

    async with session.post(sim.url + "/stats/reset") as r:
        reset = await r.json()
    assert reset["requests"] == 0 and reset["by_status"] == {} and reset["per_second"] == []
    assert reset["started"] >= stats["started"]
    await post(session, sim, TEXT, {"model": "m", "prompt": "hello"})
    assert sim.stats()["requests"] == 1
    sim.reset_stats()
    assert sim.stats()["requests"] == 0


async def test_concurrent_requests_are_all_answered(
    sim: RunningSim, session: aiohttp.ClientSession
) -> None:
    results = await asyncio.gather(*(post(session, sim, CHAT, chat(str(i))) for i in range(200)))
    assert {status for status, _ in results} == {200}
    assert sim.stats()["by_status"] == {"200": 200}


async def test_the_openai_sdk_talks_to_it(sim: RunningSim) -> None:
    client = openai.AsyncOpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
    async with client:
        completion = await client.chat.completions.create(
            model="gpt-sim", messages=[{"role": "user", "content": QUESTIONS}], n=2
        )
        assert len(completion.choices) == 2
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="gpt-sim", messages=[], n=2)
