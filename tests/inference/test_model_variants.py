"""Base and tuned from one loaded adapter (issue 28): ids, the switch, and no overlap between the two."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from r1_sft.inference.model_variants import BASE_ID, ModelVariants


class Layers:
    def __init__(self) -> None:
        self.on = True

    def enable_adapter_layers(self) -> None:
        self.on = True

    def disable_adapter_layers(self) -> None:
        self.on = False


class FakePeft:
    """The two attributes peft's PeftModel offers for switching its LoRA layers."""

    def __init__(self) -> None:
        self.base_model = Layers()

    def disable_adapter(self):  # present on a PeftModel; the switch uses the layers directly
        raise AssertionError("not used")


def test_ids_and_what_each_request_gets():
    variants = ModelVariants(FakePeft(), "model/tiny_r1_lora/best_model")
    assert variants.ids == ["model/tiny_r1_lora/best_model", "base"]
    assert variants.resolve("base") == "base"
    assert variants.resolve("gpt-4o") == variants.resolve(None) == "model/tiny_r1_lora/best_model"
    merged = ModelVariants(torch.nn.Linear(2, 2), "merged")  # a merged or plain model: one id, "base" answers from it
    assert merged.ids == ["merged"] and merged.resolve("base") == "merged"


def test_the_adapter_is_off_exactly_while_base_generates_and_the_two_never_overlap():
    model = FakePeft()
    variants = ModelVariants(model, "tuned")
    seen, running, lock = [], {"base": 0, "tuned": 0}, threading.Lock()

    def generate(model_id: str) -> None:
        with variants.use(model_id) as m:
            with lock:
                running[model_id] += 1
                other = "tuned" if model_id == BASE_ID else BASE_ID
                seen.append((model_id, m.base_model.on, running[other]))
            time.sleep(0.02)
            with lock:
                running[model_id] -= 1

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(generate, ["tuned", "base", "tuned", "base"] * 5))
    assert len(seen) == 20
    assert all(on == (model_id == "tuned") for model_id, on, _ in seen)
    assert all(other == 0 for _, _, other in seen)  # never a base generation beside a tuned one
    assert model.base_model.on == (seen[-1][0] == "tuned")  # the switch stays where the last one left it


def test_a_base_request_is_not_starved_by_a_stream_of_tuned_ones():
    variants = ModelVariants(FakePeft(), "tuned")
    order, release_first = [], threading.Event()

    def generate(model_id: str, hold: threading.Event | None = None) -> None:
        with variants.use(model_id):
            order.append(model_id)
            if hold is not None:
                hold.wait(10)

    first = threading.Thread(target=generate, args=("tuned", release_first))
    first.start()
    while order != ["tuned"]:
        time.sleep(0.01)
    base = threading.Thread(target=generate, args=("base",))
    base.start()

    def until(condition) -> None:
        deadline = time.monotonic() + 10
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.005)

    until(lambda: variants._waiting[False] == 1)  # the base request now waits for the running tuned one
    later = threading.Thread(target=generate, args=("tuned",))
    later.start()
    until(lambda: variants._waiting[True] == 1)
    assert order == ["tuned"]  # the later tuned request queues behind the waiting base one
    release_first.set()
    for t in (first, base, later):
        t.join(10)
    assert order == ["tuned", "base", "tuned"]
