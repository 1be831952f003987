"""Chat templates come from model files: a hostile one is stopped (CPU time, characters built) with a clear
ModelFormatError, and never reaches the file system or Python's internals."""
import threading
import time

import pytest

from fastlm.errors import FastLMValueError, ModelFormatError
from fastlm.tokenizer import CHAT_TEMPLATE_SECONDS, Tokenizer

from test_tokenizer import byte_level_metadata

MESSAGES = [{"role": "user", "content": "hi"}]
BIG = "{% set s = 'a' * 100000 %}"


def render(template, messages=MESSAGES, **variables):
    tok = Tokenizer.from_gguf_metadata(byte_level_metadata(**{"tokenizer.chat_template": template}))
    return tok.apply_chat_template(messages, **variables)


@pytest.mark.parametrize("template, message", [
    # loops and recursion: the CPU-time bound, or Python's recursion limit
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "CPU time"),
    (BIG + "{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}", "CPU time"),
    ("{% for m in messages recursive %}{{ loop(messages) }}{% endfor %}", "recursed too deeply"),
    ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recursed too deeply"),
    ("{{" + "(" * 5000 + "1" + ")" * 5000 + "}}", "too deeply nested"),
    # huge strings, built in one step or by growing
    ("{{ 'a' * 10000000000 }}", "could build more than"),
    ("{% set s = 'a' * 1000000 %}{{ ([s] * 100000) | join('') }}", "could build more than"),
    ("{{ range(100000) | map('string') | join('x' * 100000) }}", "could build more than"),
    (BIG + "{{ s | replace('a', s) }}", "could build more than"),
    ("{{ 'a' | center(1000000000) }}", "could build more than"),
    ("{{ 'a'.ljust(1000000000) }}", "could build more than"),
    ("{{ lipsum(1000000000) }}", "could build more than"),
    ("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
     "built a value of more than"),
    ("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
     "built a value of more than"),
    (BIG + "{% set x %}{% for i in range(100000) %}{{ s }}{% endfor %}{% endset %}", "wrote more than"),
    ("{% for i in range(100000) %}{% for j in range(100) %}aaaaaaaaaaaaaaaaaaaaaaaa{% endfor %}{% endfor %}",
     "wrote more than"),
    ("{{ 10 ** 10000000 }}", "integer of more than"),
    ("{% set ns = namespace(x=3) %}{% for i in range(40) %}{% set ns.x = ns.x * ns.x %}{% endfor %}",
     "integer of more than"),
    # the template's own bugs
    ("{{ 1 / 0 }}", "ZeroDivisionError"),
    ("{{ 'a' + 1 }}", "TypeError"),
])
def test_hostile_templates_are_stopped(template, message):
    start = time.perf_counter()
    with pytest.raises(ModelFormatError, match=message):
        render(template)
    assert time.perf_counter() - start < 10 * CHAT_TEMPLATE_SECONDS


@pytest.mark.parametrize("template", [
    "{% include '{path}' %}",
    "{% import '{path}' as f %}",
    "{% extends '{path}' %}",
    "{% from '{path}' import x %}",
    "{{ cycler.__init__.__globals__.os.popen('cat {path}').read() }}",
    "{{ joiner.__init__.__globals__['__builtins__']['open']('{path}').read() }}",
    "{{ namespace.__init__.__globals__.__builtins__.open('{path}').read() }}",
    "{{ raise_exception.__globals__.__builtins__.open('{path}').read() }}",
    "{{ strftime_now.__globals__.__builtins__.open('{path}').read() }}",
    "{{ self.__init__.__globals__.__builtins__.open('{path}').read() }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{{ lipsum.__globals__.os.system('cat {path}') }}",
    "{{ messages.pop() }}{{ messages.append('{path}') }}",
    "{{ messages[0].update(role='{path}') }}",
    "{{ '{0.__class__.__mro__}'.format(messages) }}",
    "{{ (messages | attr('__class__')).__init__ }}",
])
def test_templates_never_reach_files_or_internals(tmp_path, template):
    secret = tmp_path / "secret.txt"
    secret.write_text("the secret")
    messages = [{"role": "user", "content": "hi"}]
    try:
        out = render(template.replace("{path}", str(secret)), messages)
    except ModelFormatError as err:
        assert "the secret" not in str(err)
    else:          # jinja2 renders some refused lookups as empty
        assert "the secret" not in out and "class" not in out
    assert messages == [{"role": "user", "content": "hi"}]


def test_templates_within_the_bounds_render_as_before():
    chatml = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    assert render(chatml) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert render("{{ 2000 * 1000 }} {{ 2 ** 64 }} {{ '%d' % 5000000 }}") == \
        f"2000000 {2 ** 64} 5000000"
    long = "word " * 300_000                     # messages may be far longer than the fixed bound
    assert render(chatml, [{"role": "user", "content": long}]).count("word") == 300_000
    assert render("{{ tools | tojson }}", tools=[{"name": "f"}]) == '[{"name": "f"}]'
    with pytest.raises(FastLMValueError, match="roles must alternate"):
        render("{{ raise_exception('roles must alternate') }}")


def test_each_render_has_its_own_budget():
    """A hostile render in one thread does not stop a good one in another."""
    results = {}

    def run(name, template):
        try:
            results[name] = render(template)
        except ModelFormatError as err:
            results[name] = err

    threads = [threading.Thread(target=run, args=("loop", "{% for i in range(100000) %}{% for j in range(100000) "
                                                          "%}{% endfor %}{% endfor %}"))]
    threads += [threading.Thread(target=run, args=(i, "{{ messages[0]['content'] }}")) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert isinstance(results.pop("loop"), ModelFormatError)
    assert results == {i: "hi" for i in range(4)}
