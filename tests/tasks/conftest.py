"""Tasks tests run beside other jobs on 2 cores: one torch thread per process avoids oversubscription."""

import os

os.environ.setdefault("SAM_ENGINE_TORCH_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
