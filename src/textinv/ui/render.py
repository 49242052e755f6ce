"""How a run's status looks on the page: the progress bar line, the loss table for the plot, the status text."""

from __future__ import annotations

import html

from textinv.ui.worker import RunStatus


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def progress_html(status: RunStatus) -> str:
    """A progress bar with step, loss and ETA; data-* attributes let scripts and tests read the state."""
    loss = f"{status.losses[-1][1]:.4f}" if status.losses else "—"
    total = max(status.total_steps, 1)
    words = {
        "idle": "not started",
        "starting": "loading the model…",
        "running": "training",
        "finished": "finished",
        "stopped": "stopped (checkpoint kept: Resume continues it)",
        "failed": "failed",
    }[status.state]
    return (
        f'<div id="train-progress-state" data-state="{status.state}" data-step="{status.step}" '
        f'data-total="{status.total_steps}">'
        f'<progress value="{status.step}" max="{total}" style="width:100%"></progress>'
        f"<div>step {status.step}/{status.total_steps or '?'} · loss {loss} · "
        f"ETA {format_seconds(status.eta_seconds if status.state == 'running' else None)} · "
        f"{html.escape(words)}</div></div>"
    )


def loss_frame(status: RunStatus):
    """The losses so far as a table for Gradio's line plot."""
    import pandas as pd

    steps, losses = zip(*status.losses, strict=True) if status.losses else ((), ())
    return pd.DataFrame({"step": list(steps), "loss": list(losses)})


def status_text(status: RunStatus) -> str:
    if status.state == "failed":
        return f"**Error:** {status.error}"
    if status.state in ("finished", "stopped") and status.embedding_path:
        return f"Saved `{status.embedding_path}` (step {status.step})."
    if status.output_dir:
        return f"Output folder: `{status.output_dir}`"
    return ""
