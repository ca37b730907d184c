"""The evaluation sets: moved to :mod:`facecaption.core.evalsets`, so that the audit stage reads exactly the sets
evaluation reads (stages never import each other). This module keeps the evaluation stage's name for them."""

from facecaption.core.evalsets import *  # noqa: F401,F403
from facecaption.core.evalsets import EvaluateInputError  # noqa: F401
