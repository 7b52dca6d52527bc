"""neighbor-lt: long-tail image classification that learns from neighbor categories."""

import os

__version__ = "0.1.0"

#: Local path of the `evaluate` metric module (Overall / Many / Medium / Few): ``evaluate.load(LONG_TAIL_ACCURACY)``.
LONG_TAIL_ACCURACY = os.path.join(os.path.dirname(__file__), "evaluate_modules", "long_tail_accuracy")
