"""Subscribers to training events (`textinv.progress`): the terminal progress bar and the experiment trackers."""

from __future__ import annotations

from textinv.progress import Event, RunFinished, RunStarted, StepDone, ValidationDone


class ProgressBar:
    """tqdm bar with the step's loss and learning rate; the CLI subscribes it."""

    def __init__(self) -> None:
        self._bar = None

    def __call__(self, event: Event) -> None:
        from tqdm.auto import tqdm

        if isinstance(event, RunStarted):
            self._bar = tqdm(total=event.total_steps, initial=event.start_step, desc="textinv")
        elif isinstance(event, StepDone) and self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{event.loss:.4f}", lr=f"{event.lr:.2e}")
        elif isinstance(event, RunFinished) and self._bar is not None:
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        """Close the bar (a run that raised never sends RunFinished)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class TrackerLog:
    """Loss, LR and step time per step, and validation images, to Accelerate's trackers (TensorBoard, W&B...)."""

    def __init__(self, accelerator, validation_prompt: str | None):
        self.accelerator = accelerator
        self.validation_prompt = validation_prompt

    def __call__(self, event: Event) -> None:
        if isinstance(event, StepDone):
            self.accelerator.log({"loss": event.loss, "lr": event.lr, "step_time": event.seconds}, step=event.step)
        elif isinstance(event, ValidationDone):
            self._log_images(event)

    def _log_images(self, event: ValidationDone) -> None:
        import numpy as np
        from PIL import Image

        images = [Image.open(p).convert("RGB") for p in event.paths]
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                stacked = np.stack([np.asarray(im) for im in images])
                tracker.log_images({"validation": stacked}, event.step, dataformats="NHWC")
            elif tracker.name == "wandb":
                import wandb

                logged = [wandb.Image(im, caption=self.validation_prompt) for im in images]
                tracker.log({"validation": logged}, step=event.step)
