"""The EMA "no-think" teacher p_ema (paper Sec. 2.1, Algorithm 1 lines 8-9 and 15): see `full.py`."""

from .full import (
    EMA_ADAPTER,
    TEACHER_STATE,
    TEACHER_WEIGHTS,
    AdapterEMATeacher,
    EMATeacher,
    ZeRO3EMATeacher,
    build_teacher,
    ema_update_,
)

__all__ = [
    "EMA_ADAPTER",
    "TEACHER_STATE",
    "TEACHER_WEIGHTS",
    "AdapterEMATeacher",
    "EMATeacher",
    "ZeRO3EMATeacher",
    "build_teacher",
    "ema_update_",
]
