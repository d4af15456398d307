"""The stable codes mixed into the corpus's per-study random streams (one module both the plan and the quality
mechanisms read, so neither imports the other back)."""
from __future__ import annotations

#: Modality codes mixed into per-study seeds (stable: changing them changes every corpus).
MODALITY_CODE = {"plan": 0, "cxr": 1, "ecg": 2, "echo": 3, "text": 4, "patient": 5, "ct": 6}
