"""Base and tuned from one loaded model: a LoRA adapter kept apart from its base, switched on or off.

The server loads an adapter folder once and answers two model ids: the adapter's (``tuned``) and
``base``. peft's adapter layers compute ``base_layer(x) + lora_B(lora_A(x))``; with the adapter
layers disabled they return ``base_layer(x)`` alone, so "base" is the base model exactly (the same
text as ``chat_with_model.py --model BASE`` for the same seed in float32), at no extra memory.

Switching changes the shared model, so generations of the two ids never overlap: any number of
"tuned" generations may run together, or any number of "base" ones, and a request for the other id
waits until they have finished (and new requests of the running id wait behind it, so neither id
starves). With ``--max_concurrency 1`` (the default) that is no wait at all.

The price of keeping the adapter apart: every adapted linear layer adds two small matmuls per step
(``A`` then ``B``, rank r), which a merged model does not pay. With ``--merge_adapter`` the server
merges it for speed and serves the tuned model alone.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

BASE_ID = "base"  # the model id that asks for the adapter switched off


def has_switchable_adapter(model) -> bool:
    """A peft model whose adapter layers can be switched off (not merged into the weights)."""
    return hasattr(model, "disable_adapter") and hasattr(getattr(model, "base_model", None), "disable_adapter_layers")


class ModelVariants:
    """The served ids (``tuned_id`` first, then ``base`` when the adapter can be switched off)."""

    def __init__(self, model, tuned_id: str) -> None:
        self.model = model
        self.tuned_id = tuned_id
        self.switchable = has_switchable_adapter(model)
        self.ids = [tuned_id] + ([BASE_ID] if self.switchable and tuned_id != BASE_ID else [])
        self._cond = threading.Condition()
        self._adapter_on = True  # peft loads an adapter switched on
        self._active = 0         # generations running with the current setting
        self._waiting = {True: 0, False: 0}  # requests waiting, by the setting they need

    def resolve(self, requested: str | None) -> str:
        """The id that answers ``requested``: ``base`` when asked for and served, else the tuned id
        (any other name, as OpenAI clients send, gets the served model, named in the response)."""
        return BASE_ID if requested == BASE_ID and BASE_ID in self.ids else self.tuned_id

    @contextmanager
    def use(self, model_id: str):
        """The model with the adapter on (tuned id) or off (``base``) for one generation."""
        adapter_on = model_id != BASE_ID or not self.switchable
        with self._cond:
            # Join the running generations only if they use the same setting and nobody waits for the
            # other one; switch the setting only once they are done. So when the last one ends, a waiting
            # request for the other setting goes first: a steady stream of "tuned" requests never starves
            # a "base" request (nor the reverse).
            def may_run() -> bool:
                if self._adapter_on == adapter_on:
                    return not self._waiting[not adapter_on]
                return self._active == 0

            self._waiting[adapter_on] += 1
            self._cond.wait_for(may_run)
            self._waiting[adapter_on] -= 1
            if self.switchable and self._adapter_on != adapter_on:
                layers = self.model.base_model
                layers.enable_adapter_layers() if adapter_on else layers.disable_adapter_layers()
                self._adapter_on = adapter_on
            self._active += 1
        try:
            yield self.model
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()
