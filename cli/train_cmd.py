"""``adapterhub train``: instruction data to a trained, evaluated and (with --push) registered adapter."""

from __future__ import annotations

import click

from .output import emit_json, json_option, registry_option

__all__ = ["COMMANDS"]


def _modules(value: str | None) -> tuple[str, ...]:
    return tuple(m.strip() for m in (value or "").split(",") if m.strip())


def _read_config(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Eager: the file's settings become the command's defaults, so flags on the command line win."""
    if value is None:
        return None
    from adapterhub.train.config_file import read_config_file

    ctx.default_map = {**(ctx.default_map or {}),
                       **read_config_file(value, (p.name for p in ctx.command.params if p.name))}
    return value


@click.command("train")
@click.option("--config", type=click.Path(dir_okay=False), is_eager=True, expose_value=False, callback=_read_config,
              help="YAML file of settings: any flag, or TRL/PEFT names (learning_rate, lora_r...); flags win.")
@click.option("--base", required=True, help="Base model: a local folder, a .gguf file or a Hub id.")
@click.option("--data", "data", required=True, type=click.Path(dir_okay=False), help="Training rows (JSONL).")
@click.option("--eval-data", type=click.Path(dir_okay=False), help="Held-out rows (JSONL) for the final evaluation.")
@click.option("--method", type=click.Choice(["lora", "qlora", "prompt-tuning"]), default="lora", show_default=True)
@click.option("--name", required=True, help="Adapter name in the registry.")
@click.option("--task", required=True, help="What the adapter does (e.g. sentiment).")
@click.option("--r", "--lora-r", "r", type=int, default=8, show_default=True, help="LoRA rank.")
@click.option("--alpha", "--lora-alpha", "alpha", type=float, default=16.0, show_default=True, help="LoRA alpha.")
@click.option("--dropout", "--lora-dropout", "dropout", type=float, default=0.0, show_default=True,
              help="LoRA dropout.")
@click.option("--target-modules", help="Comma-separated module names, or all-linear (default: PEFT's for the model).")
@click.option("--num-virtual-tokens", type=int, default=16, show_default=True, help="Soft-prompt length.")
@click.option("--prompt-init-text", default="", help="Initialise the soft prompt from this text.")
@click.option("--epochs", "--num-train-epochs", "epochs", type=float, default=3.0, show_default=True)
@click.option("--max-steps", type=int, default=0, show_default=True, help="Optimiser steps (0: use --epochs).")
@click.option("--lr", "--learning-rate", "lr", type=float, default=2e-4, show_default=True, help="Peak learning rate.")
@click.option("--batch-size", "--per-device-train-batch-size", "batch_size", type=int, default=8, show_default=True)
@click.option("--grad-accum", "--gradient-accumulation-steps", "grad_accum", type=int, default=1, show_default=True)
@click.option("--max-length", type=int, default=512, show_default=True, help="Longest sequence (tokens).")
@click.option("--packing", is_flag=True, help="Pack rows into --max-length sequences (TRL best-fit), no padding.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--save-steps", type=int, default=50, show_default=True, help="Checkpoint every N steps.")
@click.option("--eval-steps", type=int, default=0, show_default=True,
              help="Held-out loss every N steps during training (0: only the final evaluation).")
@click.option("--eval-batch-size", "--per-device-eval-batch-size", "eval_batch_size", type=int, default=32,
              show_default=True, help="Rows per evaluation batch.")
@click.option("--report-to", type=click.Choice(["none", "tensorboard", "trackio"]), default="none",
              show_default=True, help="Log the run to TensorBoard (under OUTPUT/checkpoints/runs) or Trackio.")
@click.option("--chat-template-path", type=click.Path(dir_okay=False), default="",
              help="Jinja chat template to train with instead of the base's (e.g. one with generation markers).")
@click.option("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice).")
@click.option("--output", type=click.Path(file_okay=False), help="Run folder (default: ./runs/NAME).")
@click.option("--push", is_flag=True, help="Register the adapter with its metrics when training ends.")
@click.option("--resume", is_flag=True, help="Continue the run in --output from its last checkpoint.")
@click.option("--tag", "tags", multiple=True, help="Tag for the pushed version (repeatable).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@registry_option
@json_option
def train(base, data, eval_data, method, name, task, r, alpha, dropout, target_modules, num_virtual_tokens,
          prompt_init_text, epochs, max_steps, lr, batch_size, grad_accum, max_length, packing, seed, save_steps,
          eval_steps, eval_batch_size, report_to, chat_template_path, threads, output, push, resume, tags,
          no_progress, registry, json_output):
    """Train a LoRA, QLoRA or soft-prompt adapter with TRL's SFTTrainer on instruction data (JSONL).

    Rows: Alpaca, chat "messages" (every assistant turn is learned), ShareGPT "conversations", or
    "prompt"/"completion" (the completion is learned). The prompt uses the base's chat template (or
    the Alpaca template). At the end the adapter is evaluated on --eval-data (loss, perplexity,
    exact match and ROUGE-L of greedy answers, also for the bare base); --push stores it with those
    metrics, the settings and the sha256 of the data. Ctrl-C saves a checkpoint; --resume continues.
    """
    from adapterhub.train.config import TrainConfig
    from adapterhub.train.run import run_training

    config = TrainConfig(
        method=method, r=r, alpha=alpha, dropout=dropout, target_modules=_modules(target_modules),
        num_virtual_tokens=num_virtual_tokens, prompt_init_text=prompt_init_text, epochs=epochs,
        max_steps=max_steps, lr=lr, batch_size=batch_size, grad_accum=grad_accum, max_length=max_length,
        seed=seed, save_steps=save_steps, eval_batch_size=eval_batch_size, packing=packing, eval_steps=eval_steps,
        report_to=report_to, chat_template_path=chat_template_path,
    )
    run = run_training(base, data, config, name=name, task=task, eval_data=eval_data, output=output, push=push,
                       registry=registry, tags=tags, resume=resume, progress=not no_progress and not json_output,
                       threads=threads)
    result, pushed = run.result, run.pushed
    if json_output:
        emit_json({"adapter_dir": str(result.adapter_dir), "metrics": result.metrics,
                   "training": result.training, "pushed": pushed.to_dict() if pushed else None})
        return
    m = result.metrics
    click.echo(f"adapter written to {result.adapter_dir}")
    click.echo(f"train loss {m['train_loss']:.4f}, {m['train_tokens_per_s']:.0f} tokens/s, "
               f"{int(m['truncated_rows'])} row(s) truncated")
    if "eval_loss" in m:
        click.echo(f"eval: loss {m['eval_loss']:.4f}, perplexity {m['eval_perplexity']:.2f}, "
                   f"exact match {m['eval_exact_match']:.1%} (base: {m['base_eval_exact_match']:.1%}), "
                   f"ROUGE-L {m['eval_rouge_l']:.3f} (base: {m['base_eval_rouge_l']:.3f})")
    if pushed:
        click.echo(f"pushed {pushed.ref} (sha256:{pushed.digest[:12]})")


COMMANDS = [train]
