"""What `offload` adds to jfedrl: the `local`, `golem` and `ray` executors and `jfedrl offload`.

`jfedrl.plugins` finds these specs through the entry points declared in
pyproject.toml; jfedrl itself never imports `offload`. This module stays light
(no JAX, no yapapi, no Ray): the runners and the worker are imported when first used.
Each executor owns its validation, which `jfedrl.validation.validate` calls before
anything is written or compiled (`make_simulator` validates, so a runner is
only ever built for a checked config).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from jfedrl import plugins
from jfedrl.plugins import CommandSpec, ExecutorSpec
from jfedrl.run import devices
from jfedrl.schema.checks import ConfigError, require, require_choice, require_positive
from offload.golem_config import GolemConfig
from offload.ray_config import RAY_TRANSFERS, RayConfig


def validate_local(config: Any) -> None:
    """The worker timeouts of the `offload` section (what every offload executor uses)."""
    for name in ("task_timeout", "compile_timeout"):
        require_positive(f"offload.{name}", getattr(config.offload, name))


def validate_golem(config: Any) -> None:
    """`validate_local`, then the `offload.golem` section: bounds and one provider image."""
    validate_local(config)
    if config.plugins:
        raise ConfigError(
            f"plugins: {', '.join(config.plugins)}: a Golem provider runs the published image, "
            "which holds no plugin module; install it in the image (scripts/build_golem_image.sh) "
            "and register it with an entry point, or use --executor local or ray"
        )
    golem = config.offload.golem
    for name in (
        "budget",
        "task_timeout",
        "offer_timeout",
        "health_interval",
        "min_mem_gib",
        "min_storage_gib",
    ):
        require_positive(f"offload.golem.{name}", getattr(golem, name))
    require(golem.spare_wait >= 0, "offload.golem.spare_wait", ">= 0", golem.spare_wait)
    fraction = golem.verify_fraction
    require(0 <= fraction <= 1, "offload.golem.verify_fraction", "in [0, 1]", fraction)
    tolerance = golem.verify_tolerance
    require(tolerance >= 0, "offload.golem.verify_tolerance", ">= 0", tolerance)
    if fraction > 0 and config.offload.state_sync_rounds != 0:
        raise ConfigError(
            f"offload.golem.verify_fraction: {fraction:g} needs offload.state_sync_rounds 0 "
            f"(not {config.offload.state_sync_rounds}): a second provider can only rerun a "
            "task that carries its clients' states"
        )
    for name in ("min_cpu_threads", "max_workers"):
        value = getattr(golem, name)
        require(value >= 1, f"offload.golem.{name}", ">= 1", value)
    images = "offload.golem.image_hash / offload.golem.image_tag"
    if not (golem.image_hash or golem.image_tag):
        raise ConfigError(
            f"{images}: one is required (build and push the provider image with "
            "scripts/build_golem_image.sh)"
        )
    if golem.image_hash and golem.image_tag:
        raise ConfigError(f"{images}: give one, not both")
    if golem.image_url and not golem.image_hash:
        raise ConfigError("offload.golem.image_url: needs offload.golem.image_hash too")


def validate_ray(config: Any) -> None:
    """`validate_local`, then the `offload.ray` section: an address form, resources, transfer."""
    validate_local(config)
    section = config.offload.ray
    address = section.address
    forms = "'' (a local Ray instance), 'auto', 'ray://HOST:PORT' or 'HOST:PORT'"
    if address not in ("", "auto"):
        host, _, port = address.removeprefix("ray://").rpartition(":")
        require(bool(host) and port.isdigit(), "offload.ray.address", forms, address)
    require_positive("offload.ray.num_cpus", section.num_cpus)
    require(section.num_gpus >= 0, "offload.ray.num_gpus", ">= 0", section.num_gpus)
    require(section.local_cpus >= 0, "offload.ray.local_cpus", ">= 0", section.local_cpus)
    require_choice("offload.ray.transfer", section.transfer, RAY_TRANSFERS)


def _with_host_devices(env: dict[str, str]) -> None:
    """Gives CPU workers this process's host device count in their `XLA_FLAGS`.

    A worker pads the participants to a multiple of its devices as the requestor
    does, so both must see the same count; the requestor may have set it through
    `jax_num_cpu_devices`, which a child process does not inherit.
    """
    import jax

    if jax.default_backend() != "cpu":
        return
    env["XLA_FLAGS"] = devices.with_host_device_count(
        env.get("XLA_FLAGS", ""), jax.local_device_count()
    )


def _with_plugin_path(env: dict[str, str]) -> None:
    """Has the workers load this process's `--plugin` modules from the folders they came from.

    A worker's `jfedrl` process imports them before its config tree is assembled
    (`$JFEDRL_PLUGINS`, read by `jfedrl.cli`), from its `PYTHONPATH`.
    """
    folders = list(dict.fromkeys(plugins.LOADED.values()))
    if folders:
        env["PYTHONPATH"] = os.pathsep.join([*folders, *filter(None, [env.get("PYTHONPATH")])])
        env[plugins.ENV_VAR] = ",".join(plugins.LOADED)


def local_executor(simulator: Any, work_dir: Path, num_shards: int) -> Any:
    """The `local` executor: one worker process per shard, sharing this run's XLA cache."""
    import jax

    from offload.executors import LocalExecutor

    offload = simulator.config.offload
    env = dict(os.environ, JFEDRL_WORK_DIR=str(work_dir))
    cache = jax.config.jax_compilation_cache_dir
    if cache:
        env["JFEDRL_COMPILATION_CACHE"] = str(cache)
    _with_plugin_path(env)
    _with_host_devices(env)
    return LocalExecutor(
        num_workers=num_shards,
        work_dir=work_dir / "workers",
        task_timeout=offload.task_timeout,
        compile_timeout=offload.compile_timeout,
        env=env,
    )


