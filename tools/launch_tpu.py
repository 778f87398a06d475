"""Create a Cloud TPU VM, install this checkout on every worker and start training on all.

Prints the ``gcloud compute tpus tpu-vm`` commands (``--dry_run``, the default) or runs them
(``--run``); see :mod:`t5x_instruct.cli.tpu_launch` for the steps and the choices made.

Example:
  python tools/launch_tpu.py --tpu=my-pod --zone=us-west4-a --accelerator_type=v5litepod-16 \\
      --spot --model_dir=gs://my-bucket/runs/flan_base \\
      --gin_file=gin/models/t5_1_1/base.gin --gin_file=gin/runs/finetune.gin \\
      --gin.MIXTURE_OR_TASK_NAME=demo_instructions \\
      --gin.TASK_FEATURE_LENGTHS="{'inputs': 512, 'targets': 128}" --gin.TRAIN_STEPS=20000
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from t5x_instruct.cli.tpu_launch import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
