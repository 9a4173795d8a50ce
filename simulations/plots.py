"""Plots of a run directory (PNG, matplotlib's Agg backend)."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["plot_run"]


def plot_run(
    run_dir: str | Path, *, references: dict[str, float | None] | None = None
) -> list[Path]:
    """Write ``plots/quality.png`` and ``plots/epsilon.png`` from ``metrics.jsonl``.

    ``references`` (e.g. most-popular and the non-private model's NDCG@10 on the same split)
    are drawn as horizontal lines on the quality plot.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    (run_dir / "plots").mkdir(exist_ok=True)
    records = [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if line.strip()
    ]
    out = []
    evals = [(r["round"], r["eval"]) for r in records if r.get("eval")]
    if evals:
        fig, ax = plt.subplots(figsize=(6, 4))
        keys = [k for k in evals[-1][1] if k.startswith(("ndcg@", "recall@"))]
        for k in sorted(keys):
            ax.plot(
                [r for r, _ in evals],
                [e.get(k, float("nan")) for _, e in evals],
                marker="o",
                label=k,
            )
        styles = iter([("gray", "--"), ("black", ":"), ("tab:brown", "-.")])
        for name, value in (references or {}).items():
            if value is not None:
                color, style = next(styles)
                ax.axhline(value, color=color, linestyle=style, label=f"{name} NDCG@10")
        ax.set_xlabel("round")
        ax.set_ylabel("federated evaluation")
        ax.set_title("Quality over rounds")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        out.append(run_dir / "plots" / "quality.png")
        fig.savefig(out[-1], dpi=100)
        plt.close(fig)
    eps = [
        (r["round"], r.get("train_epsilon_max"), r.get("train_epsilon_median"))
        for r in records
        if r.get("train_epsilon_max") is not None
    ]
    if eps:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([e[0] for e in eps], [e[1] for e in eps], label="max over replying devices")
        ax.plot([e[0] for e in eps], [e[2] for e in eps], label="median over replying devices")
        ax.set_xlabel("round")
        ax.set_ylabel("epsilon spent (example-level)")
        ax.set_title("Privacy spent over rounds")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        out.append(run_dir / "plots" / "epsilon.png")
        fig.savefig(out[-1], dpi=100)
        plt.close(fig)
    return out
