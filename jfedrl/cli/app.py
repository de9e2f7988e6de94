"""The `jfedrl` command line.

    jfedrl train [--config FILE] [--resume RUN_DIR] [--section.field value ...]
    jfedrl envs
    jfedrl export RUN_DIR --out policy.npz [--round R] [--client C] [--force]
    jfedrl config            (prints the full default config as YAML, with docs)
    jfedrl offload worker --input DIR --output DIR   (a plugin command: jfedrl.plugins)

Every config field is a flag (`--algo.ppo.learning-rate 3e-4`); the common ones
have short forms (`--env`, `--clients`, `--rounds`, ...). Precedence: defaults,
then `--config` YAML, then flags.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
import typing
from pathlib import Path
from typing import Any

from jfedrl import config as jconfig
from jfedrl import plugins
from jfedrl.config import Config, DistributedConfig
from jfedrl.run import signals, startup
from jfedrl.schema.checks import ConfigError
from jfedrl.schema.convert import flat_fields, override


def _flag(path: str) -> str:
    return "--" + path.replace("_", "-")


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("config fields (any field of the config tree)")
    shortcuts, section_aliases = jconfig.shortcuts(), jconfig.section_aliases()
    for path, annotation, doc in flat_fields(Config):
        if path == "plugins":  # repeatable, and read before the tree exists (jfedrl.cli)
            group.add_argument(
                "--plugin", dest="cfg:plugins", action="append", metavar="MODULE", help=doc
            )
            continue
        kwargs: dict[str, Any] = {"dest": "cfg:" + path, "default": None, "metavar": "V"}
        if annotation is bool:
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        elif typing.get_origin(annotation) is tuple:
            kwargs.update(nargs="+")
        names = [_flag(path)]
        for alias, target in section_aliases.items():
            if path.startswith(target):
                names.append(_flag(alias + path[len(target) :]))
        names += [f"--{short}" for short, target in shortcuts.items() if target == path]
        # argparse %-formats help strings: a literal % in a docstring must be doubled.
        group.add_argument(*names, help=doc.replace("%", "%%") if doc else None, **kwargs)


def dashed(args: list[str]) -> list[str]:
    """The command line with `_` as `-` in every option name (`--algo.ppo.learning_rate`).

    config.yaml spells fields with underscores and the flags with dashes; both are
    accepted. Values, and everything after a bare `--`, are left as they are.
    """
    out = list(args)
    for i, arg in enumerate(out):
        if arg == "--":
            break
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            out[i] = name.replace("_", "-") + eq + value
    return out


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that reads option names with underscores as dashes (`dashed`)."""

    def parse_known_args(self, args=None, namespace=None):  # argparse's signature
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args(dashed(args), namespace)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="jfedrl", description="Vectorized federated reinforcement learning in JAX."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train", help="run (or resume) a federated training run", allow_abbrev=False
    )
    train.add_argument("--config", help="YAML file with any part of the config tree")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    train.add_argument(
        "--extend",
        metavar="{hold,restart}",
        help="with --resume and more --rounds: the schedules (learning-rate anneal, DQN "
        "epsilon) hold their end values over the added rounds, or restart over them "
        "(needed past an annealed learning rate's horizon)",
    )
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.add_argument("--quiet", action="store_true", help="log only to RUN_DIR/train.log")
    train.add_argument(
        "--host-devices",
        type=int,
        metavar="N",
        help="XLA host (CPU) devices to shard clients over (default: one per core, "
        "fewer when that only adds padding; also $JFEDRL_HOST_DEVICES)",
    )
    train.add_argument(
        "--dry-run",
        action="store_true",
        help="compile the round, print its memory estimate and how many clients fit, exit "
        "(no run folder)",
    )
    train.add_argument(
        "--force-memory",
        action="store_true",
        help="run even if the compiled block's memory estimate exceeds the devices' memory",
    )
    _add_config_flags(train)

    commands.add_parser("envs", help="list the registered environments")
    commands.add_parser("config", help="print the default config as YAML")

    sweep = commands.add_parser(
        "sweep", help="run a sweep file: setups x seeds, each setup's seeds in one program"
    )
    sweep.add_argument("sweep_file", nargs="?", metavar="SWEEP.yaml")
    sweep.add_argument("--out", help="the sweep folder (default: sweeps/<name>)")
    sweep.add_argument("--resume", metavar="SWEEP_DIR", help="continue the sweep in SWEEP_DIR")
    sweep.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    sweep.add_argument(
        "--part",
        metavar="i/N",
        help="run only part i of N of the sweep's groups (a SLURM array task each; "
        "then jfedrl compare the folder)",
    )

    compare = commands.add_parser(
        "compare", help="IQM and mean with bootstrap 95%% CIs of runs, grouped by setup"
    )
    compare.add_argument("dirs", nargs="+", metavar="DIR", help="run folders or folders of runs")
    compare.add_argument("--out", default="comparison", help="folder for the table and plots")
    compare.add_argument("--reps", type=int, default=2000, help="bootstrap resamples")
    compare.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    compare.add_argument("--no-plots", action="store_true", help="write only the tables")
    compare.add_argument(
        "--gamma",
        type=float,
        help="target score of the optimality gap (default: the best final score of any run)",
    )
    compare.add_argument(
        "--metric",
        default="eval_return",
        help="per-round record to compare: eval_return (default), eval_return_p10, "
        "eval_return_min_client, eval_return_std, eval/personal/mean, eval/holdout/mean, "
        "eval/gap, ... (docs/personalization.md)",
    )

    evaluate = commands.add_parser("eval", help="evaluate a run's checkpointed global policy")
    evaluate.add_argument("run_dir", metavar="RUN_DIR")
    evaluate.add_argument("--clients", type=int, nargs="+", help="client ids (default: all)")
    evaluate.add_argument("--episodes", type=int, help="per client (default: log.eval_episodes)")
    evaluate.add_argument("--round", type=int, help="checkpoint round (default: the newest)")
    evaluate.add_argument("--seed", type=int, help="evaluation seed (default: the run's)")
    evaluate.add_argument("--out", help="folder for the table (default: RUN_DIR/eval)")
    evaluate.add_argument(
        "--policy",
        default="global",
        help="global: the global params; local: each chosen client's own params",
    )
    evaluate.add_argument(
        "--video", action="store_true", help="also render one episode per chosen client"
    )
    evaluate.add_argument("--video-format", default="gif", help="gif (Pillow) or mp4 (ffmpeg)")
    evaluate.add_argument(
        "--host-devices",
        type=int,
        metavar="N",
        help="XLA host (CPU) devices, as for train (any count restores any run's checkpoint; "
        "also $JFEDRL_HOST_DEVICES)",
    )

    export = commands.add_parser(
        "export", help="write a checkpointed policy as plain arrays (.npz, NumPy can act)"
    )
    export.add_argument("run_dir", metavar="RUN_DIR")
    export.add_argument("--out", required=True, help="the .npz file to write")
    export.add_argument("--round", type=int, help="checkpoint round (default: the newest)")
    export.add_argument(
        "--client", type=int, help="export this client's own params (default: the global policy)"
    )
    export.add_argument("--force", action="store_true", help="overwrite --out if it exists")

    for name, spec in plugins.commands().items():  # e.g. `jfedrl offload worker` (offload)
        spec.add_arguments(commands.add_parser(name, help=spec.summary or None))
    return parser


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields given on the command line, as `dotted.path -> raw value`."""
    return {
        dest[len("cfg:") :]: value
        for dest, value in vars(args).items()
        if dest.startswith("cfg:") and value is not None
    }


def config_from_args(args: argparse.Namespace) -> Config:
    """Defaults, then `--config` YAML, then flags."""
    from jfedrl.config import load_yaml

    config = load_yaml(args.config) if args.config else Config()
    return override(config, config_overrides(args))


def _launch(args: argparse.Namespace, config: Config | None) -> DistributedConfig:
    """The `distributed` section of `jfedrl train`, checked before JAX starts.

    `config` is a new run's; a resumed run's config.yaml keeps no process layout,
    so only the flags give it.
    """
    from jfedrl.validation import validate_distributed

    if config is None:
        launch = {k: v for k, v in config_overrides(args).items() if k.startswith("distributed.")}
        config = override(Config(), launch)
    validate_distributed(config)  # a bad process id fails here, not as a hang
    if config.distributed.enabled and args.dry_run:
        raise ConfigError("--dry-run cannot be combined with --distributed (run it alone)")
    return config.distributed


def _cmd_train(args: argparse.Namespace) -> int:
    from jfedrl.config import load_yaml, participants_per_round
    from jfedrl.run.devices import configure_host_devices

    if args.extend is not None and not args.resume:
        raise ConfigError(
            "--extend: only with --resume RUN_DIR (a new run sets federation.schedule_rounds)"
        )
    if args.resume:
        if args.config:
            raise ConfigError(
                "--config cannot be combined with --resume (the run keeps its config)"
            )
        saved = Path(args.resume) / "config.yaml"  # resume_config names a missing one
        fed = (load_yaml(saved) if saved.is_file() else Config()).federation
        dist = _launch(args, None)
    else:
        config = config_from_args(args)
        fed = config.federation
        dist = _launch(args, config)
    participants = participants_per_round(fed)
    if dist.enabled and dist.num_processes:  # the default layout: this process's share
        participants = -(-participants // dist.num_processes)
    # Before anything imports jax: XLA reads the host device count once.
    layout = configure_host_devices(participants, args.host_devices)
    primary = True
    if dist.enabled:
        from jfedrl.run import distributed

        distributed.initialize(dist)
        primary = distributed.is_primary()
    if not args.quiet and primary:  # stdout: stderr keeps its one-line error contract
        print(f"jfedrl: {layout.describe()}", flush=True)
        if dist.enabled:
            print(f"jfedrl: {distributed.describe()}", flush=True)
    from jfedrl.run import runner

    if args.resume:
        config = runner.resume_config(args.resume, config_overrides(args), args.extend)
    if args.dry_run:
        return _dry_run(config)
    result = runner.train(
        config,
        resume=bool(args.resume),
        progress=False if args.no_progress else None,
        quiet=args.quiet,
        check_memory=not args.force_memory,
    )
    terminated = result.stop == "SIGTERM"
    code = signals.EXIT_TERMINATED if terminated else signals.EXIT_INTERRUPTED
    if not primary:  # process 0 reports for the run
        return code if result.interrupted else 0
    print("\n".join(result.summary()))  # stdout; train.log has the same lines
    if result.interrupted:
        what = "terminated (SIGTERM), checkpointed" if terminated else "interrupted"
        print(f"{what}; resume with: jfedrl train --resume {result.run_dir}")
        return code
    return 0


def _sweep_layout(path: str | Path) -> Any:
    """Sets, before jax starts, the host devices `jfedrl train` would use for the first setup.

    The checkpoint's padded client axis depends on the layout, so the runs of a
    sweep then resume and evaluate (`jfedrl eval`) like runs of `train`. A file
    too broken to read gets the default config's layout; `sweep.load` then names
    the bad field.
    """
    import yaml

    from jfedrl.config import from_dict, participants_per_round
    from jfedrl.run.devices import configure_host_devices

    try:
        data = yaml.safe_load(Path(path).read_text())
        grid = data.get("grid") or {}
        first = {k: v[0] for k, v in grid.items()} if grid else (data.get("setups") or [{}])[0]
        federation = override(from_dict(data.get("base") or {}), first).federation
    except Exception:  # any malformed file: reported by sweep.load, naming the field
        federation = Config().federation
    return configure_host_devices(participants_per_round(federation))


def _part(text: str | None) -> tuple[int, int] | None:
    """`--part i/N` as `(i, N)`, 1 <= i <= N."""
    if text is None:
        return None
    index, _, count = text.partition("/")
    if not (index.strip().isdigit() and count.strip().isdigit()):
        raise ConfigError(f"--part: must be i/N with 1 <= i <= N (e.g. 2/3), got {text!r}")
    part = int(index), int(count)
    if not 1 <= part[0] <= part[1]:
        raise ConfigError(f"--part: must be i/N with 1 <= i <= N (e.g. 2/3), got {text!r}")
    return part


def _cmd_sweep(args: argparse.Namespace) -> int:
    if (args.sweep_file is None) == (args.resume is None):
        raise ConfigError("sweep: give either SWEEP.yaml or --resume SWEEP_DIR")
    part = _part(args.part)
    layout = _sweep_layout(Path(args.resume) / "sweep.yaml" if args.resume else args.sweep_file)
    print(f"jfedrl: {layout.describe()}", flush=True)  # stdout: stderr holds only an error
    from jfedrl.experiments import sweep

    if args.sweep_file:
        for line in sweep.describe_groups(sweep.load(args.sweep_file)):
            print(line)
    result = sweep.run_sweep(
        args.sweep_file,
        args.out,
        resume=args.resume,
        progress=not args.no_progress,
        quiet=True,
        part=part,
    )
    if part is not None:
        summary = sweep.summary_name(part)
        print(f"part {part[0]}/{part[1]}: {len(result.run_dirs)} run(s)")
        print(f"sweep folder: {result.sweep_dir} ({summary}, runs/)")
        if not result.interrupted:
            print(f"when every part has finished: jfedrl compare {result.sweep_dir}")
    else:
        if not result.interrupted:
            print((result.sweep_dir / "comparison.md").read_text(), end="")
        print(f"sweep folder: {result.sweep_dir} (summary.csv, comparison.md, runs/)")
    if not result.interrupted:
        return 0
    terminated = result.stop == "SIGTERM"  # as `train`: 143 after SIGTERM, else 130
    what = "terminated (SIGTERM), checkpointed" if terminated else "interrupted"
    print(f"{what}; resume with: jfedrl sweep --resume {result.sweep_dir}")
    return signals.EXIT_TERMINATED if terminated else signals.EXIT_INTERRUPTED


def _cmd_compare(args: argparse.Namespace) -> int:
    from jfedrl.experiments.compare import compare

    compare(
        args.dirs,
        args.out,
        reps=args.reps,
        seed=args.seed,
        plots=not args.no_plots,
        gamma=args.gamma,
        metric=args.metric,
    )
    print((Path(args.out) / "comparison.md").read_text(), end="")
    print(
        f"written to {args.out}/ (comparison.md, comparison.csv, comparison_pairs.csv"
        + (")" if args.no_plots else ", curves.png, final_scores.png, performance_profiles.png)")
    )
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from jfedrl.config import load_yaml, participants_per_round
    from jfedrl.run.devices import configure_host_devices

    out = Path(args.out) if args.out else Path(args.run_dir) / "eval"
    if out.exists() and not out.is_dir():  # before anything is restored or compiled
        raise ConfigError(f"--out: {str(out)!r} is a file, not a folder; choose another --out")
    saved = Path(args.run_dir) / "config.yaml"  # evaluate_run names a missing one
    run_config = load_yaml(saved) if saved.is_file() else Config()
    if args.video:  # before anything is restored, compiled or evaluated
        from jfedrl.experiments import video

        video.check_format(args.video_format)
        if saved.is_file():
            video.renderer_for(run_config.env.name)
    # The layout train would pick; a checkpoint restores under any (its slots are re-padded).
    configure_host_devices(participants_per_round(run_config.federation), args.host_devices)
    from jfedrl.experiments import evaluate

    result = evaluate.evaluate_run(
        args.run_dir,
        clients=args.clients,
        episodes=args.episodes,
        round_index=args.round,
        seed=args.seed,
        policy=args.policy,
    )
    print(result.table(), end="")
    print(f"saved: {evaluate.save(result, args.out)}")
    if args.video:
        paths = evaluate.record_videos(
            args.run_dir,
            clients=args.clients,
            round_index=args.round,
            seed=args.seed,
            policy=args.policy,
            video_format=args.video_format,
            out=args.out,
        )
        for path in paths:
            print(f"video: {path}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from jfedrl.config import load_yaml, participants_per_round
    from jfedrl.run.devices import configure_host_devices

    out = Path(args.out)
    if out.exists() and not args.force:  # before jax starts or anything is restored
        raise ConfigError(f"--out: {str(out)!r} exists; use --force to overwrite it")
    saved = Path(args.run_dir) / "config.yaml"  # export_policy names a missing one
    config = load_yaml(saved) if saved.is_file() else Config()
    clients = config.federation.num_clients
    if args.client is not None and not 0 <= args.client < clients:
        raise ConfigError(f"--client: must be in 0..{clients - 1}, got {args.client}")
    # The run's own device layout: the checkpoint's padded shapes depend on it.
    configure_host_devices(participants_per_round(config.federation))
    from jfedrl.experiments.export import export_policy

    exported = export_policy(
        args.run_dir, out, round_index=args.round, client=args.client, force=args.force
    )
    meta = exported.meta
    print(
        f"exported the {meta['params']} policy of round {meta['round']} ({meta['algorithm']}, "
        f"layers {meta['layer_sizes']}, {meta['activation']}, output {meta['output']}) "
        f"to {exported.path}"
    )
    return 0


def _dry_run(config: Config) -> int:
    """`jfedrl train --dry-run`: compile one block, print its memory needs, write nothing."""
    import jax

    from jfedrl.round.simulator import Simulator, make_simulator
    from jfedrl.run import devices

    simulator = make_simulator(config)
    plan = plugins.executor(config.offload.executor).plan
    for line in plan(simulator) if plan is not None else ():  # spends nothing
        print(line)
    state = jax.eval_shape(simulator.init, jax.random.PRNGKey(config.seed))
    rounds = min(config.log.rounds_per_block, config.federation.rounds)
    compiled = Simulator.run_block.lower(simulator, state, rounds).compile()
    device = jax.devices()[0]
    clients = config.federation.num_clients
    print(
        f"compiled {rounds} round(s) of {clients} clients on "
        f"{len(jax.devices())} {device.platform} device(s)"
    )
    estimate = devices.memory_estimate(compiled)
    if estimate is None:
        print("memory estimate: not available on this backend")
        return 0
    capacity = devices.device_memory_bytes(device)
    count = len(jax.devices())
    print(
        f"memory estimate per device: {estimate.total / 2**20:.1f} MiB (arguments "
        f"{estimate.arguments / 2**20:.1f}, temporaries {estimate.temporaries / 2**20:.1f}, "
        f"outputs {estimate.outputs / 2**20:.1f}, code {estimate.code / 2**20:.1f})"
    )
    if capacity is not None:
        if device.platform != "cpu":  # host devices share one RAM; accelerators add theirs
            capacity *= count
        fit = devices.clients_that_fit(estimate.total * count, clients, capacity)
        print(
            f"device memory available: {capacity / 2**30:.1f} GiB; about {fit} clients fit "
            "(a lower bound: every byte counted as growing with clients)"
        )
    return 0


class third_party_quiet:
    """Keeps third-party warnings out of the CLI's output while building envs.

    Python warnings are ignored, and anything libraries write straight to file
    descriptor 2 (MuJoCo's C-level `settotalmass` deprecation notice, when Brax
    compiles a model) goes to a scratch file. Exceptions still propagate.
    """

    def __enter__(self):
        import tempfile
        import warnings

        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore")
        sys.stderr.flush()
        self._saved = os.dup(2)
        self._sink = tempfile.TemporaryFile()
        os.dup2(self._sink.fileno(), 2)
        return self

    def __exit__(self, *exc):
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._sink.close()
        self._warnings.__exit__(*exc)
        return False


def _cmd_envs() -> int:
    import envs

    describe = getattr(envs, "describe", None)
    for name in envs.names():
        if describe is None:
            with third_party_quiet():
                env, params = envs.make(name)
            print(
                f"{name:28s} obs {env.observation_space(params).shape}  "
                f"actions {env.action_space(params)}"
            )
            continue
        with third_party_quiet():
            info = describe(name)
        print(f"{name}")
        print(f"    {info.get('description', '')}")
        print(
            f"    observation {tuple(info['observation_shape'])} {info['observation_dtype']}, "
            f"actions {info['action_space']}"
        )
        if info.get("variants"):
            print(f"    variants: {', '.join(info['variants'])}")
        if info.get("params"):
            tunables = ", ".join(f"{k}={v}" for k, v in info["params"].items())
            print(f"    params: {tunables}")
    sys.stdout.flush()  # a closed pipe raises here, inside main's handler
    return 0


def _cmd_config() -> int:
    import yaml

    from jfedrl.schema.convert import to_dict

    docs = {path: doc for path, _, doc in flat_fields(Config)}
    text = yaml.safe_dump(to_dict(Config()), sort_keys=False)
    # Annotate each leaf line with its docstring.
    out, stack = [], []
    for line in text.splitlines():
        indent = (len(line) - len(line.lstrip())) // 2
        key = line.strip().split(":", 1)[0]
        stack = stack[:indent] + [key]
        doc = docs.get(".".join(stack))
        out.append(f"{line}  # {doc}" if doc and not line.rstrip().endswith(":") else line)
    print("\n".join(out), flush=True)  # a closed pipe raises here, inside main's handler
    return 0


def _user_error(error: Exception) -> bool:
    """Whether `error` is the user's to fix (a one-line message, exit 2), not a bug.

    The run's own error classes are imported only here, once an error exists:
    importing them at start would import jax before `configure_host_devices`.
    """
    from jfedrl.run.callbacks import ParticipationError
    from jfedrl.strategies.privacy import PrivacyBudgetExhausted

    return isinstance(error, (ValueError, ParticipationError, PrivacyBudgetExhausted))


#: What argparse itself takes for a negative number (a value, not an option): `-5`, `-.5`.
_ARGPARSE_NEGATIVE = re.compile(r"^-\d+$|^-\d*\.\d+$")


def attach_negative_values(argv: list[str]) -> list[str]:
    """`--flag -inf` as `--flag=-inf`, for every negative number argparse would take for an option.

    argparse reads `-inf`, `-nan` or `-1e-3` after a flag as another option and prints
    its usage; joined to the flag, the value reaches the field's own check (a finite
    number, a range) and its one-line error.
    """
    out: list[str] = []
    for token in argv:
        previous = out[-1] if out else ""
        if (
            token.startswith("-")
            and not _ARGPARSE_NEGATIVE.match(token)
            and _is_number(token)
            and previous.startswith("--")
            and "=" not in previous
        ):
            out[-1] = f"{previous}={token}"
        else:
            out.append(token)
    return out


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _renamed_flag(argv: list[str]) -> str | None:
    """The one-line error for the first flag of an earlier version's field, if any."""
    for arg in argv:
        if arg.startswith("--") and "." in arg:
            error = jconfig.renamed_error(arg[2:].split("=", 1)[0])
            if error is not None:
                return str(error)
    return None


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    renamed = _renamed_flag(given)
    if renamed is not None:
        print(f"jfedrl: error: {renamed}", file=sys.stderr)
        return 2
    args = parser.parse_args(attach_negative_values(given))
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    if argv is None and args.command not in ("envs", "config", "compare"):
        # The `jfedrl` command itself (not a call from Python), before JAX is imported:
        # XLA's spurious compilation-cache lines are kept off stderr (jfedrl.run.stderr_filter).
        from jfedrl.run import stderr_filter

        stderr_filter.install()
    try:
        signals.install()  # before anything imports jax: a signal at any moment stops the run
        startup.prepare_process(lowering=args.command not in ("config", "compare"))
        if args.command == "train":
            return _cmd_train(args)
        if args.command == "envs":
            return _cmd_envs()
        if args.command == "config":
            return _cmd_config()
        if args.command == "sweep":
            return _cmd_sweep(args)
        if args.command == "compare":
            return _cmd_compare(args)
        if args.command == "eval":
            return _cmd_eval(args)
        if args.command == "export":
            return _cmd_export(args)
        if args.command in plugins.commands():
            return plugins.commands()[args.command].run(args)
    except signals.Terminated:
        print("jfedrl: terminated (SIGTERM)", file=sys.stderr)
        return signals.EXIT_TERMINATED
    except KeyboardInterrupt:
        print("jfedrl: aborted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `jfedrl config | head`: the reader has what it wanted
        # Python's final flush of stdout at exit would raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for `yes | head`
    except Exception as error:  # ConfigError, ParticipationError, ...
        if not _user_error(error):
            raise
        print(f"jfedrl: error: {error}", file=sys.stderr)
        return 2
    finally:
        if threading.current_thread() is threading.main_thread():
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    return 1
