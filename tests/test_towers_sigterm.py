"""Under the towers strategy, launched by Lightning (one process per tower), a second rank that stops on SIGTERM
does not get the first killed: rank 0 writes the checkpoint and ends by itself, with status 143."""

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from tests.conftest import REPO

SCRIPT = textwrap.dedent("""
    import faulthandler, os, signal, sys, time
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test's diagnosis of a hang
    import lightning as L, torch
    from torch.utils.data import DataLoader, TensorDataset
    from alexnet_lightning.model.module import AlexNetModule
    from alexnet_lightning.model.towers import TowerParallelStrategy
    from alexnet_lightning.training.stops import CheckpointOnSigterm

    class Preempted(L.Callback):  # the test sends SIGTERM to every process, as a scheduler does
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 1:  # both ranks wait here for the signal, to stop after the same batch
                open(f"{sys.argv[1]}/step1.rank{trainer.global_rank}", "w").close()
                time.sleep(6)

    class SlowStop(L.Callback):  # rank 0 closes its loggers, syncs W&B...: longer than Lightning's 5 s watch
        def on_exception(self, trainer, module, exception):
            if trainer.global_rank == 0:
                time.sleep(8)
                print("rank 0 stopped in order", file=sys.stderr, flush=True)

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(32, 3, 67, 67), torch.randint(10, (32,)))
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=TowerParallelStrategy(), max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=sys.argv[1], callbacks=[Preempted(), CheckpointOnSigterm(), SlowStop()])
    module = AlexNetModule(lr=0.01, momentum=0.9, weight_decay=5e-4, lr_factor=0.1, lr_reductions=3, num_classes=10,
                           width=0.25, input_size=67)
    trainer.fit(module, DataLoader(data, batch_size=4))
""")


@pytest.mark.slow
def test_rank_1_stopping_on_sigterm_leaves_rank_0_its_orderly_stop_and_checkpoint(tmp_path):
    script = tmp_path / "fit_towers.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    log = tmp_path / "log"
    with log.open("w") as out:
        run = subprocess.Popen([sys.executable, str(script), str(tmp_path)], cwd=tmp_path, env=env, stdout=out,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while len(list(tmp_path.glob("step1.rank*"))) < 2 and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        os.killpg(run.pid, signal.SIGTERM)  # both ranks
        try:
            code = run.wait(timeout=150)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGUSR1)  # every process prints its threads' stacks
            time.sleep(3)
            pytest.fail(f"no exit 150 s after SIGTERM:\n{log.read_text()[-12000:]}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
    text = log.read_text()
    assert code == 128 + signal.SIGTERM, (code, text[-3000:])  # not -9: Lightning's watcher killed rank 0
    assert "rank 0 stopped in order" in text
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["global_step"] >= 1