def golem_executor(simulator: Any, work_dir: Path, num_shards: int) -> Any:
    """The `golem` executor: Golem providers (yapapi is imported here, not before)."""
    from offload.golem import GolemExecutor

    config = simulator.config
    return GolemExecutor(config.offload.golem, work_dir / "golem", config.federation.rounds)


def ray_executor(simulator: Any, work_dir: Path, num_shards: int) -> Any:
    """The `ray` executor: one Ray actor per shard (Ray is imported here, not before)."""
    import jax

    from offload.ray_executor import RayExecutor

    offload = simulator.config.offload
    env = {}
    cache = jax.config.jax_compilation_cache_dir
    if not offload.ray.address:  # a local Ray instance shares this run's XLA cache
        env["JFEDRL_WORK_DIR"] = str(work_dir)
        if cache:
            env["JFEDRL_COMPILATION_CACHE"] = str(cache)
        _with_plugin_path(env)
        _with_host_devices(env)
    return RayExecutor(
        offload.ray,
        num_workers=num_shards,
        task_timeout=offload.task_timeout,
        compile_timeout=offload.compile_timeout,
        env=env,
    )


def _mib(size: float) -> str:
    return f"{size / 2**20:.2f} MiB"


def task_sizes(simulator: Any) -> list[str]:
    """What one round moves per shard: the task up (with and without states) and the result."""
    from offload.requestor import shard_slices
    from offload.shapes import result_spec, shard_shapes, spec_bytes, task_spec

    config = simulator.config
    offload = config.offload
    slices = shard_slices(simulator.num_participants, offload.shards)
    sticky = offload.state_sync_rounds > 0 and simulator.num_participants == simulator.num_clients
    lines = [f"offload: {len(slices)} shard task(s) per round ({offload.executor})"]
    for n in sorted({s.stop - s.start for s in slices}):
        shapes = shard_shapes(simulator, n)
        up = spec_bytes(task_spec(shapes, offload.quantize, "train", "task"))
        down = spec_bytes(result_spec(shapes, offload.quantize, "train", True))
        text = f"  a shard of {n} clients: task {_mib(up)} up, result {_mib(down)} down"
        if sticky:
            kept = spec_bytes(task_spec(shapes, offload.quantize, "train", "cache"))
            light = spec_bytes(result_spec(shapes, offload.quantize, "train", False))
            text += (
                f"; between state syncs (every {offload.state_sync_rounds} rounds) "
                f"{_mib(kept)} up, {_mib(light)} down"
            )
        lines.append(text)
    return lines


