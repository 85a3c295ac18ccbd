"""The `alignlib` command line.

    alignlib train RECIPE [key=value ...] [--smoke] [--nproc N] [--hostfile FILE] [--output-dir DIR]
    alignlib prepare RECIPE [key=value ...] [--smoke] [--output-dir DIR]
    alignlib validate RECIPE [key=value ...] [--smoke] [--print]
    alignlib recipes
    alignlib demo [--output-dir DIR]
    alignlib import-handbook SFT.yaml [DPO.yaml] [-o RECIPE.yaml]

Exit codes: 0 success; 2 usage or validation error (bad flag, unknown recipe key, wrong type,
bad override); 1 runtime failure (a source that cannot be loaded, a failed training run, a failed
child process in a multi-process launch).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import uuid

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2

OVERRIDES_HELP = ("dotted key=value overrides applied to the recipe before validation; values are YAML "
                  "(e.g. stages.sft.train.learning_rate=1e-5 stages.sft.data.sources.0.weight=0.5 "
                  "engine.kind=torch)")
SMOKE_HELP = ("run the same pipeline on a tiny random-init model of the recipe's architecture family, the "
              "embedded tiny-chat tokenizer with the recipe's own chat template, and the small per-source "
              "datasets shipped in alignlib/assets/smoke/ (a few steps on CPU, engine torch unless overridden)")


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # exit 2 with usage, like argparse, but testable in-process
        self.print_usage(sys.stderr)
        raise UsageError(f"{self.prog}: error: {message}")


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def build_parser() -> dict[str, argparse.ArgumentParser]:
    main = _Parser(prog="alignlib", formatter_class=_formatter, description=textwrap.dedent("""\
        Exact, lossless and fast SFT and DPO for open chat models, driven by recipes.

        A recipe (YAML) names the base model, tokenizer and chat template, the data mixture of each stage,
        the stages (sft, dpo) with their hyperparameters, the engine and the output directory.
        Shipped recipes: `alignlib recipes`. Validate one: `alignlib validate zephyr_7b_alpha`.
        Try everything on a CPU in a minute or two: `alignlib demo`."""),
        epilog="exit codes: 0 success, 2 usage/validation error, 1 runtime failure")
    main.add_argument("--version", action="store_true", help="print the version and exit")
    sub = main.add_subparsers(dest="command", metavar="COMMAND")
    parsers: dict[str, argparse.ArgumentParser] = {"": main}

    def add(name: str, help_: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=description, formatter_class=_formatter,
                           epilog="exit codes: 0 success, 2 usage/validation error, 1 runtime failure")
        p.__class__ = _Parser
        parsers[name] = p
        return p

    def recipe_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("recipe", metavar="RECIPE", help="a recipe file, or the name of a shipped recipe "
                                                        "(see `alignlib recipes`)")
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)

    p = add("train", "run a recipe's stages (SFT, then DPO from the SFT model)", textwrap.dedent("""\
        Runs the recipe's stages in order; a DPO stage starts from the previous stage's output model.
        Each stage writes <output-dir>/<stage>/: the Hugging Face model and tokenizer, metrics.jsonl,
        report.json (data counts, throughput, resolved config) and PNG plots. Data is prepared once per
        fingerprint and cached under $ALIGNLIB_CACHE (default ~/.cache/alignlib).

        Multi-process: --nproc N relaunches this command in N processes through the DeepSpeed launcher
        (engine deepspeed; DS_ACCELERATOR=cpu without a GPU) or torchrun (engine torch); --hostfile FILE
        launches across the hosts of a DeepSpeed hostfile. `deepspeed --module alignlib train ...` and
        `torchrun -m alignlib train ...` work directly too."""))
    recipe_args(p)
    p.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    p.add_argument("--output-dir", metavar="DIR", help="where the stages write (default: the recipe's output_dir)")
    p.add_argument("--stages", metavar="NAMES", help="comma list of stages to run (default: all, in order)")
    p.add_argument("--nproc", type=int, metavar="N", help="processes per node (relaunches through a launcher)")
    p.add_argument("--hostfile", metavar="FILE", help="DeepSpeed hostfile for a multi-node launch")
    p.add_argument("--master-port", type=int, metavar="PORT", help="rendezvous port (default: a free one)")

    p = add("prepare", "prepare the data only (Parquet + report.json per stage)", textwrap.dedent("""\
        Loads, maps, mixes, tokenizes and packs the data of every stage, exactly as `train` would, and
        writes <output-dir>/<stage>/data/{train,test}.parquet and report.json (rows kept, dropped by
        reason, split, truncated, skipped). Cached by fingerprint like `train`."""))
    recipe_args(p)
    p.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    p.add_argument("--output-dir", metavar="DIR", help="where to write (default: the recipe's output_dir)")

    p = add("validate", "check a recipe (and overrides) without running anything",
            "Parses and validates the recipe with the overrides applied; prints the problems (each with its "
            "dotted key and a suggestion) and exits 2, or prints a summary and exits 0.")
    recipe_args(p)
    p.add_argument("--smoke", action="store_true", help="validate the --smoke variant")
    p.add_argument("--print", dest="print_resolved", action="store_true", help="print the resolved recipe as YAML")

    add("recipes", "list the shipped recipes", "Lists the shipped recipes with a one-line description.")

    p = add("demo", "run the embedded demo (tiny model, SFT then DPO, CPU, ~1-2 min)", textwrap.dedent("""\
        Runs the demo recipe shipped inside the package as a smoke pipeline: a tiny random-init Llama with
        the embedded tiny-chat tokenizer, SFT on the embedded sample chats, then DPO on the embedded sample
        preference pairs. Prints the data reports and where the outputs went."""))
    p.add_argument("--output-dir", metavar="DIR", default=None, help="where to write (default: runs/demo)")

    p = add("import-handbook", "convert Alignment Handbook recipe YAMLs into an alignlib recipe",
            "Converts an Alignment Handbook SFT config (and optionally its DPO config) into one alignlib recipe; "
            "prints it, or writes it with -o. Keys that have no alignlib meaning are listed on stderr.")
    p.add_argument("configs", nargs="+", metavar="CONFIG.yaml", help="the Handbook's sft and/or dpo config files")
    p.add_argument("-o", "--output", metavar="FILE", help="write the recipe here")
    p.add_argument("--name", help="recipe name (default: from hub_model_id / output_dir)")
    return parsers


def _err(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def _check_overrides(overrides: list[str]) -> None:
    for o in overrides:
        if "=" not in o:
            raise UsageError(f"override {o!r} must look like dotted.key=value")


def _load(args: argparse.Namespace):
    from alignlib import recipes

    _check_overrides(args.overrides)
    if getattr(args, "smoke", False):
        return recipes.load_smoke_recipe(args.recipe, args.overrides)
    return recipes.load_recipe(args.recipe, args.overrides)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(args: argparse.Namespace, engine: str) -> tuple[list[str], dict[str, str]]:
    """The launcher command line that reruns this `train` in N processes (or across a hostfile)."""
    child = ["train", args.recipe, *args.overrides]
    if args.smoke:
        child.append("--smoke")
    if args.output_dir:
        child += ["--output-dir", args.output_dir]
    if args.stages:
        child += ["--stages", args.stages]
    bindir = os.path.dirname(sys.executable)
    env = {**os.environ, "ALIGNLIB_RUN_ID": uuid.uuid4().hex,
           "PATH": os.pathsep.join([bindir, os.environ.get("PATH", "")])}
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        has_gpu = False
    if not has_gpu:
        env.setdefault("DS_ACCELERATOR", "cpu")
        env.setdefault("CUDA_VISIBLE_DEVICES", "")
        env.setdefault("OMP_NUM_THREADS", "1")
    port = str(args.master_port or _free_port())
    if engine == "deepspeed":
        exe = shutil.which("deepspeed", path=env["PATH"]) or os.path.join(bindir, "deepspeed")
        cmd = [exe]
        if args.hostfile:
            cmd += ["--hostfile", args.hostfile]
            if args.nproc:
                cmd += ["--num_gpus", str(args.nproc)]
        else:
            cmd += ["--num_gpus", str(args.nproc)]
        cmd += ["--no_local_rank", "--master_port", port, "--module", "alignlib", *child]
    else:
        if args.hostfile:
            raise UsageError("--hostfile needs engine.kind=deepspeed (for the torch engine run torchrun "
                             "on each node: torchrun --nnodes ... -m alignlib train ...)")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc),
               "--master_port", port, "-m", "alignlib", *child]
    return cmd, env


def cmd_train(args: argparse.Namespace) -> int:
    from alignlib import pipeline

    recipe = _load(args)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
    in_launch = "WORLD_SIZE" in os.environ or "RANK" in os.environ
    if args.nproc is not None and args.nproc < 1:
        raise UsageError("--nproc must be >= 1")
    if (args.nproc is not None or args.hostfile) and not in_launch:
        cmd, env = launch_command(args, recipe.engine.kind)
        print("launching: " + " ".join(cmd), flush=True)
        proc = subprocess.run(cmd, env=env)
        if proc.returncode != 0:
            _err(f"the {recipe.engine.kind} launch exited with status {proc.returncode}")
            return EXIT_USAGE if proc.returncode == EXIT_USAGE else EXIT_RUNTIME
        return EXIT_OK
    results = pipeline.run(recipe, smoke=args.smoke, output_dir=args.output_dir, stages=stages)
    if pipeline.dist_info().is_main:
        out = pipeline.resolve_output_dir(recipe, args.output_dir)
        print(f"\n{recipe.name}: {len(results)} stage(s) done; outputs in {out.resolve()}")
        for r in results:
            print(f"  {r.name} ({r.method}): {r.output_dir}  [{r.global_step} steps, {r.seconds:.1f} s]")
    return EXIT_OK


def cmd_prepare(args: argparse.Namespace) -> int:
    from alignlib import pipeline

    recipe = _load(args)
    pipeline.prepare(recipe, smoke=args.smoke, output_dir=args.output_dir)
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    recipe = _load(args)
    if args.print_resolved:
        import yaml

        print(yaml.safe_dump(recipe.to_dict(), sort_keys=False, allow_unicode=True), end="")
        return EXIT_OK
    print(f"{recipe.name}: valid ({recipe.path})")
    for name, stage in recipe.stages.items():
        cfg = stage.train
        batch = (f"global batch {stage.global_batch_size}" if stage.global_batch_size else
                 f"global batch {stage.global_batch_tokens} tokens" if stage.global_batch_tokens else
                 f"micro batch {cfg.get('micro_batch_size', 4)} x accumulation {cfg.get('gradient_accumulation_steps', 1)} per rank")
        print(f"  {name}: {stage.method}, {len(stage.data.sources)} source(s), lr {cfg.get('learning_rate', '(default)')}, "
              f"{batch}, max_length {stage.max_length}")
    return EXIT_OK


def cmd_recipes(args: argparse.Namespace) -> int:
    from alignlib import recipes

    rows = recipes.list_recipes()
    width = max(len(n) for n, _, _ in rows)
    for name, _, desc in rows:
        print(f"{name:<{width}}  {desc}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from alignlib import pipeline, recipes

    recipe = recipes.load_smoke_recipe("demo")
    out = args.output_dir or recipe.output_dir or "runs/demo"
    print(f"alignlib demo: {recipe.description}\n")
    results = pipeline.run(recipe, smoke=True, output_dir=out)
    if pipeline.dist_info().is_main:
        print(f"\ndemo done; outputs in {os.path.abspath(out)}")
        for r in results:
            print(f"  {r.name} ({r.method}): {r.output_dir}")
            print(f"    model + tokenizer (AutoModelForCausalLM.from_pretrained), metrics.jsonl, report.json, "
                  f"plots: {', '.join(os.path.basename(p) for p in r.plots)}")
    return EXIT_OK


def cmd_import_handbook(args: argparse.Namespace) -> int:
    import yaml

    from alignlib import recipes

    raw, notes = recipes.import_handbook(args.configs, name=args.name)
    recipes.from_dict(raw)  # the result must validate
    text = yaml.safe_dump(raw, sort_keys=False, allow_unicode=True, width=120)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote {args.output}")
    else:
        print(text, end="")
    return EXIT_OK


COMMANDS = {"train": cmd_train, "prepare": cmd_prepare, "validate": cmd_validate, "recipes": cmd_recipes,
            "demo": cmd_demo, "import-handbook": cmd_import_handbook}


def main(argv: list[str] | None = None) -> int:
    from alignlib.errors import AlignlibError, ConfigError

    argv = list(sys.argv[1:] if argv is None else argv)
    parsers = build_parser()
    try:
        if not argv or argv[0] in ("-h", "--help"):
            parsers[""].print_help()
            return EXIT_OK if argv else EXIT_USAGE
        if argv[0] == "--version":
            import alignlib

            print(f"alignlib {alignlib.__version__}")
            return EXIT_OK
        command = argv[0]
        if command not in COMMANDS:
            import difflib

            close = difflib.get_close_matches(command, list(COMMANDS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            parsers[""].print_usage(sys.stderr)
            raise UsageError(f"alignlib: error: unknown command {command!r}{hint} (choose from {', '.join(COMMANDS)})")
        args = parsers[command].parse_intermixed_args(argv[1:])
        return COMMANDS[command](args)
    except SystemExit as exc:  # --help inside a subcommand
        return int(exc.code or 0) if isinstance(exc.code, int) or exc.code is None else EXIT_USAGE
    except UsageError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except (AlignlibError, Exception) as exc:  # noqa: B014 - every other failure is a runtime failure
        if os.environ.get("ALIGNLIB_DEBUG"):
            raise
        _err(f"{type(exc).__name__}: {exc}")
        return EXIT_RUNTIME


if __name__ == "__main__":
    sys.exit(main())
