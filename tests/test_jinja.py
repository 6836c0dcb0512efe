"""The built-in Jinja engine: contract, escaping, strictness, sandbox, errors, cache, limits."""

from __future__ import annotations

from typing import Any

import pytest

from convkit import Settings, get_plugin_manager
from convkit.backends.engines.jinja import JinjaTextEngine
from convkit.errors import TemplateError
from convkit.ports import Template, TemplateEngine
from convkit.templating.sandbox import make_environment
from convkit.testing.engine import TemplateEngineContract


def tpl(source: str, fmt: str = "html", name: str = "t") -> Template:
    return Template(name, "jinja", fmt, source.encode(), origin=f"/templates/{name}.{fmt}")


@pytest.fixture
def engine() -> JinjaTextEngine:
    return JinjaTextEngine()


def render(engine: TemplateEngine, template: Template, data: dict[str, Any], **opts: Any) -> str:
    return engine.render(template, data, options=opts).content.decode()


class TestJinjaHtml(TemplateEngineContract):
    @pytest.fixture
    def engine(self) -> JinjaTextEngine:
        return JinjaTextEngine()

    @pytest.fixture
    def engine_template(self) -> tuple[Template, dict[str, Any], str]:
        source = "<ul>{% for i in items %}<li>{{ i }}</li>{% endfor %}</ul>\n"
        return tpl(source), {"items": ["Grüße", "Ω"]}, "<ul><li>Grüße</li><li>Ω</li></ul>\n"

    @pytest.fixture
    def broken_template(self) -> Template:
        return tpl("<p>{% if x %}</p>")


class TestJinjaText(TemplateEngineContract):
    @pytest.fixture
    def engine(self) -> JinjaTextEngine:
        return JinjaTextEngine()

    @pytest.fixture
    def engine_template(self) -> tuple[Template, dict[str, Any], str]:
        return tpl("Hello {{ name }}!\n", "txt"), {"name": "Ada"}, "Hello Ada!\n"

    @pytest.fixture
    def broken_template(self) -> Template:
        return tpl("{{ name ", "txt")


def test_make_environment_flavours() -> None:
    env = make_environment(autoescape=True, strict=True)
    assert env.from_string("{{ x }}").render(x="<b>") == "&lt;b&gt;"
    assert make_environment(autoescape=False, strict=False).from_string("{{ x }}|").render() == "|"


def test_html_is_autoescaped_txt_is_not(engine: JinjaTextEngine) -> None:
    data = {"x": "<script>alert(1)</script>"}
    assert render(engine, tpl("{{ x }}"), data) == "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert render(engine, tpl("{{ x }}", "txt"), data) == "<script>alert(1)</script>"


def test_strict_undefined_is_template_error(engine: JinjaTextEngine) -> None:
    with pytest.raises(TemplateError, match=r"^template 't', line 3: 'missing' is undefined$"):
        render(engine, tpl("a\nb\n{{ missing.attr }}"), {}, strict=True)


def test_lenient_default_renders_undefined_empty(engine: JinjaTextEngine) -> None:
    assert render(engine, tpl("[{{ missing }}]"), {}) == "[]"


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__ }}",
        "{{ (''|attr('__class__'))|attr('__subclasses__') }}",
        "{{ '{0.__class__}'.format(x) }}",
        "{{ x.__init__.__globals__ }}",
    ],
)
def test_sandbox_escapes_are_template_errors(engine: JinjaTextEngine, source: str) -> None:
    with pytest.raises(TemplateError, match=r"line 2: sandbox: .* unsafe") as exc:
        render(engine, tpl("ok\n" + source), {"x": "s"})
    assert exc.value.status == 422


def test_syntax_error_names_template_and_line(engine: JinjaTextEngine) -> None:
    with pytest.raises(TemplateError, match=r"^template 'inv', line 4: .*'endfor'"):
        engine.check(tpl("1\n2\n3\n{% for x in y %}{% endif %}", name="inv"))


def test_any_render_exception_is_template_error(engine: JinjaTextEngine) -> None:
    with pytest.raises(TemplateError, match="line 2: ZeroDivisionError"):
        render(engine, tpl("\n{{ 1 / x }}"), {"x": 0})


def test_invalid_utf8_is_template_error(engine: JinjaTextEngine) -> None:
    with pytest.raises(TemplateError, match="not valid UTF-8"):
        engine.check(Template("t", "jinja", "txt", b"\xff\xfe"))


def test_output_limit(engine: JinjaTextEngine) -> None:
    small = JinjaTextEngine(max_output_bytes=1000)
    loop = tpl("{% for i in range(100) %}{{ 'x' * 20 }}{% endfor %}", "txt")
    with pytest.raises(TemplateError) as exc:
        small.render(loop, {})
    assert exc.value.code == "template_limit_exceeded"
    # The sandbox's size guards are limits, with the same code as in the office engines.
    for source, words in (("{{ 'x' * 10**9 }}", "exceed"), ("{{ 2 ** 100000000 }}", "too large")):
        with pytest.raises(TemplateError, match=words) as exc:
            engine.render(tpl(source), {})
        assert exc.value.code == "template_limit_exceeded"


def test_output_is_utf8_and_keeps_trailing_newline(engine: JinjaTextEngine) -> None:
    doc = engine.render(tpl("{{ s }}\n", "txt"), {"s": "Ωmega €"})
    assert doc.content == "Ωmega €\n".encode()
    assert doc.format == "txt"


def test_repeated_render_hits_the_cache(engine: JinjaTextEngine) -> None:
    first = tpl("Hi {{ n }}", "txt", name="a")
    engine.render(first, {"n": 1})
    assert (engine.cache_hits, engine.cache_misses) == (0, 1)
    # Same content under another name: compiled once, the message still names the right one.
    assert render(engine, tpl("Hi {{ n }}", "txt", name="b"), {"n": 2}) == "Hi 2"
    assert (engine.cache_hits, engine.cache_misses) == (1, 1)
    # Strict mode is another compiled flavour.
    with pytest.raises(TemplateError, match="template 'c'"):
        render(engine, tpl("Hi {{ n }}", "txt", name="c"), {}, strict=True)
    assert engine.cache_misses == 2


def test_cache_is_bounded() -> None:
    engine = JinjaTextEngine(cache_size=2)
    for i in range(5):
        engine.render(tpl(f"{i}", "txt"), {})
    engine.render(tpl("0", "txt"), {})
    assert engine.cache_misses == 6


def test_hook_register_template_engines() -> None:
    pm = get_plugin_manager(load_entry_points=False)
    engines = [e for group in pm.hook.register_template_engines(settings=Settings()) for e in group]
    jinja = [e for e in engines if e.name == "jinja"]
    assert len(jinja) == 1
    assert isinstance(jinja[0], JinjaTextEngine)
    assert jinja[0].suffixes == {".html": "html", ".htm": "html", ".txt": "txt"}
