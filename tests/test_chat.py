"""Chat templates, rendered as Hugging Face transformers renders them (its apply_chat_template is the oracle),
and model.chat() end to end on the shipped model."""

import json
import os
import shutil

import pytest

import tridecode
from tridecode.chat import ChatTemplateError

from golden import GOLDEN_DIR

SHIPPED = tridecode.default_model_path()
CONVERSATION = [{"role": "system", "content": "You write Python."},
                {"role": "user", "content": "Add two numbers, \u00e9l\u00e8ve."},
                {"role": "assistant", "content": "def add(a, b):\n    return a + b"},
                {"role": "user", "content": "Now subtract."}]

# A ChatML-style template with the constructs real checkpoints use: loop variables, raise_exception,
# tojson, whitespace control, the special-token variables.
CHATML = ("{%- if messages[0]['role'] == 'system' %}{% set offset = 1 %}{% else %}{% set offset = 0 %}{% endif %}"
          "{{ bos_token }}{% for message in messages %}"
          "{% if (message['role'] == 'user') != (loop.index0 % 2 == offset) %}"
          "{{ raise_exception('roles must alternate user/assistant') }}{% endif %}"
          "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] | trim + '<|im_end|>\n' }}"
          "{% if loop.last and message['role'] == 'system' %}{{ 'meta: ' + (message | tojson) }}{% endif %}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def _hf_render(directory, messages, add_generation_prompt=True):
    from transformers import PreTrainedTokenizerFast

    tpl = os.path.join(directory, "chat_template.jinja")
    kw = {}
    if os.path.exists(tpl):
        with open(tpl, encoding="utf-8") as f:
            kw["chat_template"] = f.read()
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(directory, "tokenizer.json"), bos_token="<s>",
                                  eos_token="</s>", **kw)
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


@pytest.fixture(scope="module")
def model():
    return tridecode.load(SHIPPED)


@pytest.fixture
def chatml_model(tmp_path):
    d = tmp_path / "chatml"
    shutil.copytree(SHIPPED, d, ignore=shutil.ignore_patterns("chat_template.jinja", "linear_spec_lora"))
    (d / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML, "bos_token": "<s>",
                                                         "eos_token": {"content": "</s>"}}))
    return tridecode.load(str(d))


def test_shipped_template_renders_as_transformers_does(model):
    for messages in (CONVERSATION, CONVERSATION[1:2]):
        for gen in (True, False):
            assert model.apply_chat_template(messages, add_generation_prompt=gen) == \
                _hf_render(SHIPPED, messages, gen)


def test_tokenizer_config_template_renders_as_transformers_does(chatml_model, tmp_path):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(SHIPPED, "tokenizer.json"), bos_token="<s>",
                                  eos_token="</s>", chat_template=CHATML)
    for messages in (CONVERSATION, CONVERSATION[:1]):
        want = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert chatml_model.apply_chat_template(messages) == want
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        chatml_model.apply_chat_template([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def test_chat_generates_from_the_rendered_prompt(model):
    prompt = model.apply_chat_template(CONVERSATION)
    ids = model.tokenizer.encode(prompt, add_special_tokens=False)
    assert ids[0] == model.config.bos_token_id and ids.count(model.config.bos_token_id) == 1
    for kw in (dict(), dict(mode="self_spec"), dict(mode="diffusion", temperature=0.7, seed=2)):
        r = model.chat(CONVERSATION, max_new_tokens=24, **kw)
        ref = model.generate(ids, max_new_tokens=24, **kw)
        assert r.tokens == ref.tokens and r.text == model.decode(ref.tokens) and r.prompt_tokens == len(ids)
    s = model.stream_chat(CONVERSATION, max_new_tokens=24)
    assert "".join(c.text for c in s) == model.chat(CONVERSATION, max_new_tokens=24).text
    # Content given as OpenAI text parts is the same conversation.
    parts = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in CONVERSATION]
    assert model.apply_chat_template(parts) == prompt


def test_no_template_is_a_clear_error():
    m = tridecode.load(GOLDEN_DIR)     # no tokenizer at all
    with pytest.raises(ValueError, match="no tokenizer.json, so no chat"):
        m.chat(CONVERSATION)


def test_checkpoint_without_template(tmp_path):
    d = tmp_path / "plain"
    shutil.copytree(SHIPPED, d, ignore=shutil.ignore_patterns("chat_template.jinja", "linear_spec_lora"))
    m = tridecode.load(str(d))
    with pytest.raises(ChatTemplateError, match="has no chat template"):
        m.chat(CONVERSATION)
    assert isinstance(ChatTemplateError("x"), ValueError)


@pytest.mark.parametrize("messages,match", [
    ("hello", "messages must be a list"),
    ([], "messages is empty"),
    (["hi"], r"messages\[0\] must be a dict"),
    ([{"content": "hi"}], r"messages\[0\] has no 'role'"),
    ([{"role": "user"}], r"messages\[0\] has no 'content'"),
    ([{"role": "user", "content": 3}], r"messages\[0\]\['content'\] must be a string"),
    ([{"role": "", "content": "x"}], r"messages\[0\]\['role'\] must be a non-empty string"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}], "reads text only"),
])
def test_bad_messages(model, messages, match):
    with pytest.raises((ValueError, TypeError), match=match):
        model.chat(messages)


def test_broken_template(tmp_path):
    d = tmp_path / "broken"
    shutil.copytree(SHIPPED, d, ignore=shutil.ignore_patterns("linear_spec_lora"))
    (d / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }")
    with pytest.raises(ChatTemplateError, match="cannot be rendered"):
        tridecode.load(str(d)).apply_chat_template(CONVERSATION)
