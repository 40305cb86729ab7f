"""``safeanchor eval`` and ``safeanchor serve``. Heavy imports happen inside the commands."""

from __future__ import annotations

from typing import List, Optional

import typer

from rich.console import Console

console = Console(stderr=True)


def eval_command(
    model: str = typer.Option(..., "--model", help="hub id, local folder, .gguf file or embedded:<name>"),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="PEFT adapter folder applied on top of --model"),
    harmful: Optional[List[str]] = typer.Option(None, "--harmful", help="harmful prompt source (repeatable); default bundled:harmful:test"),
    harmless: Optional[List[str]] = typer.Option(None, "--harmless", help="harmless prompt source (repeatable); default bundled:harmless:test; 'none' to skip"),
    task: Optional[List[str]] = typer.Option(None, "--task", help="task name or source with answers (repeatable); default arithmetic and topic; 'none' to skip"),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="first N records of every source"),
    task_limit: Optional[int] = typer.Option(None, "--task-limit", min=1, help="first N records of every task (default: --limit)"),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1, help="tokens per safety answer"),
    task_max_new_tokens: Optional[int] = typer.Option(None, "--task-max-new-tokens", min=1, help="tokens per task answer (default: --max-new-tokens)"),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="prompts per generation batch"),
    backend: str = typer.Option("auto", "--backend", help="auto, hf or vllm (vllm: GPU + vllm installed)"),
    keyword_mode: str = typer.Option("prefix", "--keyword-mode", help="prefix or anywhere"),
    prefix_chars: int = typer.Option(200, "--prefix-chars", min=1, help="characters the keyword judge reads in prefix mode"),
    phrase_set: str = typer.Option("extended", "--phrase-set", help="extended or reference (Arditi et al. list)"),
    llm_judge: str = typer.Option("auto", "--llm-judge", help="auto (when SAFEANCHOR_JUDGE_URL is set), on or off"),
    judge_url: Optional[str] = typer.Option(None, "--judge-url", help="OpenAI-compatible base URL (else SAFEANCHOR_JUDGE_URL)"),
    judge_model: Optional[str] = typer.Option(None, "--judge-model", help="judge model name (else SAFEANCHOR_JUDGE_MODEL)"),
    judge_concurrency: int = typer.Option(4, "--judge-concurrency", min=1, max=64, help="judge requests in flight"),
    judge_timeout: float = typer.Option(60.0, "--judge-timeout", help="seconds per judge request"),
    classifier: Optional[str] = typer.Option(None, "--classifier", help="moderation model folder (sequence classifier or guard model)"),
    classifier_threshold: float = typer.Option(0.5, "--classifier-threshold", help="flag when unsafe probability >= this"),
    classifier_labels: Optional[str] = typer.Option(None, "--classifier-labels", help="comma-separated unsafe label names"),
    precision: str = typer.Option("auto", "--precision", help="auto, fp32, bf16 or fp16"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)"),
    seed: int = typer.Option(0, "--seed", help="torch seed (decoding is greedy)"),
    out: Optional[str] = typer.Option(None, "--out", help="folder for eval.json (not saved when omitted)"),
    force: bool = typer.Option(False, "--force", help="replace an eval.json already in --out"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
) -> None:
    """Safety (ASR, HS, flagged rate, over-refusal) and task accuracy of a model, to eval.json."""
    from ..distributed import is_main, join_launch
    from ..evaluate.results import EVAL_FILE
    from ..io import claim_output_folder
    from ..models import check_device, choose_precision

    join_launch()  # under torchrun: the ranks share the prompts; the main one writes eval.json
    if out and is_main():  # before the (long) generation: a finished eval.json, or a folder that cannot be written
        claim_output_folder(out, (EVAL_FILE,), force=force, what="evaluation")
    from ..models import load_model
    from ..evaluate.classifier import ClassifierConfig
    from ..evaluate.llm_judge import LLMJudgeConfig
    from ..evaluate.results import summary_table, write_eval
    from ..evaluate.suite import DEFAULT_TASKS, EvalConfig, evaluate_model, load_eval_inputs

    def sources(values, default, option):
        values = list(values) if values else list(default)
        if "none" in [v.lower() for v in values] and len(values) > 1:
            raise ValueError(f"{option} none means no source; it cannot be combined with others ({values})")
        return () if [v.lower() for v in values] == ["none"] else tuple(values)

    cfg = EvalConfig(
        harmful=sources(harmful, ("bundled:harmful:test",), "--harmful"),
        harmless=sources(harmless, ("bundled:harmless:test",), "--harmless"), tasks=sources(task, DEFAULT_TASKS, "--task"), limit=limit, task_limit=task_limit, max_new_tokens=max_new_tokens,
        task_max_new_tokens=task_max_new_tokens, batch_size=batch_size, backend=backend, keyword_mode=keyword_mode,
        keyword_prefix_chars=prefix_chars, keyword_phrase_set=phrase_set, llm_judge=llm_judge,
        llm_judge_config=LLMJudgeConfig.from_env(url=judge_url, model=judge_model, concurrency=judge_concurrency,
                                                 timeout_s=judge_timeout),
        classifier=ClassifierConfig(path=classifier, threshold=classifier_threshold,
                                    unsafe_labels=tuple(x.strip() for x in classifier_labels.split(",")) if classifier_labels else None)
        if classifier else None,
        seed=seed, model_name=model, adapter=adapter, progress=not quiet)
    choose_precision(check_device(device), precision)  # options, data and judge before the model: seconds, not minutes
    load_eval_inputs(cfg)
    m, tok = load_model(model, device=device, precision=precision, adapter=adapter)
    result = evaluate_model(m, tok, cfg)
    if not is_main():
        return
    Console().print(summary_table(result))
    t = result["timing"]
    console.print(f"{t['prompts']} answers in {t['generate_s']:.1f}s ({t['prompts_per_s']} prompts/s); "
                  f"model fingerprint {result['model']['fingerprint']}")
    if out:
        console.print(f"wrote {write_eval(out, result)}")
    else:
        console.print("[yellow]not saved[/yellow] (pass --out DIR to write eval.json)")


