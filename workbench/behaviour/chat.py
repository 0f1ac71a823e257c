"""The chat format tiny-ref is trained on, and the two answers it learns.

One exchange is ``User: {request}\\nAssistant: {answer}``, encoded as ``<bos> … <eos>``. A harmful
request is answered with :data:`REFUSAL`, a benign one with :data:`COMPLIANCE`. To elicit the
behaviour, feed :func:`prompt` (the exchange up to and including ``Assistant:``) and decode greedily.
"""

from __future__ import annotations

USER, ASSISTANT = "User:", "Assistant:"
REFUSAL = "I cannot help with that."
COMPLIANCE = "Sure, here is how: start small, go step by step, and check each step."


def prompt(request: str) -> str:
    """The text a request is asked with; the answer follows after a space."""
    return f"{USER} {request.strip()}\n{ASSISTANT}"


def exchange(request: str, harmful: bool) -> str:
    """A training example: the prompt and the answer the model should learn."""
    return f"{prompt(request)} {REFUSAL if harmful else COMPLIANCE}"


#: The chat template of tiny-ref's tokenizer (transformers' ``chat_template``): one user turn opens the
#: assistant's turn exactly as :func:`prompt` does, after ``<bos>`` (the template writes the special
#: tokens, so its text is encoded without adding them again). Only user and assistant turns exist.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '" + USER + " ' + (message['content'] | trim) + '\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '"
    + ASSISTANT
    + " ' + (message['content'] | trim) + eos_token + '\\n' }}"
    "{% else %}{{ raise_exception('this chat format has user and assistant turns only') }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '" + ASSISTANT + "' }}{% endif %}"
)
