"""A prompt's token ids: chat messages through the tokenizer's chat template (with the
generation prompt), plain text as it is; and the tiny models' chat template."""

from __future__ import annotations

from rlhf.configbase import ConfigError
from rlhf.types import Prompt

# A chat template so chat-style prompts work the way users expect from real models.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def render_chat(messages: list[dict[str, str]]) -> str:
    """`messages` as the tiny tokenizer's chat template renders them, generation prompt
    included (what a run feeds the model), for corpora built before any tokenizer exists."""
    import jinja2

    return jinja2.Template(CHAT_TEMPLATE).render(messages=messages, add_generation_prompt=True)


def prompt_ids(tokenizer, prompt: Prompt, tools: list[dict] | None = None) -> list[int]:
    """`tools`: JSON schemas a chat template that takes `tools=` lists in the prompt
    (rollout.tools); plain-text prompts and templates without tools do not show them."""
    if prompt.messages is None:
        return tokenizer(prompt.text).input_ids
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            "data.chat_template: the prompts are chat messages but the model's tokenizer has "
            "no chat template (give prompts as strings, or a model whose tokenizer has one)"
        )
    extra = {"tools": tools} if tools and template_takes_tools(tokenizer) else {}
    text = tokenizer.apply_chat_template(
        prompt.messages, add_generation_prompt=True, tokenize=False, **extra
    )
    # the template writes the special tokens it wants (a BOS, say): add none of our own
    return tokenizer(text, add_special_tokens=False).input_ids


def template_takes_tools(tokenizer) -> bool:
    """Whether the tokenizer's chat template renders a `tools` variable."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):  # named templates: the default one
        template = template.get("default", "")
    return "tools" in template
