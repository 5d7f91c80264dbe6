"""The EMA "no-think" teacher p_ema (paper Sec. 2.1, Algorithm 1 lines 8-9 and 15), for every training backend.

phi is lazily set to theta at the first batch, then after every optimizer step phi <- tau * phi + (1 - tau) * theta.
The teacher is kept in float32 by default: with tau = 0.999 one update moves a weight by 1e-3 of the gap, which is
below bf16's resolution (2**-8), so a bf16 teacher would silently never move.

`build_teacher` (build.py) picks one of three implementations of one interface, `Teacher` (protocol.py):

* `EMATeacher` (full.py): a full replica of the weights (single process, DDP, DeepSpeed ZeRO-0/1/2, where every
  rank holds the whole model anyway), on the model's device or, with `teacher_device="cpu"`, in CPU memory.
* `ZeRO3EMATeacher` (zero3.py): DeepSpeed ZeRO-3, partitioned like the policy, never materialised whole;
  `teacher_device="cpu"` offloads its shards to CPU memory.
* `AdapterEMATeacher` (adapter.py): PEFT (LoRA, QLoRA), a second adapter "rlp_ema" on the same `PeftModel`, with a
  float32 shadow of the adapter weights.

All three save and load through checkpoint.py: one format (`rlp_teacher.safetensors`: name -> full tensor;
`rlp_teacher.json`) under every backend, so a teacher saved under ZeRO-2 resumes under ZeRO-3 and vice versa.
scoring.py holds the callable `scoring()` yields; sharding.py the helpers that treat ZeRO-3 shards and plain
tensors alike.
"""

from .adapter import EMA_ADAPTER, AdapterEMATeacher
from .build import EMAUpdateCallback, build_teacher
from .checkpoint import TEACHER_STATE, TEACHER_WEIGHTS
from .full import EMATeacher, ema_update_
from .protocol import Teacher
from .zero3 import ZeRO3EMATeacher

__all__ = [
    "EMAUpdateCallback",
    "EMA_ADAPTER",
    "TEACHER_STATE",
    "TEACHER_WEIGHTS",
    "AdapterEMATeacher",
    "EMATeacher",
    "Teacher",
    "ZeRO3EMATeacher",
    "build_teacher",
    "ema_update_",
]
