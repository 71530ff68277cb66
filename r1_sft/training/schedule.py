"""How long a training run is and when it validates and saves, decided once the data is encoded.

``--eval_steps 0`` (the default) fits the cadence to the run: about :data:`EVALUATIONS` evaluations
spread over it, never more than :data:`MAX_EVAL_EVERY` steps apart, so ``best_model/`` is chosen on
validation in every run, the 130-row sample (21 steps) included. The Trainer also evaluates and
saves at the last step whatever the cadence, so the end of the run is always among the candidates.
``--save_steps 0`` saves at every evaluation. The start-up lines say the plan: steps, evaluations,
checkpoints.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

EVALUATIONS = 4  # evaluations an automatic cadence aims at (the last step is always one of them)
MAX_EVAL_EVERY = 50  # an automatic cadence validates at least this often (steps) on long runs


@dataclass(frozen=True)
class Schedule:
    examples: int  # training examples after encoding (over-length ones skipped)
    per_step: int  # sequences per optimizer step: batch x accumulation x processes
    steps_per_epoch: int
    total_steps: int
    eval_steps: int  # resolved cadence (never 0)
    save_steps: int  # resolved cadence (a multiple of eval_steps)
    auto_eval: bool  # eval_steps was chosen from the run's length

    @property
    def evaluations(self) -> list[int]:
        """The steps at which the validation loss is computed (the Trainer adds the last step)."""
        return _every(self.eval_steps, self.total_steps)

    @property
    def checkpoints(self) -> list[int]:
        """The steps at which checkpoint-N is written (the last step included)."""
        return _every(self.save_steps, self.total_steps)

    def describe(self, val_examples: int) -> list[str]:
        """The start-up lines: steps, evaluations, checkpoints."""
        epochs = self.total_steps / self.steps_per_epoch
        evals, saves = self.evaluations, self.checkpoints
        how = f"every {self.eval_steps} steps" + (" (auto: --eval_steps 0)" if self.auto_eval else "")
        return [
            f"[schedule] {self.examples} training examples, {self.per_step} per step: {self.steps_per_epoch} steps "
            f"per epoch, {self.total_steps} steps ({epochs:.3g} epochs)",
            f"[schedule] validation on {val_examples} examples {how} and at the end: {len(evals)} evaluations "
            f"(steps {_steps(evals)}); checkpoints at steps {_steps(saves)}; best_model/ = the lowest eval_loss "
            f"among them",
        ]


def _every(interval: int, total: int) -> list[int]:
    steps = list(range(interval, total + 1, interval))
    return steps if steps and steps[-1] == total else steps + [total]


def _steps(steps: list[int]) -> str:
    return ", ".join(map(str, steps)) if len(steps) <= 8 else f"{steps[0]}, {steps[1]}, ..., {steps[-1]}"


def steps_per_epoch(examples: int, batch: int, accumulation: int, processes: int) -> int:
    """Optimizer steps per epoch, as the Trainer counts them (the last partial micro-batch and step count)."""
    micro_batches = math.ceil(math.ceil(examples / processes) / batch)
    return max(math.ceil(micro_batches / accumulation), 1)


def auto_eval_steps(total_steps: int) -> int:
    """About EVALUATIONS evaluations over the run, at most MAX_EVAL_EVERY steps apart."""
    return max(1, min(MAX_EVAL_EVERY, math.ceil(total_steps / EVALUATIONS)))


def plan_schedule(cfg, examples: int, processes: int = 1) -> Schedule:
    """The run's length and cadence from ``cfg`` (a TrainConfig) and the encoded training examples.

    ``eval_steps`` 0: :func:`auto_eval_steps`; with an explicit ``save_steps``, the largest divisor of it
    not above that (checkpoints must fall on evaluations for the best-model choice). ``save_steps`` 0:
    the evaluation cadence.
    """
    per_epoch = steps_per_epoch(examples, cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps, processes)
    total = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.num_train_epochs * per_epoch)
    eval_steps = cfg.eval_steps
    if eval_steps <= 0:
        eval_steps = auto_eval_steps(total)
        if cfg.save_steps > 0:
            eval_steps = max(d for d in range(1, eval_steps + 1) if cfg.save_steps % d == 0)
    save_steps = cfg.save_steps if cfg.save_steps > 0 else eval_steps
    per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * processes
    return Schedule(examples, per_step, per_epoch, total, eval_steps, save_steps, auto_eval=cfg.eval_steps <= 0)
