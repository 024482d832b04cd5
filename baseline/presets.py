"""Named sets of hyperparameter overrides for ``baseline/train.py``.

``reference`` is the script as written (the ~300 s GPU run the paper's numbers refer to).
``surrogate`` is not an override of train.py but its own script, ``surrogate.py``: the same
constants, a documented response surface instead of training (the config picks the script).
``cpu-tiny`` shrinks everything so that a whole run -- training, evaluation and the
summary block -- finishes in seconds on a two-core CPU: for tests, demos and offline mode.
The engine applies a preset by editing the constants of a copy of train.py.
"""

from __future__ import annotations

PRESETS: dict[str, dict[str, object]] = {
    "reference": {},
    "cpu-tiny": {
        "DEPTH": 2,
        "ASPECT_RATIO": 32,  # model_dim 64
        "HEAD_DIM": 32,  # 2 heads
        "MAX_SEQ_LEN": 128,
        "TOTAL_BATCH_SIZE": 2**12,  # 4 micro-steps of 8 x 128 tokens
        "DEVICE_BATCH_SIZE": 8,
        "EVAL_TOKENS": 2**14,
        "TIME_BUDGET": 5,
        "DEVICE": "cpu",
        "COMPILE": False,
    },
    "surrogate": {},
}
