"""Extraction: a page's article without its menus and scripts, a PDF's text in reading order."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from synthd.errors import InputError
from synthd.extract import html_text, kind_of, pdf_text, text_stream
from tests.pdfs import pdf_of

PAGE = Path(__file__).resolve().parents[2] / "examples" / "long" / "saved-article.html"
MENU_AND_SCRIPT = [
    "Subscribe to our newsletter",
    "Sign in",
    "Accept all",
    "cookies",
    "gtag",
    "dataLayer",
    "menu-script-marker",
    "Most read this week",
    "Advertisement",
    "All rights reserved",
    "Privacy policy",
    "cookie-banner",
]


def test_kind_is_told_by_the_suffix() -> None:
    assert [kind_of(n) for n in ("a.html", "B.HTM", "c.pdf", "d.txt", "e.md", "f")] == [
        "html",
        "html",
        "pdf",
        "text",
        "text",
        "text",
    ]


def test_a_saved_page_gives_its_article_and_none_of_its_menus_or_scripts() -> None:
    text = html_text(PAGE.read_bytes())
    assert "The LORD is my shepherd; I shall not want." in text
    assert "a time of war, and a time of peace." in text
    assert text.index("my shepherd") < text.index("a time to every purpose")
    for junk in MENU_AND_SCRIPT:
        assert junk not in text, junk
    assert "\n\n" in text, "paragraphs stay apart"


def test_a_page_in_another_charset_is_decoded() -> None:
    body = "<p>" + "Ça coûte très cher à Noël, déjà. " * 20 + "</p>"
    page = f'<html><head><meta charset="iso-8859-1"></head><body><article>{body}</article>'
    text = html_text((page + "</body></html>").encode("iso-8859-1"))
    assert "Ça coûte très cher à Noël" in text


@pytest.mark.parametrize(
    "raw", [b"", b"   ", b"<html><head><script>var x = 1;</script></head><body></body></html>"]
)
def test_a_page_without_text_is_refused(raw: bytes) -> None:
    with pytest.raises(InputError) as e:
        html_text(raw)
    assert e.value.reason == "no_text"


def test_a_pdf_comes_out_in_reading_order() -> None:
    left = [f"Left column line {i}." for i in range(1, 30)]
    right = [f"Right column line {i}." for i in range(1, 30)]
    raw = pdf_of([[left, right], [["Second page, first line.", "Second page, last line."]]])
    text = pdf_text(raw)
    expected = [*left, *right, "Second page, first line.", "Second page, last line."]
    positions = [text.index(line) for line in expected]
    assert positions == sorted(positions)
    assert "\n\nSecond page" in text, "a blank line between pages"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"%PDF-1.4\nthis is not really a pdf", "bad_pdf"),
        (b"hello", "bad_pdf"),
        (pdf_of([[[]]]), "no_text"),
    ],
)
def test_a_pdf_that_yields_no_text_is_refused(raw: bytes, reason: str) -> None:
    with pytest.raises(InputError) as e:
        pdf_text(raw)
    assert e.value.reason == reason


def test_text_stream_is_the_file_for_text_and_extracted_text_positioned_for_documents() -> None:
    f = io.BytesIO(b"plain text")
    assert text_stream("a.md", f, 0) is f
    page = io.BytesIO(PAGE.read_bytes())
    whole = text_stream("page.html", page, 0).read()
    assert whole.decode() == html_text(PAGE.read_bytes())
    at = whole.index(b"Yea, though")
    assert text_stream("page.html", io.BytesIO(PAGE.read_bytes()), at).read() == whole[at:]
