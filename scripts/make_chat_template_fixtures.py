#!/usr/bin/env python3
"""Writes tests/data/chat_templates/goldens.json: what Jinja2 renders for the real chat templates in
tests/data/chat_templates/*.jinja (and for small templates exercising single features) over a set
of conversations. tests/text/chat_template_test.cpp renders the same with common/text/chat_template
and compares byte for byte.

The environment is the one transformers' apply_chat_template builds: an immutable sandbox with
trim_blocks and lstrip_blocks, the loopcontrols extension, `raise_exception` and `strftime_now`
globals, and its own `tojson` (json.dumps without sorting keys or escaping non-ASCII).
`strftime_now` is pinned to 2024-09-05 14:03:09 so the goldens do not change with the date.

Run from the repository root (needs jinja2 3.1):  python3 scripts/make_chat_template_fixtures.py
"""
import datetime
import json
import os
import sys

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data", "chat_templates")
FIXED_NOW = datetime.datetime(2024, 9, 5, 14, 3, 9)


class Raised(Exception):
    pass


def raise_exception(message):
    raise Raised(message)


def strftime_now(fmt):
    return FIXED_NOW.strftime(fmt)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def environment():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


SYSTEM = {"role": "system", "content": "You are a terse assistant."}
USER1 = {"role": "user", "content": "What is 2+2?"}
ASSISTANT1 = {"role": "assistant", "content": "4."}
USER2 = {"role": "user", "content": "And times 3?"}

CONVERSATIONS = {
    "one_user": [{"role": "user", "content": "Hello!"}],
    "system_user": [SYSTEM, USER1],
    "multi_turn": [SYSTEM, USER1, ASSISTANT1, USER2],
    "multi_turn_no_system": [USER1, ASSISTANT1, USER2],
    "ends_with_assistant": [USER1, ASSISTANT1],
    "tricky_content": [
        {"role": "system", "content": "  Keep \"quotes\" & 'apostrophes'.\n"},
        {"role": "user", "content": "Line one\nLine two\twith tab\n\n  \u00fcn\u00efc\u00f6d\u00e9 \u2713 \u65e5\u672c\u8a9e \U0001F642  "},
        {"role": "assistant", "content": " {{ not a tag }} {% neither %} \\n a backslash-n \u00a0"},
        {"role": "user", "content": "<|eot_id|> [INST] stays text </s>"},
    ],
    "empty_content": [{"role": "user", "content": ""}],
    "bad_order": [USER1, USER2],
    "system_only": [SYSTEM],
}

# Special tokens as each family's tokenizer_config.json has them (Qwen has no BOS token).
TOKENS = {
    "llama3": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "llama2": {"bos_token": "<s>", "eos_token": "</s>"},
    "mistral": {"bos_token": "<s>", "eos_token": "</s>"},
    "qwen": {"eos_token": "<|im_end|>"},
}
TEMPLATES = {
    "llama3": "llama3",
    "llama3_1": "llama3",
    "llama3_2": "llama3",
    "llama2": "llama2",
    "mistral_v0_1": "mistral",
    "mistral_v0_2": "mistral",
    "mistral_v0_3": "mistral",
    "qwen2": "qwen",
    "chatml": "qwen",
}

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}