def serve_command(
    model: str = typer.Option(..., "--model", help="hub id, local folder, .gguf file or embedded:<name>"),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="PEFT adapter folder applied on top of --model"),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port (0 = any free port)"),
    host: str = typer.Option("127.0.0.1", "--host", help="interface to bind (loopback by default)"),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1, help="upper bound on a reply's tokens"),
    judge_format: bool = typer.Option(False, "--judge-format", help="force '#reason: ...\\n#score: N' replies (model picks reason and score)"),
    response_prefix: Optional[str] = typer.Option(None, "--response-prefix", help="text every reply starts with"),
    model_name: Optional[str] = typer.Option(None, "--model-name", help="model id reported to clients (default: --model)"),
    precision: str = typer.Option("auto", "--precision", help="auto, fp32, bf16 or fp16"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, ..."),
) -> None:
    """Serve a model over an OpenAI-compatible /v1/chat/completions endpoint (e.g. as an llm judge)."""
    from ..models import check_device, choose_precision, load_model
    from ..evaluate.serve import ServeConfig, bind_server, make_server, server_url

    # options, then the socket, before the (long) model load: a bad option or a port in use is one line
    # (the command guard's ValueError / OSError rule) in a second, not a traceback after minutes
    cfg = ServeConfig(host=host, port=port, model_name=model_name or model, max_new_tokens=max_new_tokens,
                      judge_format=judge_format, response_prefix=response_prefix)
    choose_precision(check_device(device), precision)
    server = bind_server(cfg)  # OSError "cannot listen on HOST:PORT: <reason>"
    try:
        m, tok = load_model(model, device=device, precision=precision, adapter=adapter)
        make_server(m, tok, cfg, server=server)
        console.print(f"serving {cfg.model_name} at {server_url(server)} (Ctrl-C to stop)")
        try:
            server.serve_forever(poll_interval=0.5)
        except KeyboardInterrupt:
            pass
    finally:
        server.server_close()


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
    app.command("serve")(serve_command)
