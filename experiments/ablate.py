"""The paper's ablation study as one command: `alexnet-ablate` of the installed package, whose code is
alexnet_lightning/study/runner.py; `python experiments/ablate.py --help` lists its options."""

import sys

from alexnet_lightning.study.runner import main

if __name__ == "__main__":
    sys.exit(main())
