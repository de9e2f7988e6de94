"""The benchmark's outputs: JSON, a Markdown table with the machine, a plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scripts import benchlib
from scripts.peers.common import REWARD_THRESHOLD, versions

PACKAGES = (
    "jfedrl",
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "gymnax",
    "numpy",
    "torch",
    "stable-baselines3",
    "gymnasium",
    "flwr",
    "ray",
)


def _find(results: list[dict], system: str, clients: int) -> dict | None:
    return next((r for r in results if r["system"] == system and r["clients"] == clients), None)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def targets(results: list[dict], rounds: int, local_updates: int) -> list[dict[str, Any]]:
    """The issue's three targets, each with the measured figure and a verdict."""
    out = []
    jf = _find(results, "jfedrl (cold cache)", 16)
    jf_warm = _find(results, "jfedrl (warm cache)", 16)
    sb = _find(results, "sb3_loop", 16)
    if jf and sb:
        ratio = _ratio(jf["steps_per_s"], sb["steps_per_s"])
        ratio_wall = _ratio(jf["steps_per_s_wall"], sb["steps_per_s_wall"])
        ratio_cpu = _ratio(jf.get("steps_per_cpu_s"), sb.get("steps_per_cpu_s"))
        cpu_note = f"; {ratio_cpu:.1f}x env steps per CPU-second" if ratio_cpu else ""
        out.append(
            {
                "target": "C=16: >= 40x the SB3 loop's env steps/s",
                "measured": f"{ratio:.1f}x training throughput; {ratio_wall:.1f}x counting "
                f"setup + compile (cold cache){cpu_note}",
                "met": ratio >= 40,
                "shortfall": None if ratio >= 40 else f"{40 / ratio:.2f}x short",
                "extrapolated": sb["extrapolated"],
            }
        )
    per_client = rounds * local_updates * 512
    jf4, jf4_warm, sb4 = (
        _find(results, "jfedrl (cold cache)", 4),
        _find(results, "jfedrl (warm cache)", 4),
        _find(results, "sb3_loop", 4),
    )
    if jf4 and sb4:
        ratio = _ratio(sb4["wall_s"], jf4["wall_s"])
        warm = _ratio(sb4["wall_s"], jf4_warm["wall_s"]) if jf4_warm else None
        label = "131k-step experiment" if per_client == 32768 else f"{4 * per_client:,}-step run"
        measured = f"{ratio:.1f}x less wall time (cold compilation cache)"
        if warm:
            measured += f"; {warm:.1f}x with a warm cache"
        out.append(
            {
                "target": f"C=4, {label}: >= 5x less wall time than SB3, compile included",
                "measured": measured,
                "met": ratio >= 5,
                "met_warm_cache": warm >= 5 if warm else None,
                "shortfall": None if ratio >= 5 else f"{5 / ratio:.2f}x short (cold)",
                "extrapolated": False,
            }
        )
    if jf and sb:
        a, b = jf["time_to_475_s"], sb["time_to_475_s"]
        if a is None:
            verdict, measured = False, "jfedrl did not reach 475"
        elif b is None:
            verdict = True
            measured = f"jfedrl {a:.1f} s; SB3 loop did not reach 475 in {sb['rounds']} rounds"
        else:
            verdict, measured = a < b, f"jfedrl {a:.1f} s vs SB3 loop {b:.1f} s ({b / a:.1f}x)"
        if jf_warm and jf_warm["time_to_475_s"]:
            measured += f"; warm cache {jf_warm['time_to_475_s']:.1f} s"
        out.append(
            {
                "target": "C=16: less wall time to reach a mean eval return of 475",
                "measured": measured,
                "met": verdict,
                "shortfall": None,
                "extrapolated": sb["extrapolated"],
            }
        )
    return out


def build(args, results, skipped, notes, machine) -> dict[str, Any]:
    clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]
    packages = versions(PACKAGES)
    for r in clean:
        packages.update(r.get("packages", {}))
    machine = benchlib.finish(machine)
    return {
        "task": {
            "env": "CartPole-v1",
            "rounds": args.rounds,
            "local_updates": args.local_updates,
            "env_steps_per_client_round": args.local_updates * 512,
            "env_steps_per_client": args.rounds * args.local_updates * 512,
            "eval_episodes_per_client": args.eval_episodes,
            "reward_threshold": REWARD_THRESHOLD,
            "quick": args.quick,
        },
        "machine": machine,
        "packages": packages,
        "notes": notes,
        "results": clean,
        "skipped": skipped,
        "targets": targets(clean, args.rounds, args.local_updates),
    }


def _fmt(value, spec: str, missing: str = "—") -> str:
    return missing if value is None else format(value, spec)


