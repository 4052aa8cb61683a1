"""Weights & Biases: online only where an account is configured, so that no run ever waits on a network."""

import os
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger


def wandb_offline() -> bool:
    """WANDB_MODE decides when set; otherwise online only with an API key (environment or ~/.netrc)."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode in ("offline", "dryrun", "disabled")
    netrc = Path.home() / ".netrc"
    has_key = bool(os.environ.get("WANDB_API_KEY")) or (netrc.exists() and "api.wandb.ai" in netrc.read_text())
    return not has_key


class FallbackWandbLogger(WandbLogger):
    """A WandbLogger that goes on offline, with one warning, when W&B cannot be reached online (no network, a bad
    key, a server that does not answer) within `init_timeout` seconds, under the same run id and resume settings.
    Takes WandbLogger's arguments; ``offline=None`` (the default) decides as ``wandb_offline`` does, so a config file
    (``--config wandb``) gets the runner's choice.

    After a fallback, the later loggers of the process (the cells of an ablation study) go offline at once, without
    another wait or warning.
    """

    unreachable = False  # W&B could not be reached earlier in this process

    def __init__(self, *args: Any, init_timeout: float = 30.0, offline: bool | None = None, **kwargs: Any) -> None:
        offline = wandb_offline() if offline is None else offline
        if offline and kwargs.get("log_model"):  # WandbLogger refuses the pair: a run without an account goes on
            warnings.warn("W&B is offline: checkpoints are not logged as model artifacts (log_model needs an online "
                          "run)", stacklevel=2)
            kwargs["log_model"] = False
        super().__init__(*args, offline=offline, **kwargs)
        # WandbLogger passes `anonymous=None` unless it is set, and wandb warns that the setting has no effect
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)
        # The CLI passes every argument of wandb.init, settings=None among them: wandb's own init_timeout is 90 s.
        settings = self._wandb_init.get("settings") or {}
        # quiet: no per-run history and summary printout, which the study's table and each epoch's line hold
        if isinstance(settings, dict):
            settings = {"quiet": True, **settings, "init_timeout": init_timeout}
        else:  # a wandb.Settings
            settings.init_timeout = init_timeout
        self._wandb_init["settings"] = settings

    @property
    def experiment(self) -> Any:
        if self._experiment is None and not self._offline:
            if not FallbackWandbLogger.unreachable:
                try:
                    return super().experiment
                except Exception as err:  # wandb raises CommError, UsageError, AuthenticationError, ...
                    warnings.warn(
                        f"W&B could not be reached ({type(err).__name__}: {str(err).splitlines()[0]}); logging "
                        f"offline into {self.save_dir}. Upload later with `wandb sync`.",
                        stacklevel=2,
                    )
                    FallbackWandbLogger.unreachable = True
                    # The failed online run keeps its id in wandb's service process, where an offline run with the
                    # same id would be refused ("run ID ... is in use"): a fresh service for the offline run.
                    import wandb

                    wandb.teardown()
            self._offline = True
        if self._offline:  # WandbLogger sets WANDB_MODE, which wandb reads once, at its first use in the process
            self._wandb_init["mode"] = "offline"
        return super().experiment

