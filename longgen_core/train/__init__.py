"""Long-context finetuning (stage 5): presets, the chunked loss, checkpoints, the accelerate loop.

- :mod:`.presets`: named scales (``cpu-tiny``, ``gpu-small``, ...); :mod:`.loss`: chunked
  cross-entropy; :mod:`.checkpoint`: atomic checkpoints; :mod:`.loop`: :func:`train`;
  :mod:`.options` and :mod:`.cli`: ``python -m longgen_core.train``.
"""

from .loop import TrainResult, build_model, read_log, train
from .presets import PRESETS, Preset, get_preset

__all__ = ["TrainResult", "build_model", "read_log", "train", "PRESETS", "Preset", "get_preset"]