def markdown(data: dict[str, Any]) -> str:
    task, machine = data["task"], data["machine"]
    lines = [
        "# jfedrl vs peers: federated PPO on CartPole-v1",
        "",
        f"Measured {machine['date']} on {machine['cpu']} ({machine['cores']} cores, "
        f"{machine['memory_gib']:.1f} GiB RAM, {', '.join(machine['cpu_features']) or 'no AVX2'}), "
        f"{machine['platform']}, Python {machine['python']}. Load average at start / end: "
        f"{machine['loadavg_at_start'][0]:.1f} / {machine['loadavg_at_end'][0]:.1f}.",
        "",
        f"Task: {task['rounds']} rounds x {task['local_updates']} PPO updates of 4 envs x 128 "
        f"steps = {task['env_steps_per_client']:,} env steps per client; FedAvg every round; "
        f"deterministic eval of the global policy on {task['eval_episodes_per_client']} "
        "episodes per client env after every round."
        + (" **Quick smoke run, not a measurement.**" if task["quick"] else ""),
        "",
        "Wall = setup (imports, env and model construction) + compile + training; evaluation is "
        "timed apart and excluded on every side. Steps/s = env steps / training time "
        "(compile excluded); 'wall steps/s' counts setup and compile. Time to 475 = wall time "
        "until the global policy's mean eval return first reaches 475. CPU s = user + system "
        "seconds of the whole process tree (setup, compile, training and eval): the work done, "
        "which unlike wall time hardly depends on how busy the machine was.",
        "",
        "| C | system | wall s | setup s | compile s | train s | eval s (apart) | steps/s "
        "| wall steps/s | CPU s | steps / CPU s | peak RSS MB | time to 475 s | final return |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(data["results"], key=lambda r: (r["clients"], r["system"])):
        name = r["system"] + (" *(extrapolated)*" if r["extrapolated"] else "")
        reached = r["time_to_475_s"]
        if reached is not None:
            to_475 = f"{reached:.1f} (round {r['round_to_475']})"
        elif r["extrapolated"]:
            to_475 = "—"
        else:
            to_475 = "not reached"
        lines.append(
            f"| {r['clients']} | {name} | {r['wall_s']:.1f} | {r['setup_s']:.1f} | "
            f"{r['compile_s']:.1f} | {r['train_s']:.1f} | {_fmt(r['eval_s'], '.1f')} | "
            f"{r['steps_per_s']:,.0f} | {r['steps_per_s_wall']:,.0f} | "
            f"{_fmt(r.get('cpu_s'), '.0f')} | {_fmt(r.get('steps_per_cpu_s'), ',.0f')} | "
            f"{r['peak_rss_mb']:,.0f} | {to_475} | {_fmt(r['final_eval_return'], '.1f')} |"
        )
    for s in data["skipped"]:
        lines.append(f"| {s['clients']} | {s['system']} | {s['status']} |||||||||||")
    if data["targets"]:
        lines += ["", "## Targets (issue 6)", "", "| target | measured | met |", "|---|---|---|"]
        for t in data["targets"]:
            met = "yes" if t["met"] else f"**no** ({t['shortfall'] or 'see note'})"
            if t.get("extrapolated"):
                met += " (peer extrapolated)"
            lines.append(f"| {t['target']} | {t['measured']} | {met} |")
    extrapolated = [r for r in data["results"] if r["extrapolated"]]
    if extrapolated:
        lines += ["", "Extrapolated rows:"]
        lines += [f"- {r['system']} C={r['clients']}: {r['status']}" for r in extrapolated]
    if data["notes"]:
        lines += ["", "Notes:"]
        lines += [f"- {k}: {v}" for k, v in data["notes"].items()]
    pkgs = ", ".join(f"{k} {v}" for k, v in sorted(data["packages"].items()))
    lines += ["", f"Packages: {pkgs}.", ""]
    return "\n".join(lines)


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    measured = [r for r in data["results"] if r["per_round"]]
    clients = sorted({r["clients"] for r in measured})
    if not clients:
        return
    fig, axes = plt.subplots(
        1, len(clients), figsize=(5 * len(clients), 3.8), squeeze=False, sharey=True
    )
    colors = {
        "jfedrl (cold cache)": "C0",
        "jfedrl (warm cache)": "C9",
        "sb3_loop": "C3",
        "flower": "C2",
    }
    for ax, c in zip(axes[0], clients, strict=True):
        for r in sorted((r for r in measured if r["clients"] == c), key=lambda r: r["system"]):
            xs = [p["wall_s"] for p in r["per_round"]]
            ys = [p["eval_return_mean"] for p in r["per_round"]]
            ax.plot(xs, ys, marker="o", ms=3, label=r["system"], color=colors.get(r["system"]))
        ax.axhline(REWARD_THRESHOLD, color="grey", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.set_ylim(0, 520)
        ax.set_title(f"C = {c} clients")
        ax.set_xlabel("wall seconds (setup + compile + training; eval excluded)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("global policy: mean eval return")
    handles = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    axes[0][-1].legend(handles.values(), handles.keys(), loc="lower right", fontsize=8)
    machine = data["machine"]
    fig.suptitle(
        f"Federated PPO on CartPole-v1 - {machine['cpu']}, {machine['cores']} cores, "
        f"{machine['date'][:10]}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(data: dict[str, Any], out: Path) -> None:
    benchlib.write_report(out, data, markdown(data))
    plot(data, Path(f"{out}.png"))
