"""The text in a dropped document: a web page's article, a PDF's text layer.

What a file holds is told by its name: ``.html``/``.htm`` is a web page, whose main
text trafilatura finds (menus, scripts, cookie banners, sidebars and footers left
out; the page's charset honoured); ``.pdf`` is read page by page with pypdf, in the
order its content streams draw the text, which is reading order for what word
processors and TeX produce. Anything else (``.txt``, ``.md``, no suffix) is text
already and is streamed from the file as it stands: Markdown is left as written,
since models read it, so that character spans stay those of the file.

An extracted document is held in memory as UTF-8 (a page's text, or a PDF's, is a
small fraction of its file) and extracted again after a restart: the same library
gives the same text, so a resume offset into it still points where it did.
"""

from __future__ import annotations

import io
from typing import BinaryIO, Literal

from synthd.errors import InputError

Kind = Literal["text", "html", "pdf"]
MAX_DOCUMENT_BYTES = 256 * 1024 * 1024  # an HTML or PDF file read whole to extract it
MAX_HTML_BYTES = 20_000_000  # trafilatura's own ceiling: past it, it finds nothing

_KINDS: dict[str, Kind] = {".html": "html", ".htm": "html", ".xhtml": "html", ".pdf": "pdf"}


def kind_of(name: str) -> Kind:
    """What a file named ``name`` holds, by its suffix (case-insensitive)."""
    dot = name.rfind(".")
    return _KINDS.get(name[dot:].lower(), "text") if dot >= 0 else "text"


def text_stream(name: str, f: BinaryIO, offset: int) -> BinaryIO:
    """The text of ``f`` as a UTF-8 stream positioned at ``offset``: ``f`` itself for
    text, the extracted text for a page or a PDF (blocking).

    Raises ``InputError``: ``too_large``, ``bad_pdf``, ``encrypted``, ``no_text``.
    """
    kind = kind_of(name)
    if kind == "text":
        return f
    f.seek(0)
    raw = f.read(MAX_DOCUMENT_BYTES + 1)
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise InputError("too_large", f"more than {MAX_DOCUMENT_BYTES} bytes to extract from")
    text = html_text(raw) if kind == "html" else pdf_text(raw)
    out = io.BytesIO(text.encode("utf-8", "surrogatepass"))
    out.seek(offset)
    return out


def html_text(raw: bytes) -> str:
    """A web page's main text, paragraphs apart by a blank line. Raises ``InputError``."""
    # Deferred: lxml and trafilatura load only for a job that reads pages.
    import lxml.etree
    import lxml.html
    import trafilatura

    if len(raw) > MAX_HTML_BYTES:
        raise InputError("too_large", f"a web page of more than {MAX_HTML_BYTES} bytes")
    # Bytes that are valid UTF-8 are UTF-8, whatever the page claims (a UTF-16 page was
    # made UTF-8 when it was claimed); others are read as the page's <meta charset>
    # says, else as Latin-1, as browsers do. trafilatura's own guess gets Latin-1 wrong.
    try:
        raw.decode("utf-8")
        encoding: str | None = "utf-8"
    except UnicodeDecodeError:
        encoding = None
    try:
        tree = lxml.html.document_fromstring(raw, parser=lxml.html.HTMLParser(encoding=encoding))
    except (ValueError, lxml.etree.ParserError) as e:
        raise InputError("no_text", f"not a readable web page: {e}") from e
    text = trafilatura.extract(
        tree, include_comments=False, include_tables=True, favor_recall=True, deduplicate=False
    )
    if not text or not text.strip():
        raise InputError("no_text", "no article text found in the page")
    return _clean("\n\n".join(p.strip() for p in text.split("\n") if p.strip()))


def pdf_text(raw: bytes) -> str:
    """A PDF's text layer, a blank line between pages. Raises ``InputError``."""
    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError, PdfReadError, PdfStreamError

    try:
        reader = PdfReader(io.BytesIO(raw))
        if reader.is_encrypted and not reader.decrypt(""):
            raise InputError("encrypted", "the PDF needs a password")
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
    except FileNotDecryptedError as e:
        raise InputError("encrypted", f"the PDF needs a password: {e}") from e
    except (PdfReadError, PdfStreamError, ValueError, KeyError, TypeError) as e:
        raise InputError("bad_pdf", f"not a readable PDF: {e}") from e
    text = "\n\n".join(p for p in pages if p)
    if not text.strip():
        raise InputError("no_text", "the PDF has no text layer (a scan needs OCR first)")
    return _clean(text)


def _clean(text: str) -> str:
    # A NUL would make the text look binary to the reader's sniff; nothing reads it.
    return text.replace("\x00", "") + "\n"
