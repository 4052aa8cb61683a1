"""The paper's ablation study as one command: `alexnet-ablate` of the installed package, whose code is
alexnet_lightning/ablate.py; `python experiments/ablate.py --help` lists its options."""

import sys

from alexnet_lightning.ablate import main

if __name__ == "__main__":
    sys.exit(main())