# Extra cases for templates with tools, dates and built-in tools.
EXTRA = [
    ("llama3_1", "date_string", {"messages": [SYSTEM, USER1], "date_string": "01 Jan 2025", "add_generation_prompt": True}),
    ("llama3_1", "tools_in_user_message", {"messages": [SYSTEM, USER1], "tools": [WEATHER_TOOL], "add_generation_prompt": True}),
    ("llama3_1", "tools_in_system", {"messages": [USER1], "tools": [WEATHER_TOOL], "tools_in_user_message": False,
                                     "add_generation_prompt": True}),
    ("llama3_1", "tool_call_and_result", {"messages": [
        SYSTEM, USER1,
        {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "22 C"},
    ], "tools": [WEATHER_TOOL], "add_generation_prompt": True}),
    ("llama3_1", "builtin_tools", {"messages": [
        USER1,
        {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "brave_search", "arguments": {"query": "weather Paris"}}}]},
        {"role": "ipython", "content": {"result": "sunny"}},
    ], "builtin_tools": ["brave_search", "code_interpreter", "wolfram_alpha"], "add_generation_prompt": True}),
    ("llama3_1", "two_tool_calls_raise", {"messages": [
        USER1,
        {"role": "assistant", "tool_calls": [{"function": {"name": "a", "arguments": {}}}, {"function": {"name": "b", "arguments": {}}}]},
    ], "add_generation_prompt": True}),
    ("llama3_2", "strftime_now", {"messages": [USER1], "add_generation_prompt": True}),
    ("llama3_2", "tools", {"messages": [USER1], "tools": [WEATHER_TOOL], "add_generation_prompt": True}),
    ("mistral_v0_3", "tools", {"messages": [SYSTEM, USER1], "tools": [WEATHER_TOOL], "add_generation_prompt": True}),
    ("mistral_v0_3", "tool_call_and_result", {"messages": [
        USER1,
        {"role": "assistant", "tool_calls": [{"id": "abc123def", "type": "function",
                                              "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_call_id": "abc123def", "content": "22 C"},
        {"role": "assistant", "content": "It is 22 C in Paris."},
        USER2,
    ], "tools": [WEATHER_TOOL]}),
    ("mistral_v0_3", "bad_tool_call_id_raises", {"messages": [
        USER1, {"role": "assistant", "tool_calls": [{"id": "short", "function": {"name": "f", "arguments": {}}}]},
    ]}),
]

# Small templates for single features, rendered by Jinja2 as well.
CONVERSATION = [USER1, ASSISTANT1, USER2]
FEATURES = [
    ("text", "plain text, no tags", {}),
    ("output", "a{{ x }}b{{ missing }}c", {"x": "X"}),
    ("literals", "{{ none }} {{ true }} {{ false }} {{ 3 }} {{ -4 }} {{ 1.5 }} {{ 2.0 }} {{ 1e20 }} {{ 0.0001 }} {{ 'a' 'b' }}", {}),
    ("string escapes", "{{ 'a\\nb\\t\\\"c\\\"\\\\' }}|{{ \"it's\" }}|{{ '\\u00e9\\x41' }}", {}),
    ("arithmetic", "{{ 1 + 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 * 3 - 1 }} {{ 1.5 + 1 }} {{ true + 1 }} {{ 'ab' * 3 }}", {}),
    ("concat", "{{ 'n=' ~ 3 ~ true ~ none ~ missing ~ [1] }}", {}),
    ("comparisons", "{{ 1 < 2 }}{{ 2 <= 1 }}{{ 'a' == 'a' }}{{ 'a' != 'a' }}{{ 3 > 2 }}{{ 1 >= 1 }}{{ 1 == 1.0 }}{{ 1 < 2 < 3 }}{{ [1, 2] < [1, 3] }}{{ 'b' > 'a' }}", {}),
    ("logic", "{{ true and false }}{{ true or false }}{{ not true }}{{ not (1 == 2) }}{{ 0 or 'x' }}{{ '' and 'y' }}{{ missing or 'dflt' }}", {}),
    ("in", "{{ 'b' in 'abc' }}{{ 2 in [1, 2] }}{{ 'k' in d }}{{ 'q' not in d }}{{ 'x' in missing }}", {"d": {"k": 1}}),
    ("tests", "{{ x is defined }}{{ y is defined }}{{ y is not defined }}{{ n is none }}{{ s is string }}{{ d is mapping }}{{ s is iterable }}{{ 3 is number }}{{ 4 is even }}{{ 3 is odd }}{{ 9 is divisibleby 3 }}{{ l is sequence }}{{ true is true }}{{ 1 is false }}{{ 'a' is in 'abc' }}{{ 1 is equalto 1 }}",
     {"x": 1, "n": None, "s": "s", "d": {}, "l": []}),
    ("conditional expression", "{{ 'yes' if flag else 'no' }}[{{ 'a' if false }}]{{ 1 if false else 2 if true else 3 }}", {"flag": True}),
    ("subscripts and slices", "{{ xs[0] }}{{ xs[-1] }}{{ xs[1:] }}{{ xs[:2] }}{{ xs[::-1] }}{{ xs[::2] }}{{ xs[1:-1] }}{{ xs[-2:] }}{{ xs[10] }}{{ 'h\u00e9llo'[1:3] }}{{ 'abc'[-1] }}{{ d['k'] }}{{ d.k }}{{ d.missing }}{{ xs.0 }}",
     {"xs": [1, 2, 3, 4, 5], "d": {"k": "v"}}),
    ("list and dict literals", "{{ [1, 'a', none, true, [2]] }}{{ {'k': 1, 'j': 'x'} }}{{ {'k': 1}['k'] }}{{ [] }}{{ \"it's\" ~ [\"it's\"] }}", {}),
    ("filters", "[{{ '  x  ' | trim }}][{{ 'xxaxx' | trim('x') }}]{{ xs | length }}{{ 'h\u00e9' | length }}{{ d | length }}{{ 'Ab' | upper }}{{ 'Ab' | lower }}{{ xs | join('-') }}{{ xs | join }}{{ xs | first }}{{ xs | last }}{{ missing | default('d') }}{{ '' | default('e', true) }}{{ none | default('f') }}{{ 5 | string }}{{ 'aXbX' | replace('X', '_') }}{{ 'aXbX' | replace('X', '_', 1) }}{{ 'hello world' | title }}{{ 'hELLO' | capitalize }}{{ 'abc' | list }}{{ xs | reverse | list }}{{ [3, 1, 2] | sort }}{{ [1, 2, 1] | unique | list }}{{ '42' | int + 1 }}{{ '2.5' | float }}{{ -3 | abs }}{{ xs | sum }}{{ xs | min }}{{ xs | max }}",
     {"xs": [1, 2, 3], "d": {"a": 1, "b": 2}}),
    ("filter precedence", "{{ 'a' + ' b ' | trim + 'c' }}{{ -1 | abs }}{{ not 'x' | length }}", {}),
    ("tojson", "{{ {'a': [1, 'x', none, true, 2.5], 'b': {}, 'c': [], 'u': '\u00e9\\n\"'} | tojson }}|{{ {'b': [1, {'c': 'x'}], 'a': {}} | tojson(indent=2) }}|{{ 'plain' | tojson }}|{{ d | tojson }}",
     {"d": {"z": 1, "a": [True, None]}}),
    ("select and map", "{{ msgs | selectattr('role', 'equalto', 'user') | list | length }}|{{ (msgs | selectattr('role', 'equalto', 'user') | list)[-1].content }}|{{ msgs | rejectattr('role', 'equalto', 'user') | map(attribute='content') | join(',') }}|{{ [1, 2, 3, 4] | select('odd') | list }}|{{ [0, 1, '', 'a'] | select | list }}|{{ ['a', 'code_interpreter', 'b'] | reject('equalto', 'code_interpreter') | join(', ') }}|{{ ['a', 'b'] | map('upper') | list }}",
     {"msgs": CONVERSATION}),
    ("string methods", "{{ ' x '.strip() }}|{{ 'xxay'.lstrip('x') }}|{{ 'ayyx'.rstrip('xy') }}|{{ 'abc'.startswith('ab') }}{{ 'abc'.endswith('x') }}{{ 'abc'.startswith(('x', 'a')) }}|{{ 'ab'.upper() }}{{ 'AB'.lower() }}|{{ 'a<b>c<b>'.split('<b>') }}{{ ' a  b '.split() }}{{ 'a,b,c'.split(',', 1) }}|{{ 'r</think>a'.split('</think>')[-1] }}|{{ '-'.join(['a', 'b']) }}|{{ 'aaa'.replace('a', 'b', 2) }}|{{ 'hello'.find('l') }}{{ 'hello'.count('l') }}|{{ 'hello world'.title() }}",
     {}),
    ("dict methods", "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{{ d.keys() | list }}{{ d.values() | list }}{{ d.get('a') }}{{ d.get('q') }}{{ d.get('q', 'dflt') }}{% for k in d %}{{ k }}{% endfor %}{% for k, v in d | items %}{{ k }}{{ v }}{% endfor %}{% for k, v in d | dictsort %}{{ k }}{% endfor %}",
     {"d": {"b": 1, "a": "x"}}),
    ("if elif else", "{% for n in [1, 2, 3] %}{% if n == 1 %}one{% elif n == 2 %}two{% else %}many{% endif %},{% endfor %}", {}),
    ("for loop variables", "{% for x in items %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.previtem }}{{ loop.nextitem }};{% endfor %}", {"items": ["a", "b", "c"]}),
    ("for else", "{% for x in [] %}x{% else %}empty{% endfor %}{% for x in missing %}x{% else %}none{% endfor %}", {}),
    ("for with a condition", "{% for x in [1, 2, 3, 4, 5] if x % 2 == 1 %}{{ loop.index }}:{{ x }}{% if not loop.last %},{% endif %}{% endfor %}", {}),
    ("nested loops", "{% for a in [1, 2] %}{% for b in ['x', 'y'] %}{{ a }}{{ b }}{{ loop.index }}{% endfor %}{{ loop.index }};{% endfor %}", {}),
    ("break continue", "{% for n in [1, 2, 3, 4, 5] %}{% if n == 2 %}{% continue %}{% endif %}{% if n == 4 %}{% break %}{% endif %}{{ n }}{% endfor %}", {}),
    ("set scope", "{% set a = 1 %}{% for x in [1, 2] %}{{ a }}{% set a = a + 10 %}{{ a }},{% endfor %}{{ a }}{% if true %}{% set b = 3 %}{% endif %}{{ b }}{% set c, d = [4, 5] %}{{ c }}{{ d }}", {}),
    ("namespace", "{% set ns = namespace(total=0, seen=false) %}{% for x in [1, 2, 3] %}{% set ns.total = ns.total + x %}{% if x == 2 %}{% set ns.seen = true %}{% endif %}{% endfor %}{{ ns.total }} {{ ns.seen }}{% set ns2 = namespace() %}{% set ns2.a = 'x' %}{{ ns2.a }}", {}),
    ("set block", "{% set greeting %}Hello {{ name }}!{% endset %}[{{ greeting | upper }}]", {"name": "Ann"}),
    ("range", "{% for i in range(3) %}{{ i }}{% endfor %}{{ range(1, 8, 3) | list }}{{ range(3, -1, -1) | list }}{{ range(0, 3, -1) | list }}", {}),
    ("shadowing a context variable", "{% set messages = messages[1:] %}{{ messages | length }}{% for m in messages %}{{ m.role }}{% endfor %}", {"messages": CONVERSATION}),
    ("defined globals", "{{ strftime_now is defined }}{{ raise_exception is defined }}{{ range is defined }}{{ namespace is defined }}{{ nothing is defined }}{{ strftime_now('%Y-%m-%d %H:%M') }}", {}),
    ("comments", "a{# gone #}b{#- trims left #}  c {#- both -#}  d", {}),
    ("trim_blocks", "{% if true %}\nx\n{% endif %}\ny\n{# c #}\nz", {}),
    ("lstrip_blocks", "a\n    {% if true %}\n    b\n    {% endif %}\n  {{ 'c' }}\n\t{#- x #}\nd", {}),
    ("whitespace control", "a   {{- 'b' -}}   c  {%- if true -%}  d  {%- endif %}  e {%+ if true %}f{% endif +%}\n g", {}),
    ("output keeps its newline", "{{ 'a' }}\n{{ 'b' }}\n", {}),
    ("trailing newline dropped", "x\n", {}),
    ("crlf newlines", "{% if true %}\r\nx\r\n{% endif %}\r\ny", {}),
    ("is iterable on a string", "{% set c = 'text' %}{% if c is mapping or c is iterable %}{{ c | tojson }}{% else %}{{ c }}{% endif %}", {}),
    ("raise_exception", "before{{ raise_exception('Conversation roles must alternate!') }}after", {}),
    ("plain fallback", "{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\\n\\n' }}{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}",
     {"messages": CONVERSATION, "add_generation_prompt": True}),
]


def render(env, source, context):
    try:
        return {"expected": env.from_string(source).render(**context)}
    except Raised as error:
        return {"raises": str(error)}


def main():
    env = environment()
    cases = []
    for template, family in TEMPLATES.items():
        with open(os.path.join(DATA, template + ".jinja"), encoding="utf-8") as f:
            source = f.read()
        for conversation, messages in CONVERSATIONS.items():
            for add_generation_prompt in (True, False):
                context = dict(TOKENS[family], messages=messages, add_generation_prompt=add_generation_prompt)
                name = f"{template}/{conversation}/{'prompt' if add_generation_prompt else 'no_prompt'}"
                cases.append({"name": name, "template": template, "context": context, **render(env, source, context)})
    for template, case, extra in EXTRA:
        with open(os.path.join(DATA, template + ".jinja"), encoding="utf-8") as f:
            source = f.read()
        context = dict(TOKENS[TEMPLATES[template]], **extra)
        cases.append({"name": f"{template}/{case}", "template": template, "context": context, **render(env, source, context)})
    for name, source, context in FEATURES:
        cases.append({"name": "feature/" + name, "source": source, "context": context, **render(env, source, context)})
    out = os.path.join(DATA, "goldens.json")
    with open(out + ".tmp", "w", encoding="utf-8") as f:
        json.dump({"generated_by": "scripts/make_chat_template_fixtures.py", "jinja2": jinja2.__version__,
                   "strftime_now": FIXED_NOW.isoformat(), "cases": cases}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    os.replace(out + ".tmp", out)
    raised = sum(1 for c in cases if "raises" in c)
    print(f"{out}: {len(cases)} cases ({raised} raise)", file=sys.stderr)


if __name__ == "__main__":
    main()
