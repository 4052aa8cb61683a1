"""A study's ablation table from its folder or its W&B runs: `alexnet-compare` of the installed package, whose code
is alexnet_lightning/study/compare.py; `python experiments/compare.py --help` lists its options."""

import sys

from alexnet_lightning.study.compare import main

if __name__ == "__main__":
    sys.exit(main())