def golem_plan(simulator: Any) -> list[str]:
    """`jfedrl train --executor golem --dry-run`: task sizes, the market, GLM per round."""
    from offload.archive import OffloadError
    from offload.offers import describe_offers, estimate, market_offers
    from offload.requestor import shard_slices

    config = simulator.config
    golem = config.offload.golem
    lines = task_sizes(simulator)
    try:
        offers = market_offers(golem, wait=min(10.0, golem.offer_timeout))
    except OffloadError as error:
        return [*lines, f"{error} (no offers, no estimate)"]
    lines += describe_offers(golem, offers)
    shards = len(shard_slices(simulator.num_participants, config.offload.shards))
    guess = estimate(offers, shards, golem.task_timeout, golem.budget, golem.max_workers)
    if guess is None:
        return [*lines, "golem: no estimate: no provider would take the tasks now"]
    rounds = "unbounded" if guess.rounds_in_budget < 0 else str(guess.rounds_in_budget)
    lines.append(
        f"golem: estimate at most {guess.per_round:.4g} GLM per round ({shards} task(s) of up "
        f"to offload.golem.task_timeout={golem.task_timeout:g}s on the {guess.providers} "
        f"cheapest provider(s)) plus {guess.start_fees:.4g} GLM of start fees; "
        f"offload.golem.budget={golem.budget:g} GLM covers {rounds} round(s), the run has "
        f"{config.federation.rounds}"
    )
    return lines


def _make_local(simulator: Any, run_dir: Path) -> Any:
    from offload.requestor import OffloadRunner

    return OffloadRunner(simulator, run_dir, local_executor)


def _make_golem(simulator: Any, run_dir: Path) -> Any:
    from offload.requestor import OffloadRunner

    return OffloadRunner(simulator, run_dir, golem_executor)


def _make_ray(simulator: Any, run_dir: Path) -> Any:
    from offload.requestor import OffloadRunner

    return OffloadRunner(simulator, run_dir, ray_executor)


LOCAL = ExecutorSpec(
    name="local",
    make_runner=_make_local,
    validate=validate_local,
    summary="long-lived worker processes on this machine, one per shard",
)
GOLEM = ExecutorSpec(
    name="golem",
    make_runner=_make_golem,
    validate=validate_golem,
    section=GolemConfig,
    summary="Golem Network providers through yapapi (needs a running yagna and YAGNA_APPKEY)",
    plan=golem_plan,
)

RAY = ExecutorSpec(
    name="ray",
    make_runner=_make_ray,
    validate=validate_ray,
    section=RayConfig,
    summary="Ray actors on a lab's cluster or a local Ray instance, one per shard (extra `ray`)",
)


def add_worker_arguments(parser: argparse.ArgumentParser, serve_help: str) -> None:
    """The worker's flags (`jfedrl offload worker` and `python -m offload.worker`)."""
    parser.add_argument("--input", help="task folder or .tar (--serve: root of request paths)")
    parser.add_argument("--output", help="result folder or .tar (--serve: root of request paths)")
    parser.add_argument("--serve", action="store_true", help=serve_help)
    parser.add_argument("--serve-dir", help="keep running: answer task requests in this folder")


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    from jfedrl.cli.app import _add_config_flags

    tools = parser.add_subparsers(dest="offload_command", required=True)
    worker = tools.add_parser("worker", help="run one offload task folder")
    add_worker_arguments(worker, "keep running: read task folders from stdin")
    offers = tools.add_parser(
        "golem-offers",
        help="list the Golem offers on the market now that match the run's config "
        "(image runtime, GPU, memory, subnet, network); spends nothing",
    )
    offers.add_argument("--config", help="YAML file with any part of the config tree")
    offers.add_argument(
        "--wait", type=float, default=10.0, help="seconds to collect offers (default 10)"
    )
    _add_config_flags(offers)


def _golem_offers(args: argparse.Namespace) -> int:
    from jfedrl.cli.app import config_from_args
    from offload.archive import OffloadError
    from offload.offers import describe_offers, market_offers

    config = config_from_args(args)
    if args.wait <= 0:
        raise ConfigError(f"--wait: must be > 0, got {args.wait:g}")
    try:
        offers = market_offers(config.offload.golem, wait=args.wait)
    except OffloadError as error:
        print(f"jfedrl: error: {error}", file=sys.stderr)
        return 2
    print("\n".join(describe_offers(config.offload.golem, offers)))
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.offload_command == "golem-offers":
        return _golem_offers(args)
    if not (args.serve or args.serve_dir or (args.input and args.output)):
        print("jfedrl offload worker: error: --input and --output are required", file=sys.stderr)
        return 2
    from offload import serve

    return serve.main(args)


COMMAND = CommandSpec(
    name="offload",
    add_arguments=_add_arguments,
    run=_run,
    summary="offload tools (the provider-side worker)",
)
