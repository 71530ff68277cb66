"""What a training run shows and keeps as it goes: progress lines, the log file, the loss curve, why it ended.

* Progress: on a terminal the Trainer's tqdm bar, with a compact line per log instead of its raw
  dicts; in a file (``nohup ... > train.log``) no bar and no carriage returns, just one line every
  ``logging_steps``: ``[train] step 10/300 (3%) loss 2.3456 lr 1.98e-04 tok/s 1234 ETA 0:12:34``,
  and one per evaluation with the best eval loss so far. ``datasets.map`` bars follow the same rule.
* ``OUTPUT_DIR/training_logs/log_history.jsonl`` equals the Trainer's log history at every log.
* ``loss_curve.png``: markers on short series, so a run of one logged step still shows its point.
* :class:`NonFiniteGuardCallback`: the non-finite guard for GRPO (SFT and distillation: ``SFTTrainer``).
* :func:`end_summary`: why training ended (max steps, epochs, early stopping after N evaluations
  without a better eval loss) and where the best and last adapters went.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Sequence

from transformers import EarlyStoppingCallback, PrinterCallback, ProgressCallback, TrainerCallback

from r1_sft.jsonl_io import atomic_open, write_jsonl

SHORT_SERIES = 30  # a loss series with fewer points is drawn with markers


def on_terminal() -> bool:
    """Progress bars only when both streams are a terminal (tqdm draws on stderr, our lines go to stdout)."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def quiet_dataset_bars() -> None:
    """``datasets.map`` / ``filter`` bars are carriage-return progress: off when the output is a file."""
    if not on_terminal():
        import datasets

        datasets.disable_progress_bars()


# ----------------------------------------------------------------------------- progress lines

def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _best_eval(log_history: Sequence[dict]) -> tuple[float, int] | None:
    evals = [(h["eval_loss"], h["step"]) for h in log_history if "eval_loss" in h]
    return min(evals, key=lambda e: e[0]) if evals else None


# GRPO's per-step values (TRL's names) shown in the progress line, with their short labels.
GRPO_LINE_KEYS = (("rewards/accuracy_reward/mean", "accuracy"), ("rewards/format_reward/mean", "format"),
                  ("completions/mean_length", "length"), ("completions/clipped_ratio", "cut"), ("kl", "kl"))


def _grpo_parts(logs: dict, prefix: str = "") -> list[str]:
    """``reward 0.512±0.301 accuracy 0.375 format 0.750 length 812 cut 0.125`` from a GRPO log entry."""
    parts = [f"reward {logs[prefix + 'reward']:.3f}±{logs.get(prefix + 'reward_std') or 0:.3f}"]
    for key, label in GRPO_LINE_KEYS:
        value = logs.get(prefix + key)
        if value is not None:
            parts.append(f"{label} {value:.0f}" if label == "length" else f"{label} {value:.3f}")
    return parts


class _ProgressText:
    """Formats one log entry as one line; knows when training (re)started, for the ETA."""

    def __init__(self) -> None:
        self._start_time = time.monotonic()
        self._start_step = 0

    def start(self, state) -> None:
        self._start_time, self._start_step = time.monotonic(), state.global_step

    def line(self, state, logs: dict) -> str | None:
        step, total = state.global_step, state.max_steps
        where = f"step {step}/{total} ({100 * step / total:.0f}%)" if total else f"step {step}"
        if "eval_reward" in logs:  # GRPO: the validation rewards (its eval_loss means nothing to a user)
            return " ".join([f"[eval] {where}"] + _grpo_parts(logs, "eval_"))
        if "eval_loss" in logs:
            parts = [f"[eval] {where} eval_loss {logs['eval_loss']:.4f}"]
            parts += [f"{key} {logs[key]:.4f}" for key in ("eval_ce_loss", "eval_kl_loss") if key in logs]
            best = _best_eval(state.log_history)
            if best is not None:
                parts.append(f"(best {best[0]:.4f} at step {best[1]})")
            return " ".join(parts)
        if "loss" not in logs:
            return None  # the end-of-training summary: end_summary says it in words
        parts = [f"[train] {where} loss {logs['loss']:.4f}"]
        if "reward" in logs:
            parts += _grpo_parts(logs)
        parts += [f"{key} {logs[key]:.4f}" for key in ("ce_loss", "kl_loss") if key in logs]
        if "learning_rate" in logs:
            parts.append(f"lr {logs['learning_rate']:.2e}")
        if "grad_norm" in logs:
            parts.append(f"grad_norm {logs['grad_norm']:.3f}")
        if "tokens_per_s" in logs:
            parts.append(f"tok/s {logs['tokens_per_s']:.0f}")
        if "epoch" in logs:
            parts.append(f"epoch {logs['epoch']:.2f}")
        elapsed, done = time.monotonic() - self._start_time, step - self._start_step
        if done > 0 and total:
            # Wall time per step so far, evaluations and saves included: what the user will wait.
            parts.append(f"elapsed {_clock(elapsed)} ETA {_clock(elapsed / done * (total - step))}")
        return " ".join(parts)


