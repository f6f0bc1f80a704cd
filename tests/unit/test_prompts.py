"""synthd.prompts: one-pass templates and the request bodies built from them."""

from __future__ import annotations

import pytest

from synthd.errors import TemplateError
from synthd.prompts import Template, chat_messages, request_body


def test_render_fills_every_placeholder() -> None:
    t = Template("Passage:\n{{context}}\n\nFrom {{source}}, line {{line}}.")
    out = t.render({"context": "The sky.", "source": "a.txt", "line": "3"})
    assert out == "Passage:\nThe sky.\n\nFrom a.txt, line 3."


def test_fields_lists_each_name_once() -> None:
    t = Template("{{a}} {{b}} {{a}} {{ c.d }} {{e-f}}")
    assert t.fields == frozenset({"a", "b", "c.d", "e-f"})
    assert t.text == "{{a}} {{b}} {{a}} {{ c.d }} {{e-f}}"


def test_a_placeholder_used_twice_is_filled_twice() -> None:
    assert Template("{{x}}-{{x}}").render({"x": "1"}) == "1-1"


def test_spaces_inside_braces_are_allowed() -> None:
    t = Template("[{{ topic }}] [{{\ttopic\t}}] [{{topic  }}]")
    assert t.fields == frozenset({"topic"})
    assert t.render({"topic": "tea"}) == "[tea] [tea] [tea]"


def test_values_are_never_expanded_again() -> None:
    t = Template("A: {{context}} B: {{topic}}")
    out = t.render({"context": "literal {{topic}} and {{context}}", "topic": "T"})
    assert out == "A: literal {{topic}} and {{context}} B: T"


def test_a_missing_field_names_the_placeholder() -> None:
    t = Template("{{context}} about {{topic}}")
    with pytest.raises(TemplateError) as exc:
        t.render({"context": "c"})
    assert exc.value.missing == "topic"
    assert "{{topic}}" in str(exc.value)


def test_extra_values_are_ignored() -> None:
    assert Template("{{a}}").render({"a": "1", "b": "2"}) == "1"


@pytest.mark.parametrize(
    "text",
    ["{single}", "{{ }}", "{{1abc}}", "{{a b}}", "{ {a} }", "{{{a}", "no braces at all"],
)
def test_text_that_is_not_a_placeholder_stays_literal(text: str) -> None:
    t = Template(text)
    assert t.fields == frozenset()
    assert t.render({}) == text


def test_triple_braces_keep_the_outer_brace() -> None:
    t = Template("{{{a}}}")
    assert t.fields == frozenset({"a"})
    assert t.render({"a": "x"}) == "{x}"


def test_empty_template_renders_empty() -> None:
    assert Template("").render({}) == ""


def test_chat_messages_without_system() -> None:
    assert chat_messages(None, "hi") == [{"role": "user", "content": "hi"}]


def test_chat_messages_put_the_system_prompt_first() -> None:
    assert chat_messages("be brief", "hi") == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]


def test_chat_body_carries_messages_and_parameters() -> None:
    params = {"temperature": 0.7, "max_tokens": 300, "n": 2, "stop": ["END"]}
    body = request_body("chat", "gpt-x", "Q?", "sys", params)
    assert body == {
        "model": "gpt-x",
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "Q?"},
        ],
        "temperature": 0.7,
        "max_tokens": 300,
        "n": 2,
        "stop": ["END"],
    }


def test_completions_body_without_system_is_the_prompt() -> None:
    body = request_body("completions", "davinci", "Q?", None, {"max_tokens": 5})
    assert body == {"model": "davinci", "prompt": "Q?", "max_tokens": 5}


def test_completions_body_leads_with_the_system_prompt() -> None:
    body = request_body("completions", "davinci", "Q?", "sys", {})
    assert body == {"model": "davinci", "prompt": "sys\n\nQ?"}
    assert "messages" not in body


def test_request_body_does_not_share_the_params_mapping() -> None:
    params = {"temperature": 1.0}
    body = request_body("chat", "m", "p", None, params)
    body["temperature"] = 0.0
    assert params == {"temperature": 1.0}
