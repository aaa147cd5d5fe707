"""The package logger (``logging.getLogger("stpredict")``), scanpy-style messages."""

from __future__ import annotations

import logging

logger = logging.getLogger("stpredict")
if not logger.handlers:
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(levelname)s [stpredict] %(message)s"))
    logger.addHandler(_handler)
logger.propagate = False