class ProgressLineCallback(TrainerCallback):
    """For a log file: one line per training log and per evaluation, no bar. Replaces PrinterCallback."""

    def __init__(self) -> None:
        self.text = _ProgressText()

    def on_train_begin(self, args, state, control, **kwargs):
        self.text.start(state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            line = self.text.line(state, logs)
            if line:
                print(line, flush=True)


class ProgressBarCallback(ProgressCallback):
    """For a terminal: the Trainer's tqdm bars, with the same compact lines written above the bar."""

    def __init__(self) -> None:
        super().__init__()
        self.text = _ProgressText()

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        self.text.start(state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs and self.training_bar is not None:
            line = self.text.line(state, logs)
            if line:
                self.training_bar.write(line)


def use_progress_output(trainer) -> None:
    """Swap the Trainer's progress callback (tqdm bar or raw-dict printer) for ours, chosen by the stream.

    Added last, so each line sees what the other callbacks added to the log (tokens/s, KD parts).
    """
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(ProgressBarCallback() if on_terminal() else ProgressLineCallback())


# ----------------------------------------------------------------------------- saving and the log file

class SaveWhenStoppingCallback(TrainerCallback):
    """Early stopping may fire at an evaluation that is not a save step: save then, so the last
    weights exist as a checkpoint (the Trainer already saves at max_steps)."""

    def on_evaluate(self, args, state, control, **kwargs):
        if control.should_training_stop:
            control.should_save = True
        return control


class LogHistoryCallback(TrainerCallback):
    """Keeps OUTPUT_DIR/training_logs/log_history.jsonl equal to the Trainer's log history.

    Runs after TokenStatsCallback, which adds tokens/s and the padding fraction to each entry (the
    history is also saved in every checkpoint, so a resumed run's file is complete).
    """

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero:
            write_jsonl(self.path, state.log_history)
        return control


class NonFiniteGuardCallback(TrainerCallback):
    """The non-finite guard for a trainer the project does not subclass (GRPO: TRL's GRPOTrainer).

    Judged once per optimizer step (``on_step_end``, before the Trainer decides to save or evaluate):
    the trainable weights after the step. NaN/inf weights are never checkpointed or scored;
    ``NONFINITE_STEPS`` such steps in a row stop the run with one line. An fp16 step the loss scaler
    skipped leaves the weights finite, so it is no harm, whichever call sees it. ``last_finite`` tells the
    caller whether the weights in memory at the end may become final_model/.
    """

    def __init__(self, output_dir: Path):
        self.output_dir, self.streak, self.last_finite = Path(output_dir), 0, True

    def on_step_end(self, args, state, control, model=None, **kwargs):
        from r1_sft.training.trainer import (
            NONFINITE_STEPS,
            NonFiniteLossError,
            last_finite_checkpoint,
            trainable_weights_finite,
        )

        bad = not trainable_weights_finite(model)
        if torch_distributed_ready():
            import torch

            flag = torch.tensor(float(bad), device=next(model.parameters()).device)
            torch.distributed.all_reduce(flag)
            bad = bool(flag > 0)
        self.last_finite = not bad
        self.streak = self.streak + 1 if bad else 0
        if bad:
            control.should_save = control.should_evaluate = False
            if self.streak >= NONFINITE_STEPS:
                raise NonFiniteLossError(f"training stopped at step {state.global_step}: the adapter's weights were "
                                         f"NaN/inf after {NONFINITE_STEPS} steps in a row; "
                                         f"{last_finite_checkpoint(self.output_dir)}. Try --precision fp32 (or bf16 "
                                         f"on a GPU that has it) or a lower --learning_rate (now {args.learning_rate:g})")
        return control


def torch_distributed_ready() -> bool:
    import torch

    return torch.distributed.is_available() and torch.distributed.is_initialized()


# ----------------------------------------------------------------------------- the loss curve

def loss_figure(log_history: Sequence[dict]):
    """Train and eval loss against the optimizer step (a matplotlib Figure), or None if nothing to plot.

    A series shorter than SHORT_SERIES points gets markers: a line through one point draws nothing.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    if not train and not evals:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for series, label, color in ((train, "train loss", "tab:blue"), (evals, "eval loss", "tab:orange")):
        if series:
            short = len(series) < SHORT_SERIES
            ax.plot(*zip(*series), label=label, color=color, marker="o" if short else None,
                    markersize=5 if short else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats / trained token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_loss_curve(log_history: Sequence[dict], path: Path) -> bool:
    """Write :func:`loss_figure` as a PNG, atomically. False if there was nothing to plot."""
    import matplotlib.pyplot as plt

    fig = loss_figure(log_history)
    if fig is None:
        return False
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------- how training ended

def end_reason(args, state, early_stopping: EarlyStoppingCallback | None) -> str:
    """Why the training loop stopped, in words (max_steps, epochs or early stopping)."""
    best = _best_eval(state.log_history)
    if state.global_step < state.max_steps and early_stopping is not None \
            and early_stopping.early_stopping_patience_counter >= early_stopping.early_stopping_patience:
        n = early_stopping.early_stopping_patience_counter
        best_text = f"; best eval_loss {best[0]:.4f} at step {best[1]}" if best else ""
        return (f"stopped early at step {state.global_step} of {state.max_steps}: {n} evaluation"
                f"{'s' if n != 1 else ''} in a row without a lower eval_loss (--early_stopping_patience "
                f"{early_stopping.early_stopping_patience}){best_text}")
    if state.global_step >= state.max_steps:
        if args.max_steps > 0:
            return f"reached --max_steps {args.max_steps}"
        epochs = state.num_train_epochs
        return f"finished {epochs:g} epoch{'s' if epochs != 1 else ''} ({state.global_step} steps)"
    return f"stopped at step {state.global_step} of {state.max_steps}"


def end_summary(args, state, early_stopping: EarlyStoppingCallback | None, best_dir: Path, final_dir: Path,
                eval_steps: int) -> list[str]:
    """The lines that close a run: why it ended, the best eval loss, and what best/final hold."""
    lines = [f"[train] {end_reason(args, state, early_stopping)}"]
    summary = next((h for h in reversed(state.log_history) if "train_runtime" in h), None)
    if summary is not None:
        speed = f", {summary['train_tokens_per_s']:.0f} tokens/s" if "train_tokens_per_s" in summary else ""
        steps = f"{state.global_step} step{'s' if state.global_step != 1 else ''}"
        lines.append(f"[train] {steps} in {_clock(summary['train_runtime'])}{speed}")
    last = f"checkpoint-{state.global_step}"
    if state.best_model_checkpoint:
        best = _best_eval(state.log_history)
        loss = f"{state.best_metric:.4f}" if state.best_metric is not None else "?"
        at = f" at step {best[1]}" if best else ""
        lines.append(f"[train] best eval_loss {loss}{at}: {best_dir.name}/ = {Path(state.best_model_checkpoint).name}, "
                     f"{final_dir.name}/ = {last} (the last step)")
    else:
        lines.append(f"[train] no evaluation ran ({state.global_step} steps < --eval_steps {eval_steps}): "
                     f"{best_dir.name}/ and {final_dir.name}/ both hold the last adapter ({last})")
    return lines
